"""Run one Tunix supervised fine-tuning job described by a JSON config file.

Usage: python -m runs.launcher CONFIG.json   (cwd: the run's output directory)

This is the only code of the project that runs inside the training interpreter,
which may be another virtual environment on a GPU host. It therefore imports no
Django and nothing else of the app, and only the standard library at module
level: JAX and Tunix are imported inside functions, after the cheap checks, so a
bad config fails in well under a second.

It talks to its supervisor through three channels only:
- stdout: one flushed JSON object per line, always with an "event" key
  (phase, environment, progress, metric, checkpoint, resumed, summary, error);
- stderr: everything else (Tunix's absl logging, tracebacks, stray prints);
- the exit code: 0 ok, 2 bad config or input, 3 non-finite loss,
  4 out of memory, 1 anything else. A failure always ends stdout with one
  {"event": "error", "message": ...} line.
"""

import json
import math
import os
import random
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_OUT_OF_MEMORY = 4

# Families whose Hugging Face safetensors Tunix 0.1.7 can load into its own
# model classes. Plain "gemma" (Gemma 1) is absent on purpose: Tunix's Gemma
# safetensors loader maps the Gemma 2 layer-norm layout, so Gemma 1 checkpoints
# do not load.
SUPPORTED_FAMILIES = ("llama3", "qwen2", "qwen3", "gemma2", "gemma3")

# Regexes (qwix full-matches them) over Tunix's module paths, not Hugging Face's:
# Llama and Qwen keep q_proj/k_proj/v_proj/o_proj; Gemma has q_einsum, kv_einsum
# (".*kv_einsum" also covers the fused qkv_einsum) and attn_vec_einsum for o_proj.
_PROJ_LORA = ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*down_proj|.*up_proj"
_GEMMA_LORA = ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*down_proj|.*up_proj"
DEFAULT_LORA_MODULE_PATH = {
    "llama3": _PROJ_LORA,
    "qwen2": _PROJ_LORA,
    "qwen3": _PROJ_LORA,
    "gemma2": _GEMMA_LORA,
    "gemma3": _GEMMA_LORA,
}

# config.json "model_type" values accepted for each family.
_MODEL_TYPES = {
    "llama3": {"llama"},
    "qwen2": {"qwen2"},
    "qwen3": {"qwen3", "qwen3_moe"},
    "gemma2": {"gemma2"},
    "gemma3": {"gemma3", "gemma3_text"},
}

_MODEL_FILES_HINT = "config.json, *.safetensors and tokenizer.json"


class LaunchError(Exception):
    """A failure with a one-line message for the user and a specific exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


class NonFiniteLoss(Exception):
    pass


class Events:
    """Writes the JSON-lines protocol to the real stdout."""

    def __init__(self, stream):
        self._stream = stream
        self.phase = None

    def emit(self, event: str, **fields) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()

    def enter(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.emit("phase", phase=phase)


def _take_over_stdout():
    """Keep the real stdout for events and send fd 1 to stderr.

    Libraries print to stdout now and then (Tunix's Gemma loader does); the
    supervisor must only ever see JSON lines there.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    if not isinstance(value, dict):
        raise LaunchError(f"config has no '{name}' section")
    return value


def _number(section: dict, key: str, where: str, kind=float, default=None, minimum=None):
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LaunchError(f"{where}.{key} must be a number, not {value!r}")
    if kind is int and value != int(value):
        raise LaunchError(f"{where}.{key} must be a whole number, not {value!r}")
    value = kind(value)
    if minimum is not None and value < minimum:
        raise LaunchError(f"{where}.{key} must be at least {minimum}, not {value!r}")
    return value


def load_config(path: str) -> dict:
    """Read and check the config file, returning it with defaults filled in."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise LaunchError(f"config file {path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise LaunchError("config file must hold a JSON object")
    if config.get("schema") != SCHEMA_VERSION:
        raise LaunchError(
            f"config schema {config.get('schema')!r} is not supported (expected {SCHEMA_VERSION})"
        )

    model = _section(config, "model")
    family = model.get("family")
    if family not in SUPPORTED_FAMILIES:
        raise LaunchError(
            f"unsupported model family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    if model.get("source", "local") not in ("local", "huggingface", "kaggle"):
        raise LaunchError(f"unknown model source {model.get('source')!r}")

    dataset = _section(config, "dataset")
    if not isinstance(dataset.get("path"), str):
        raise LaunchError("dataset.path is missing")
    fraction = _number(dataset, "eval_fraction", "dataset", default=0.0, minimum=0.0)
    if fraction >= 1.0:
        raise LaunchError("dataset.eval_fraction must be below 1")
    dataset["eval_fraction"] = fraction

    t = _section(config, "training")
    training = {
        "learning_rate": _number(t, "learning_rate", "training", minimum=0.0, default=1e-4),
        "num_epochs": _number(t, "num_epochs", "training", int, default=1, minimum=1),
        "batch_size": _number(t, "batch_size", "training", int, default=4, minimum=1),
        "max_seq_length": _number(t, "max_seq_length", "training", int, default=512, minimum=2),
        "max_steps": _number(t, "max_steps", "training", int, minimum=1),
        "eval_every_n_steps": _number(t, "eval_every_n_steps", "training", int, minimum=1),
        "seed": _number(t, "seed", "training", int, default=0),
        "weight_decay": _number(t, "weight_decay", "training", default=0.0, minimum=0.0),
        "gradient_accumulation_steps": _number(
            t, "gradient_accumulation_steps", "training", int, default=1, minimum=1
        ),
        "checkpoint_every_n_steps": _number(
            t, "checkpoint_every_n_steps", "training", int, minimum=1
        ),
        "max_checkpoints_to_keep": _number(
            t, "max_checkpoints_to_keep", "training", int, minimum=1
        ),
    }
    config["training"] = training

    lora = config.get("lora") or {"enabled": False}
    if lora.get("enabled"):
        lora["rank"] = _number(lora, "rank", "lora", int, default=8, minimum=1)
        lora["alpha"] = _number(lora, "alpha", "lora", default=16.0)
        lora["module_path"] = lora.get("module_path") or DEFAULT_LORA_MODULE_PATH[family]
    config["lora"] = lora

    output = _section(config, "output")
    out_dir = output.get("dir") or os.getcwd()
    output["dir"] = out_dir
    output.setdefault("checkpoint_dir", os.path.join(out_dir, "checkpoints"))
    output.setdefault("tensorboard_dir", os.path.join(out_dir, "tensorboard"))
    config["resume"] = config.get("resume") or {}
    return config


# --------------------------------------------------------------------------
# Model directory
# --------------------------------------------------------------------------


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise LaunchError(f"model path {path} does not exist")
    if not path.is_dir():
        raise LaunchError(f"model path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise LaunchError(f"model path {path} has no config.json (expected {_MODEL_FILES_HINT})")
    if not any(path.glob("*.safetensors")):
        raise LaunchError(f"model path {path} has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise LaunchError(f"tokenizer not found: {path / 'tokenizer.json'} does not exist")


def _strip_source_prefix(model_id: str) -> str:
    for prefix in ("hf:", "huggingface:", "kaggle:"):
        if model_id.startswith(prefix):
            return model_id[len(prefix) :]
    return model_id


def _download_model(source: str, model_id: str, target: str | None) -> Path:
    """Fetch a hub model; the caller checks the files afterwards."""
    name = _strip_source_prefix(model_id or "")
    if not name:
        raise LaunchError(f"model.model_id is required for source {source!r}")
    try:
        if source == "huggingface":
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
            return Path(snapshot_download(repo_id=name, local_dir=target, allow_patterns=patterns))
        import kagglehub

        return Path(
            kagglehub.model_download(name, output_dir=target)
            if target
            else kagglehub.model_download(name)
        )
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        hub = "Hugging Face" if source == "huggingface" else "Kaggle"
        offline = (
            " (the hub is unreachable or HF_HUB_OFFLINE is set)" if _looks_offline(exc) else ""
        )
        raise LaunchError(
            f"could not download {name} from {hub}{offline}: {_one_line(exc)}"
        ) from exc


def _looks_offline(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        s in text for s in ("offline", "connection", "resolve", "localentrynotfound", "timed out")
    )


def resolve_model_dir(model: dict) -> Path:
    source = model.get("source", "local")
    path = model.get("path")
    if source == "local":
        if not path:
            raise LaunchError("model.path is required for a local model")
        model_dir = Path(path)
    else:
        # A hub model already downloaded to model.path is used as is, so a
        # rerun does not need the network.
        if path and _has_model_files(Path(path)):
            model_dir = Path(path)
        else:
            model_dir = _download_model(source, model.get("model_id", ""), path)
    _check_model_dir(model_dir)
    return model_dir


def _has_model_files(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def read_hf_config(model_dir: Path, family: str) -> dict:
    try:
        hf = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LaunchError(f"{model_dir / 'config.json'} is not valid JSON: {exc}") from None
    # Multimodal checkpoints (Gemma 3 4B+) keep the language model under text_config.
    if isinstance(hf.get("text_config"), dict):
        hf = {**hf, **hf["text_config"]}
    model_type = hf.get("model_type")
    if model_type not in _MODEL_TYPES[family]:
        raise LaunchError(
            f"model at {model_dir} is a {model_type!r} model (config.json model_type), "
            f"not a {family} model"
        )
    missing = [
        k
        for k in (
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "vocab_size",
        )
        if k not in hf
    ]
    if missing:
        raise LaunchError(f"{model_dir / 'config.json'} lacks {', '.join(missing)}")
    return hf


def _rope_theta(hf: dict, default: float) -> float:
    # transformers 5 moved rope_theta into rope_parameters.
    params = hf.get("rope_parameters") or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    return float(hf.get("rope_theta") or params.get("rope_theta") or default)


def _common_dims(hf: dict) -> dict:
    heads = hf["num_attention_heads"]
    return {
        "num_layers": hf["num_hidden_layers"],
        "embed_dim": hf["hidden_size"],
        "hidden_dim": hf["intermediate_size"],
        "num_heads": heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
    }


def build_model_config(family: str, hf: dict):
    """Return (Tunix ModelConfig, params module with create_model_from_safe_tensors)."""
    import importlib

    if family == "llama3":
        from tunix.models.llama3 import model as model_lib
        from tunix.models.llama3 import params as params_lib

        config = model_lib.ModelConfig(
            **_common_dims(hf),
            vocab_size=hf["vocab_size"],
            rope_theta=int(_rope_theta(hf, 500_000)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            weight_tying=bool(hf.get("tie_word_embeddings", False)),
        )
        return config, params_lib

    if family in ("qwen2", "qwen3"):
        model_lib = importlib.import_module(f"tunix.models.{family}.model")
        params_lib = importlib.import_module(f"tunix.models.{family}.params")
        extra = {}
        if family == "qwen3" and hf.get("num_experts"):
            extra = {
                "num_experts": hf["num_experts"],
                "num_experts_per_tok": hf.get("num_experts_per_tok"),
            }
            # MoE layers use moe_intermediate_size for each expert.
            if hf.get("moe_intermediate_size"):
                hf = {**hf, "intermediate_size": hf["moe_intermediate_size"]}
        config = model_lib.ModelConfig(
            **_common_dims(hf),
            vocab_size=hf["vocab_size"],
            rope_theta=int(_rope_theta(hf, 1_000_000)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
            **extra,
        )
        return config, params_lib

    if family == "gemma2":
        from tunix.models.gemma import model as model_lib
        from tunix.models.gemma import params_safetensors as params_lib

        n = hf["num_hidden_layers"]
        layer_types = hf.get("layer_types")
        if isinstance(layer_types, list) and len(layer_types) == n:
            kinds = tuple(
                model_lib.AttentionType.LOCAL_SLIDING
                if t == "sliding_attention"
                else model_lib.AttentionType.GLOBAL
                for t in layer_types
            )
        else:
            pattern = (model_lib.AttentionType.LOCAL_SLIDING, model_lib.AttentionType.GLOBAL)
            kinds = tuple(pattern[i % 2] for i in range(n))
        config = model_lib.ModelConfig(
            **_common_dims(hf),
            num_embed=hf["vocab_size"],
            final_logit_softcap=hf.get("final_logit_softcapping"),
            attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
            sliding_window_size=hf.get("sliding_window"),
            use_post_attn_norm=True,
            use_post_ffw_norm=True,
            attention_types=kinds,
        )
        return config, params_lib

    if family == "gemma3":
        from tunix.models.gemma3 import model as model_lib
        from tunix.models.gemma3 import params_safetensors as params_lib

        dims = _common_dims(hf)
        norm = model_lib.QueryPreAttentionNormalisation
        scalar = hf.get("query_pre_attn_scalar") or dims["head_dim"]
        scaling = hf.get("rope_scaling") or {}
        config = model_lib.ModelConfig(
            **dims,
            num_embed=hf["vocab_size"],
            sliding_window_size=hf.get("sliding_window"),
            local_base_frequency=int(hf.get("rope_local_base_freq") or 10_000),
            global_base_frequency=int(_rope_theta(hf, 1_000_000)),
            global_scale_factor=float(scaling.get("factor", 1.0))
            if isinstance(scaling, dict)
            else 1.0,
            query_pre_attn_norm=(
                norm.BY_ONE_OVER_SQRT_HEAD_DIM
                if scalar == dims["head_dim"]
                else norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
            ),
        )
        return config, params_lib

    raise LaunchError(f"unsupported model family {family!r}")


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise LaunchError(f"dataset file {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise LaunchError(f"dataset line {number} is not valid JSON") from None
            if not (
                isinstance(row, dict)
                and isinstance(row.get("prompt"), str)
                and isinstance(row.get("completion"), str)
            ):
                raise LaunchError(
                    f"dataset line {number} is not an object with string 'prompt' and 'completion'"
                )
            rows.append(row)
    if not rows:
        raise LaunchError(f"dataset file {path} holds no rows")
    return rows


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split: the same seed always holds out the same rows."""
    if eval_fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [
        r for i, r in enumerate(rows) if i in held
    ]


def tokenize_rows(rows: list, tokenizer, max_seq_length: int) -> tuple[list, int]:
    """Return (list of (ids, loss_mask), rows dropped for lack of completion tokens).

    The rows are already rendered with the family's chat template, so no
    special tokens are added here; the template's own markers are in the text
    and the tokenizer matches them as single tokens.
    """
    examples, dropped = [], 0
    for row in rows:
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
        completion = tokenizer.encode(row["completion"], add_special_tokens=False).ids
        ids = (prompt + completion)[:max_seq_length]
        mask = ([0] * len(prompt) + [1] * len(completion))[:max_seq_length]
        # The loss predicts token t from tokens < t, so a row needs a completion
        # token after position 0 to contribute anything.
        if not any(mask[1:]):
            dropped += 1
            continue
        examples.append((ids, mask))
    return examples, dropped


def pick_seq_len(examples: list, max_seq_length: int) -> int:
    """Pad to the longest row (rounded up to 8), not blindly to max_seq_length.

    One static length for the whole run means one compilation; a short
    dataset then costs a fraction of the compute of a padded one.
    """
    longest = max(len(ids) for ids, _ in examples)
    return min(max_seq_length, -(-longest // 8) * 8)


def make_batches(examples: list, batch_size: int, seq_len: int, order: list):
    """Yield TrainingInput batches of a fixed shape.

    A short last batch is filled with all-padding rows whose loss mask is 0: a
    fixed shape avoids a second compilation, and the empty rows add nothing
    to the (mask-normalised) loss.
    """
    import numpy as np
    from tunix.sft import peft_trainer

    for start in range(0, len(order), batch_size):
        tokens = np.zeros((batch_size, seq_len), dtype=np.int32)
        mask = np.zeros((batch_size, seq_len), dtype=np.int32)
        for slot, index in enumerate(order[start : start + batch_size]):
            ids, loss_mask = examples[index]
            tokens[slot, : len(ids)] = ids
            mask[slot, : len(loss_mask)] = loss_mask
        yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)


class TrainBatches:
    """Epochs of shuffled batches, reproducible from the seed.

    Tunix resumes by replaying the iterator and skipping the batches already
    trained, so every pass must yield the same batches in the same order.
    """

    def __init__(self, examples, batch_size, seq_len, num_epochs, seed):
        self.examples, self.batch_size, self.seq_len = examples, batch_size, seq_len
        self.num_epochs, self.seed = num_epochs, seed

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def __iter__(self):
        for epoch in range(self.num_epochs):
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1000 + epoch).shuffle(order)
            yield from make_batches(self.examples, self.batch_size, self.seq_len, order)


class EvalBatches:
    """The held-out batches, re-iterable because Tunix iterates them at every eval.

    With skip_first, the first evaluation sees no batches: a resumed run's
    starting step was already evaluated by its parent run.
    """

    def __init__(self, batches: list, skip_first: bool):
        self.batches = batches
        self._skip = skip_first

    def __bool__(self) -> bool:
        return bool(self.batches)

    def __iter__(self):
        if self._skip:
            self._skip = False
            return iter(())
        return iter(self.batches)


def model_inputs(batch):
    """Positions and attention mask for right-padded rows.

    Padding sits after the real tokens and causal attention never looks
    forward, so a plain causal mask and positions 0..L-1 are exact for every
    real token; padded positions carry no loss. This avoids treating token id 0
    as padding, which is a real token in several vocabularies.
    """
    import jax.numpy as jnp

    size, length = batch.input_tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (size, length))
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    return {
        "input_tokens": batch.input_tokens,
        "input_mask": batch.input_mask,
        "positions": positions,
        "attention_mask": jnp.broadcast_to(causal, (size, length, length)),
    }


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def complete_steps(checkpoint_dir: Path) -> list[int]:
    """Steps whose Orbax checkpoint finished writing (commit_success.txt present)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in checkpoint_dir.iterdir()
        if p.name.isdigit() and (p / "commit_success.txt").is_file()
    )


def seed_from_parent(parent_dir: Path, own_dir: Path) -> int:
    """Copy the parent's newest complete checkpoint into this run's checkpoint dir.

    Tunix's trainer restores from the newest step under its own checkpoint
    root, so the copy is all that resuming needs. Returns the step resumed from.
    """
    if not parent_dir.is_dir():
        raise LaunchError(f"resume checkpoint dir {parent_dir} does not exist")
    steps = complete_steps(parent_dir)
    if not steps:
        raise LaunchError(f"resume checkpoint dir {parent_dir} holds no complete checkpoint")
    step = steps[-1]
    own_steps = complete_steps(own_dir)
    if own_steps and own_steps[-1] >= step:
        # A restarted resume: this run already has a newer checkpoint of its own.
        return own_steps[-1]
    own_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(parent_dir / str(step), own_dir / str(step), dirs_exist_ok=True)
    return step


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


# Tunix logs the (unchanged) learning rate again at every evaluation.
_IGNORED_METRICS = {"eval/learning_rate"}


class Monitor:
    """Turns Tunix's metric stream into events and keeps the run's summary."""

    def __init__(
        self,
        events: Events,
        total_steps: int,
        checkpoint_dir: Path,
        output_dir: Path,
        known_steps=(),
    ):
        self.events = events
        self.total_steps = total_steps
        self.checkpoint_dir = checkpoint_dir
        self.output_dir = output_dir
        self.reported_checkpoints = set(known_steps)
        self.first_loss = None
        self.final_loss = None
        self.eval_loss = None
        self.last_eval_step = None
        self.last_train_step = None

    def on_scalar(self, event: str, value, **kwargs) -> None:
        # JAX reports its own compile timings through the same channel.
        if event.startswith("/jax/"):
            return
        name = event.lstrip("/")
        if name in _IGNORED_METRICS:
            return
        step = kwargs.get("step")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(number):
            if name.endswith("loss"):
                kind = "training" if name.startswith("train") else "eval"
                value_text = "NaN" if math.isnan(number) else "infinite"
                raise NonFiniteLoss(f"{kind} loss became {value_text} at step {step}")
            # e.g. perplexity overflows float32 long before the loss does
            print(
                f"launcher: skipped non-finite metric {name}={number} at step {step}",
                file=sys.stderr,
            )
            return
        self.events.emit("metric", name=name, step=step, value=number)
        if name == "train/loss":
            if self.first_loss is None:
                self.first_loss = number
            self.final_loss = number
            self.last_train_step = step
            self.events.emit("progress", step=step, total_steps=self.total_steps)
            self.report_checkpoints()
        elif name == "eval/loss":
            self.eval_loss = number
            self.last_eval_step = step

    def report_checkpoints(self) -> None:
        for step in complete_steps(self.checkpoint_dir):
            if step not in self.reported_checkpoints:
                self.reported_checkpoints.add(step)
                path = os.path.relpath(self.checkpoint_dir / str(step), self.output_dir)
                self.events.emit("checkpoint", step=step, path=path, complete=True)


def _make_hooks(events: Events, final_eval):
    from tunix.sft import hooks

    class PhaseHooks(hooks.TrainingHooks):
        """Phase events from inside Tunix's loop; the first step also compiles."""

        def __init__(self):
            self.steps_done = 0
            self.ending = False

        def on_train_start(self, trainer):
            pass

        def on_train_step_start(self, trainer):
            if self.steps_done:
                events.enter("training")

        def on_train_step_end(self, trainer, train_step, train_loss):
            # Tunix reports each step one step late, the last one while saving.
            self.steps_done += 1
            if not self.ending:
                events.enter("training")

        def on_eval_step_start(self, trainer):
            if self.steps_done:
                events.enter("evaluating")

        def on_eval_step_end(self, trainer, eval_loss):
            pass

        def on_train_end(self, trainer):
            self.ending = True
            final_eval(trainer)
            events.enter("saving")

    return PhaseHooks()


@dataclass
class Prepared:
    """Everything checked and computed before JAX is imported."""

    model_dir: Path
    hf: dict
    train_ds: "TrainBatches"
    eval_examples: list
    seq_len: int
    total_steps: int


def prepare(config: dict) -> Prepared:
    """Resolve the model, read and tokenize the data: no JAX, so bad input fails fast."""
    from tokenizers import Tokenizer

    model_cfg, data_cfg, t = config["model"], config["dataset"], config["training"]
    seed = t["seed"]
    model_dir = resolve_model_dir(model_cfg)
    hf = read_hf_config(model_dir, model_cfg["family"])
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise LaunchError(
            f"tokenizer {model_dir / 'tokenizer.json'} cannot be loaded: {_one_line(exc)}"
        ) from None

    rows = read_rows(Path(data_cfg["path"]))
    train_rows, eval_rows = split_rows(rows, data_cfg["eval_fraction"], seed)
    train_examples, dropped = tokenize_rows(train_rows, tokenizer, t["max_seq_length"])
    eval_examples, eval_dropped = tokenize_rows(eval_rows, tokenizer, t["max_seq_length"])
    if dropped or eval_dropped:
        print(
            f"launcher: dropped {dropped + eval_dropped} rows whose prompt fills "
            f"max_seq_length={t['max_seq_length']}",
            file=sys.stderr,
        )
    if not train_examples:
        raise LaunchError(
            f"no training rows left: every prompt fills max_seq_length={t['max_seq_length']}"
            if dropped
            else "no training rows left after holding out the eval split"
        )
    vocab = hf["vocab_size"]
    too_big = max(max(ids) for ids, _ in train_examples + eval_examples)
    if too_big >= vocab:
        raise LaunchError(
            f"tokenizer produced id {too_big}, outside the model's vocabulary of {vocab}"
        )
    seq_len = pick_seq_len(train_examples + eval_examples, t["max_seq_length"])

    accumulation = t["gradient_accumulation_steps"]
    train_ds = TrainBatches(train_examples, t["batch_size"], seq_len, t["num_epochs"], seed)
    data_steps = train_ds.batches_per_epoch * t["num_epochs"] // accumulation
    if data_steps < 1:
        raise LaunchError(
            f"{len(train_examples)} training rows make fewer batches than "
            f"gradient_accumulation_steps={accumulation}"
        )
    return Prepared(
        model_dir=model_dir,
        hf=hf,
        train_ds=train_ds,
        eval_examples=eval_examples,
        seq_len=seq_len,
        total_steps=min(t["max_steps"], data_steps) if t["max_steps"] else data_steps,
    )


def train(config: dict, prep: Prepared, events: Events, started: float) -> dict:
    import importlib.metadata

    import jax

    events.emit(
        "environment",
        tunix_version=importlib.metadata.version("google-tunix"),
        jax_version=jax.__version__,
        jaxlib_version=importlib.metadata.version("jaxlib"),
        platform=jax.devices()[0].platform,
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
    )

    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    import qwix
    from flax import nnx
    from orbax.checkpoint import checkpoint_managers as policies
    from tunix.sft import metrics_logger, peft_trainer
    from tunix.sft import utils as sft_utils

    t, lora, output = config["training"], config["lora"], config["output"]
    family, seed = config["model"]["family"], t["seed"]
    random.seed(seed)
    np.random.seed(seed)
    model_dir, hf, train_ds = prep.model_dir, prep.hf, prep.train_ds
    seq_len, eval_examples, total_steps = prep.seq_len, prep.eval_examples, prep.total_steps
    accumulation = t["gradient_accumulation_steps"]

    checkpoint_dir = Path(output["checkpoint_dir"])
    resumed_from = None
    if config["resume"].get("checkpoint_dir"):
        resumed_from = seed_from_parent(Path(config["resume"]["checkpoint_dir"]), checkpoint_dir)
        if resumed_from >= total_steps:
            raise LaunchError(
                f"nothing to train: the checkpoint is at step {resumed_from} "
                f"and the run stops at step {total_steps}"
            )
        events.emit("resumed", from_step=resumed_from)

    eval_batches = (
        []
        if not eval_examples
        else list(
            make_batches(eval_examples, t["batch_size"], seq_len, list(range(len(eval_examples))))
        )
    )
    eval_ds = (
        EvalBatches(eval_batches, skip_first=resumed_from is not None) if eval_batches else None
    )

    devices = jax.devices()
    # Auto axes: Tunix's models rely on sharding propagation, which fails on
    # the Explicit axes that jax.make_mesh now creates by default.
    mesh = jax.make_mesh(
        (len(devices), 1),
        ("fsdp", "tp"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )
    model_config, params_lib = build_model_config(family, hf)
    # Tunix's trainer finds the mesh through the legacy `with mesh:` context
    # (pxla.thread_resources); jax.set_mesh alone would leave its inputs unsharded.
    warnings.filterwarnings(
        "ignore", message=".*`with mesh:` context manager", category=DeprecationWarning
    )
    with mesh:
        model = params_lib.create_model_from_safe_tensors(str(model_dir), model_config, mesh)
        if lora.get("enabled"):
            provider = qwix.LoraProvider(
                module_path=lora["module_path"], rank=lora["rank"], alpha=lora["alpha"]
            )
            model = qwix.apply_lora_to_model(
                model, provider, rngs=nnx.Rngs(seed), **model.get_model_input()
            )
            if not sft_utils.is_lora_enabled(model):
                raise LaunchError(
                    f"lora.module_path {lora['module_path']!r} matches no module "
                    f"of the {family} model"
                )
            if len(devices) > 1:
                state = nnx.state(model)
                nnx.update(
                    model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state))
                )

        optimizer = optax.inject_hyperparams(optax.adamw)(
            learning_rate=t["learning_rate"], weight_decay=t["weight_decay"]
        )
        log_dir = output["tensorboard_dir"]
        training_config = peft_trainer.TrainingConfig(
            # Tunix needs a number; without one, evaluate only before and after.
            eval_every_n_steps=t["eval_every_n_steps"] or total_steps + 1,
            max_steps=total_steps,
            gradient_accumulation_steps=accumulation if accumulation > 1 else None,
            checkpoint_root_directory=str(checkpoint_dir),
            checkpointing_options=ocp.CheckpointManagerOptions(
                # Orbax's default policy also saves the very first step; only
                # every N steps here (Tunix itself adds the final step).
                save_decision_policy=policies.AnySavePolicy(
                    [
                        policies.FixedIntervalPolicy(t["checkpoint_every_n_steps"] or total_steps),
                        policies.PreemptionCheckpointingPolicy(),
                    ]
                ),
                max_to_keep=t["max_checkpoints_to_keep"],
            ),
            metrics_logging_options=metrics_logger.MetricsLoggerOptions(
                log_dir=log_dir,
                flush_every_n_steps=10,
                # TensorBoard only: the default set also tries Weights & Biases
                # whenever wandb happens to be installed.
                backend_kwargs={
                    "custom_backend": [
                        lambda: metrics_logger.TensorboardBackend(
                            log_dir=log_dir, flush_every_n_steps=10
                        )
                    ]
                },
            ),
            pbar_description=None,
        )

        monitor = Monitor(
            events,
            total_steps,
            checkpoint_dir,
            Path(output["dir"]),
            known_steps=[resumed_from] if resumed_from else [],
        )
        # Registered before the trainer's own TensorBoard listener, so a NaN
        # loss aborts the run before it is written anywhere.
        jax.monitoring.register_scalar_listener(monitor.on_scalar)

        def final_eval(trainer):
            """Evaluate the final weights unless the loop just did."""
            if not eval_batches or monitor.last_eval_step == trainer.train_steps:
                return
            events.enter("evaluating")
            _, eval_step = trainer.jit_train_and_eval_step()
            losses = [float(jax.device_get(eval_step(b)[0])) for b in eval_batches]
            loss = sum(losses) / len(losses)
            prefix = trainer.metrics_prefix
            trainer.metrics_logger.log(prefix, "loss", loss, "eval", trainer.train_steps)
            if math.isfinite(loss) and loss < 80:
                trainer.metrics_logger.log(
                    prefix, "perplexity", math.exp(loss), "eval", trainer.train_steps
                )

        trainer = peft_trainer.PeftTrainer(model, optimizer, training_config)
        trainer = trainer.with_gen_model_input_fn(model_inputs)
        trainer.with_training_hooks(_make_hooks(events, final_eval))
        events.enter("compiling")
        trainer.train(train_ds, eval_ds)

    monitor.report_checkpoints()
    steps = complete_steps(checkpoint_dir)
    events.enter("done")
    return {
        "steps": trainer.train_steps,
        "first_loss": monitor.first_loss,
        "final_loss": monitor.final_loss,
        "eval_loss": monitor.eval_loss,
        "checkpoint_step": steps[-1] if steps else None,
        "seconds": round(time.monotonic() - started, 3),
    }


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text.split()


def _log_to_stderr() -> None:
    """Show Tunix's own INFO lines (losses, restores, timings) on stderr.

    Outside absl.app nothing configures logging, so only warnings would appear.
    Orbax logs through the same "absl" logger at INFO, about forty lines per
    checkpoint; only its warnings are kept.
    """
    import contextlib
    import logging

    with contextlib.suppress(ImportError):
        # Imported first so that the "absl" logger is absl's own class, which
        # records the real caller's file rather than absl's.
        import absl.logging  # noqa: F401

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}tunix{os.sep}" in record.pathname

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    handler.addFilter(keep)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("absl").setLevel(logging.INFO)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    events = Events(_take_over_stdout())
    _log_to_stderr()
    events.enter("starting")
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        events.emit("error", message="usage: python -m runs.launcher CONFIG.json")
        return EXIT_BAD_INPUT
    try:
        config = load_config(argv[0])
        events.enter("loading")
        prep = prepare(config)
        summary = train(config, prep, events, started)
    except LaunchError as exc:
        return _fail(events, str(exc), exc.code)
    except NonFiniteLoss as exc:
        return _fail(events, str(exc), EXIT_NON_FINITE_LOSS)
    except BaseException as exc:  # noqa: BLE001 - the protocol needs an error line for anything
        # NonFiniteLoss raised in the listener may arrive wrapped by JAX or Tunix.
        cause = exc
        while cause is not None and not isinstance(cause, NonFiniteLoss):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            return _fail(events, str(cause), EXIT_NON_FINITE_LOSS)
        traceback.print_exc(file=sys.stderr)
        if _is_out_of_memory(exc):
            return _fail(
                events, f"out of memory while {events.phase}: {_one_line(exc)}", EXIT_OUT_OF_MEMORY
            )
        if isinstance(exc, KeyboardInterrupt):
            return _fail(events, "interrupted", EXIT_FAILURE)
        return _fail(
            events, f"{type(exc).__name__} while {events.phase}: {_one_line(exc)}", EXIT_FAILURE
        )
    events.emit("summary", **summary)
    return EXIT_OK


def _fail(events: Events, message: str, code: int) -> int:
    events.emit("error", message=message)
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # Orbax and grain may leave non-daemon threads behind after a failure;
    # the events are flushed, so leave without waiting for them.
    os._exit(code)
