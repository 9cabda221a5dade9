"""Everything Tunix-specific lives here: the hyperparameter table, model references, chat
templates, the launcher config and command, the interpreter probe, and the launcher's
progress protocol. Nothing else in the app knows how Tunix is driven.

The web process never imports Tunix or JAX: availability is probed in a subprocess of the
interpreter that will train (settings.TUNIX_PYTHON), and the answer is cached.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

# --- hyperparameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    kind: type
    default: Any
    minimum: float
    maximum: float
    help: str
    optional: bool = False


# The one table of hyperparameters: the API schema, the form and the service all read it.
HYPERPARAMETERS: dict[str, Bound] = {
    "learning_rate": Bound(float, 3e-4, 1e-8, 1.0, "Peak learning rate of AdamW."),
    "num_epochs": Bound(int, 1, 1, 100, "Passes over the training split."),
    "batch_size": Bound(int, 4, 1, 1024, "Rows per training step."),
    "max_seq_length": Bound(int, 512, 16, 32768, "Tokens per row; longer rows are truncated."),
    "max_steps": Bound(int, None, 1, 1_000_000, "Stop after this many steps.", optional=True),
    "lora_rank": Bound(int, 8, 0, 1024, "LoRA rank; 0 trains all weights."),
    "lora_alpha": Bound(float, 16.0, 0.01, 4096.0, "LoRA scaling numerator."),
    "seed": Bound(int, 42, 0, 2**31 - 1, "Seed for the data split, shuffling and init."),
    "eval_every_n_steps": Bound(int, 50, 1, 1_000_000, "Evaluate on the held-out split."),
}


def hyperparameter_defaults() -> dict[str, Any]:
    return {name: bound.default for name, bound in HYPERPARAMETERS.items()}


def validate_hyperparameters(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (clean values, field errors). Missing values take their defaults."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, bound in HYPERPARAMETERS.items():
        value = values.get(name)
        if value is None or value == "":
            if bound.default is None and not bound.optional:
                errors[name] = "This field is required."
            clean[name] = bound.default
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            number = bound.kind(value)
            if bound.kind is int and float(value) != number:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            errors[name] = f"Must be {'an integer' if bound.kind is int else 'a number'}."
            continue
        if isinstance(number, float) and not math.isfinite(number):
            errors[name] = "Must be a finite number."
            continue
        if not bound.minimum <= number <= bound.maximum:
            errors[name] = f"Must be between {bound.minimum:g} and {bound.maximum:g}."
            continue
        clean[name] = number
    return clean, errors


# --- model references -------------------------------------------------------------------

SUPPORTED_FAMILIES = ("llama3", "gemma2", "gemma3", "qwen2", "qwen3")
FAMILY_LABELS = {
    "llama3": "Llama 3 / 3.1 / 3.2",
    "gemma2": "Gemma 2",
    "gemma3": "Gemma 3",
    "qwen2": "Qwen 2.5",
    "qwen3": "Qwen 3",
}
# Hugging Face `model_type` in config.json -> our family name.
_MODEL_TYPE_FAMILY = {
    "llama": "llama3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
# Hub ids: the family is read from the model's name.
_NAME_FAMILY = [
    (re.compile(r"llama[-_ ]?3", re.I), "llama3"),
    (re.compile(r"gemma[-_ ]?3", re.I), "gemma3"),
    (re.compile(r"gemma[-_ ]?2", re.I), "gemma2"),
    (re.compile(r"qwen[-_ ]?3", re.I), "qwen3"),
    (re.compile(r"qwen[-_ ]?2", re.I), "qwen2"),
]
# Default LoRA targets per family (module names of Tunix's model implementations).
LORA_MODULE_PATHS = {
    "llama3": ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*down_proj|.*up_proj",
    "gemma2": ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*down_proj|.*up_proj",
    "gemma3": ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*down_proj|.*up_proj",
    "qwen2": ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*down_proj|.*up_proj",
    "qwen3": ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*down_proj|.*up_proj",
}

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
        family = _MODEL_TYPE_FAMILY.get(str(model_type))
        if family is None:
            raise ModelRefError(
                f"Model type '{model_type}' is not supported; supported families: "
                + ", ".join(FAMILY_LABELS[f] for f in SUPPORTED_FAMILIES)
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
        + ", ".join(FAMILY_LABELS[f] for f in SUPPORTED_FAMILIES)
        + "."
    )


def local_models() -> list[str]:
    """References of the local models present, for the run form."""
    root = Path(settings.MODELS_DIR)
    if not root.is_dir():
        return []
    return sorted(f"local:{p.name}" for p in root.iterdir() if (p / "config.json").is_file())


# --- chat templates ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """Turn markers of a family. The prompt part is masked from the loss."""

    begin: str
    user: str
    assistant: str
    system: str
    end_turn: str

    def render(self, turns: list[tuple[str, str]], completion: str) -> tuple[str, str]:
        prompt = self.begin + "".join(
            {"system": self.system, "user": self.user, "assistant": self.assistant}[role]
            + text
            + self.end_turn
            for role, text in turns
        )
        return prompt + self.assistant, completion + self.end_turn


_LLAMA3 = ChatTemplate(
    begin="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n",
    user="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_turn="<|eot_id|>",
)
_GEMMA = ChatTemplate(
    begin="<bos>",
    # Gemma has no system role: a system message is sent as a user turn.
    system="<start_of_turn>user\n",
    user="<start_of_turn>user\n",
    assistant="<start_of_turn>model\n",
    end_turn="<end_of_turn>\n",
)
_QWEN = ChatTemplate(
    begin="",
    system="<|im_start|>system\n",
    user="<|im_start|>user\n",
    assistant="<|im_start|>assistant\n",
    end_turn="<|im_end|>\n",
)
CHAT_TEMPLATES = {
    "llama3": _LLAMA3,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
    "qwen2": _QWEN,
    "qwen3": _QWEN,
}


# --- config and command -----------------------------------------------------------------

CONFIG_FILENAME = "tunix_config.json"
TRAIN_DATA_FILENAME = "train.jsonl"
DEFAULT_LAUNCHER_MODULE = "runs.launcher"
EVAL_FRACTION = 0.1


def build_config(
    *,
    run_id: str,
    model: ModelRef,
    dataset_key: str,
    dataset_sha256: str,
    output_path: Path,
    hyperparameters: dict[str, Any],
    resume_checkpoint_dir: str | None = None,
) -> dict[str, Any]:
    """The complete config file the launcher reads. Every value is resolved here."""
    hp = hyperparameters
    eval_every = hp["eval_every_n_steps"]
    return {
        "schema": 1,
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
            "eval_fraction": EVAL_FRACTION,
        },
        "training": {
            "learning_rate": hp["learning_rate"],
            "num_epochs": hp["num_epochs"],
            "batch_size": hp["batch_size"],
            "max_seq_length": hp["max_seq_length"],
            "max_steps": hp["max_steps"],
            "eval_every_n_steps": eval_every,
            "seed": hp["seed"],
            "weight_decay": 0.0,
            "gradient_accumulation_steps": 1,
            "checkpoint_every_n_steps": eval_every,
        },
        "lora": {
            "enabled": hp["lora_rank"] > 0,
            "rank": hp["lora_rank"],
            "alpha": hp["lora_alpha"],
            "module_path": LORA_MODULE_PATHS[model.family],
        },
        "output": {
            "dir": str(output_path),
            "checkpoint_dir": str(output_path / "checkpoints"),
            "tensorboard_dir": str(output_path / "tensorboard"),
        },
        "resume": {"checkpoint_dir": resume_checkpoint_dir},
    }


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
    if module != DEFAULT_LAUNCHER_MODULE:
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


# --- the launcher's progress protocol ---------------------------------------------------

PHASES = ("queued", "starting", "loading", "compiling", "training", "evaluating", "saving", "done")


def parse_event(line: str) -> dict[str, Any] | None:
    """A launcher event is one JSON object with an "event" key on one stdout line."""
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event
