"""The web side of training: model references, the launcher config and command, and the probe
of the training interpreter. The contract with the launcher itself is `runs.protocol`; the
hyperparameters are `runs.hyperparameters`.

The web process never imports Tunix or JAX: availability is probed in a subprocess of the
interpreter that will train (settings.TUNIX_PYTHON), and the answer is cached.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from . import protocol
from .launcher import rewards

# --- model references -------------------------------------------------------------------

# Hub ids: the family is read from the model's name.
_NAME_FAMILY = [
    (re.compile(r"llama[-_ ]?3", re.I), "llama3"),
    (re.compile(r"gemma[-_ ]?3", re.I), "gemma3"),
    (re.compile(r"gemma[-_ ]?2", re.I), "gemma2"),
    (re.compile(r"qwen[-_ ]?3", re.I), "qwen3"),
    (re.compile(r"qwen[-_ ]?2", re.I), "qwen2"),
]
# A name segment starts with a letter or digit, so no reference can be read as an option.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_LOCAL_RE = re.compile(rf"^local:({_SEGMENT})$")
_HF_RE = re.compile(rf"^(?:hf:)?({_SEGMENT}/{_SEGMENT})$")
_KAGGLE_RE = re.compile(rf"^kaggle:({_SEGMENT}(?:/{_SEGMENT}){{1,3}})$")


@dataclass(frozen=True)
class ModelRef:
    model_id: str
    source: str  # local | huggingface | kaggle
    family: str
    path: str  # absolute directory for local models, the hub id otherwise


class ModelRefError(ValueError):
    pass


def parse_model_ref(model_id: str) -> ModelRef:
    """Validate a model reference against the allowlist and find its family.

    Accepted: `local:NAME` (a directory under TUNIXRT_MODELS_DIR with config.json and
    safetensors), `ORG/NAME` or `hf:ORG/NAME` (Hugging Face), `kaggle:OWNER/MODEL/...`.
    """
    if not isinstance(model_id, str) or not model_id or len(model_id) > 200:
        raise ModelRefError("Give a model reference such as local:NAME or ORG/NAME.")
    if ".." in model_id:
        raise ModelRefError("A model reference may not contain '..'.")
    if match := _LOCAL_RE.match(model_id):
        root = Path(settings.MODELS_DIR).resolve()
        path = (root / match.group(1)).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ModelRefError("Local model names must stay inside the models folder.")
        config = path / "config.json"
        if not config.is_file():
            raise ModelRefError(
                f"No local model '{match.group(1)}': expected {config.name} in the models folder."
            )
        try:
            model_type = json.loads(config.read_text()).get("model_type", "")
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelRefError(f"The local model's config.json cannot be read: {exc}") from exc
        family = protocol.MODEL_TYPE_FAMILY.get(str(model_type))
        if family is None:
            raise ModelRefError(
                f"Model type '{model_type}' is not supported; supported families: "
                + ", ".join(protocol.FAMILY_LABELS[f] for f in protocol.FAMILIES)
                + "."
            )
        return ModelRef(model_id, "local", family, str(path))
    if match := _HF_RE.match(model_id):
        return ModelRef(model_id, "huggingface", _family_from_name(model_id), match.group(1))
    if match := _KAGGLE_RE.match(model_id):
        return ModelRef(model_id, "kaggle", _family_from_name(model_id), match.group(1))
    raise ModelRefError(
        "Unrecognised model reference: use local:NAME, ORG/NAME (Hugging Face) or "
        "kaggle:OWNER/MODEL/FRAMEWORK/VARIATION, with letters, digits, '.', '_' and '-'."
    )


def _family_from_name(model_id: str) -> str:
    for pattern, family in _NAME_FAMILY:
        if pattern.search(model_id):
            return family
    raise ModelRefError(
        "Cannot tell the model family from this name; supported families: "
        + ", ".join(protocol.FAMILY_LABELS[f] for f in protocol.FAMILIES)
        + "."
    )


def checkpoint_check(model: ModelRef) -> tuple[dict, list[str]]:
    """(config.json fields read, reasons the launcher would refuse) of a local checkpoint."""
    try:
        hf = json.loads((Path(model.path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}, []
    if not isinstance(hf, dict):
        return {}, []
    if isinstance(hf.get("text_config"), dict):
        hf = {**hf, **hf["text_config"]}
    return protocol.model_config_check(model.family, hf)


def template_name(model: ModelRef) -> str:
    """Which chat template a run renders with (a hub model's is known only at launch)."""
    if model.source == "local" and protocol.read_chat_template(model.path)[0]:
        return "the checkpoint's own chat_template"
    builtin = protocol.BUILTIN_TEMPLATE_NAMES[model.family]
    if model.source != "local":
        return f"the checkpoint's own chat_template if it has one, else the {builtin}"
    return f"the {builtin}"


def local_models() -> list[str]:
    """References of the local models present, for the run form."""
    root = Path(settings.MODELS_DIR)
    if not root.is_dir():
        return []
    return sorted(f"local:{p.name}" for p in root.iterdir() if (p / "config.json").is_file())


# --- config and command -----------------------------------------------------------------

CONFIG_FILENAME = protocol.CONFIG_FILENAME
TRAIN_DATA_FILENAME = protocol.TRAIN_DATA_FILENAME


# long: one literal, the whole config file the launcher reads
def build_config(
    *,
    run_id: str,
    model: ModelRef,
    dataset_key: str,
    dataset_sha256: str,
    output_path: Path,
    hyperparameters: dict[str, Any],
    resume_checkpoint_dir: str | None = None,
    base_run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The complete config file the launcher reads. Every value is resolved here.
    `base_run` ({output_dir, checkpoint_dir, lora}): start from that run's result."""
    hp = hyperparameters
    return {
        "schema": protocol.SCHEMA_VERSION,
        "run_id": run_id,
        "model": {
            "family": model.family,
            "source": model.source,
            "path": model.path,
            "model_id": model.model_id,
        },
        "dataset": {
            "path": str(output_path / TRAIN_DATA_FILENAME),
            "key": dataset_key,
            "sha256": dataset_sha256,
            "eval_fraction": protocol.EVAL_FRACTION,
            # From the dataset, not the run: runs on a dataset share their held-out rows.
            "split_seed": protocol.split_seed(dataset_sha256),
        },
        "training": _training_section(hp),
        "lora": {
            "enabled": hp["lora_rank"] > 0,
            "rank": hp["lora_rank"],
            "alpha": hp["lora_alpha"],
            "module_path": protocol.LORA_MODULE_PATHS[model.family],
        },
        "output": {
            "dir": str(output_path),
            "checkpoint_dir": str(output_path / protocol.CHECKPOINTS_DIRNAME),
            "tensorboard_dir": str(output_path / protocol.TENSORBOARD_DIRNAME),
        },
        "resume": {"checkpoint_dir": resume_checkpoint_dir},
        "method": method_section(hp),
        "base_run": base_run or {},
    }


def _training_section(hp: dict[str, Any]) -> dict[str, Any]:
    return {
        "learning_rate": hp["learning_rate"],
        "num_epochs": hp["num_epochs"],
        "batch_size": hp["batch_size"],
        "max_seq_length": hp["max_seq_length"],
        "max_steps": hp["max_steps"],
        "eval_every_n_steps": hp["eval_every_n_steps"],
        "seed": hp["seed"],
        "weight_decay": 0.0,
        "gradient_accumulation_steps": 1,
        "checkpoint_every_n_steps": hp["checkpoint_every_n_steps"],
        "max_checkpoints_to_keep": hp["checkpoints_to_keep"],
        "lr_schedule": hp["lr_schedule"],
        "warmup_steps": hp["warmup_steps"],
        "max_grad_norm": hp["max_grad_norm"],
        "compute_dtype": hp["compute_dtype"],
        "long_completions": hp["long_completions"],
        "mesh": {"fsdp": hp.get("mesh_fsdp", 0), "tp": hp.get("mesh_tp", 1)},
    }


def reward_section(hp: dict[str, Any]) -> dict[str, Any]:
    """The rewards of a GRPO run: the built-in ones with a weight other than 0, then the
    installed ones named in extra_rewards (see runs.launcher.rewards)."""
    weights = [
        {"name": name, "weight": hp[f"reward_{name}"]}
        for name in rewards.BUILTIN_REWARDS
        if hp.get(f"reward_{name}")
    ]
    weights += [
        {"name": name, "weight": weight}
        for name, weight in rewards.parse_reward_list(hp.get("extra_rewards") or "")
    ]
    return {
        "extraction": hp["answer_extraction"],
        "marker": hp["answer_marker"],
        "tag": hp["answer_tag"],
        "match_mode": hp["answer_match_mode"],
        "tolerance": hp["answer_tolerance"],
        "length_target": hp["length_target"],
        "rewards": weights,
    }


def method_section(hp: dict[str, Any]) -> dict[str, Any]:
    """The method and only the settings it uses."""
    method = hp.get("method", "sft")
    if method in ("dpo", "orpo"):
        return {"name": method, "beta": hp["dpo_beta"], "lambda_orpo": hp["orpo_lambda"]}
    if method == "grpo":
        return {
            "name": method,
            "variant": hp["grpo_variant"],
            "loss_algo": hp["grpo_loss"],
            "num_generations": hp["num_generations"],
            "num_iterations": hp["num_iterations"],
            "beta": hp["kl_beta"],
            "epsilon": hp["clip_epsilon"],
            "max_new_tokens": hp["max_new_tokens"],
            "temperature": hp["temperature"],
            "top_p": hp["top_p"],
            "rewards": reward_section(hp),
        }
    return {"name": method}


def build_command(output_path: Path) -> list[str]:
    """The exact argv. No shell ever sees it; every element is ours or a checked path."""
    module = settings.TUNIX_LAUNCHER_MODULE
    return [settings.TUNIX_PYTHON, "-m", module, str(output_path / CONFIG_FILENAME)]


def is_launcher_command(command: list[str]) -> bool:
    return len(command) == 4 and command[1] == "-m" and command[3].endswith(CONFIG_FILENAME)


def launcher_environment() -> dict[str, str]:
    """Extra environment for the launcher (on top of the supervisor's minimal one)."""
    return {
        "PYTHONPATH": str(settings.BASE_DIR),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "1",
        **compile_cache_environment(),
    }


def compile_cache_environment() -> dict[str, str]:
    """JAX's persistent compilation cache for the children of this host (settings say why).
    Every compiled program is kept, however quick: a tiny model's are, and they add up."""
    if not settings.COMPILE_CACHE_DIR:
        return {}
    return {
        "JAX_COMPILATION_CACHE_DIR": settings.COMPILE_CACHE_DIR,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


# --- availability probe -----------------------------------------------------------------

# Runs in the training interpreter. importlib.metadata answers in ~0.1 s; importing tunix
# would import JAX (seconds, hundreds of MB), so it is never done here.
_PROBE_CODE = """
import importlib.metadata as m, importlib.util as u, json, sys
def v(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
try:
    launcher = u.find_spec(sys.argv[1]) is not None
except ImportError:
    launcher = False
print(json.dumps({
    "python": sys.executable,
    "python_version": sys.version.split()[0],
    "launcher": launcher,
    "tunix": v("google-tunix") if u.find_spec("tunix") else None,
    "jax": v("jax"), "jaxlib": v("jaxlib"), "flax": v("flax"),
}))
"""


@dataclass(frozen=True)
class TunixStatus:
    available: bool
    python: str
    message: str
    version: str | None = None
    jax_version: str | None = None
    versions: dict[str, str | None] | None = None


_probe_cache: dict[str, tuple[float, TunixStatus]] = {}
_probe_lock = threading.Lock()


def probe(*, refresh: bool = False) -> TunixStatus:
    """Can the training interpreter run the launcher with Tunix? Cached for a while."""
    key = (settings.TUNIX_PYTHON, settings.TUNIX_LAUNCHER_MODULE)
    now = time.monotonic()
    with _probe_lock:
        cached = _probe_cache.get(key)
        if cached and not refresh and now - cached[0] < settings.TUNIX_PROBE_TTL:
            return cached[1]
    status = _probe_uncached(*key)
    with _probe_lock:
        _probe_cache[key] = (now, status)
    return status


def _probe_uncached(python: str, module: str) -> TunixStatus:
    try:
        done = subprocess.run(
            [python, "-c", _PROBE_CODE, module],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=settings.BASE_DIR,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(settings.BASE_DIR)},
        )
    except FileNotFoundError:
        return TunixStatus(False, python, f"Training interpreter {python} does not exist.")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return TunixStatus(False, python, f"Training interpreter {python} failed: {exc}")
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return TunixStatus(
            False, python, f"Training interpreter {python} gave no answer: {done.stderr[-300:]}"
        )
    versions = {k: info.get(k) for k in ("tunix", "jax", "jaxlib", "flax", "python_version")}
    if not info.get("launcher"):
        return TunixStatus(
            False, python, f"The launcher module {module} cannot be found by {python}."
        )
    if module != protocol.LAUNCHER_MODULE:
        # A site's own launcher: it brings its own training stack.
        return TunixStatus(
            True,
            python,
            f"Launcher {module} is available (Tunix {info.get('tunix') or 'not installed'}).",
            version=info.get("tunix"),
            jax_version=info.get("jax"),
            versions=versions,
        )
    if not info.get("tunix"):
        return TunixStatus(
            False,
            python,
            f"Tunix is not installed for {python}. Install the extra with "
            "`pip install -e '.[tunix]'` (or `make run`) to launch local runs; "
            "dry-runs work without it.",
            versions=versions,
        )
    if not info.get("jax"):
        return TunixStatus(False, python, f"JAX is not installed for {python}.", versions=versions)
    return TunixStatus(
        True,
        python,
        f"Tunix {info['tunix']} with JAX {info['jax']} is available.",
        version=info["tunix"],
        jax_version=info["jax"],
        versions=versions,
    )
