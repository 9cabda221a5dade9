"""Read and check the launcher's config file (written by the web side's config builder)."""

import json
import os
from pathlib import Path

from runs import protocol
from runs.launcher.events import LaunchError


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


def read_json(path: str):
    """The JSON value of a config file, or the launch fails saying why."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise LaunchError(f"config file {path} is not readable JSON: {exc}") from None


def load_config(path: str) -> dict:
    """Read and check the config file, returning it with defaults filled in."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise LaunchError("config file must hold a JSON object")
    if config.get("schema") != protocol.SCHEMA_VERSION:
        raise LaunchError(
            f"config schema {config.get('schema')!r} is not supported "
            f"(expected {protocol.SCHEMA_VERSION})"
        )

    model = _section(config, "model")
    family = model.get("family")
    if family not in protocol.FAMILIES:
        raise LaunchError(
            f"unsupported model family {family!r}; supported: {', '.join(protocol.FAMILIES)}"
        )
    if model.get("source", "local") not in protocol.MODEL_SOURCES:
        raise LaunchError(f"unknown model source {model.get('source')!r}")

    dataset = _section(config, "dataset")
    if not isinstance(dataset.get("path"), str):
        raise LaunchError("dataset.path is missing")
    fraction = _number(dataset, "eval_fraction", "dataset", default=0.0, minimum=0.0)
    if fraction >= 1.0:
        raise LaunchError("dataset.eval_fraction must be below 1")
    dataset["eval_fraction"] = fraction
    if "split_seed" in dataset:
        dataset["split_seed"] = _number(dataset, "split_seed", "dataset", int, minimum=0)

    config["training"] = _training(_section(config, "training"))
    lora = config.get("lora") or {"enabled": False}
    if lora.get("enabled"):
        lora["rank"] = _number(lora, "rank", "lora", int, default=8, minimum=1)
        lora["alpha"] = _number(lora, "alpha", "lora", default=16.0)
        lora["module_path"] = lora.get("module_path") or protocol.LORA_MODULE_PATHS[family]
    config["lora"] = lora

    output = _section(config, "output")
    out_dir = output.get("dir") or os.getcwd()
    output["dir"] = out_dir
    output.setdefault("checkpoint_dir", os.path.join(out_dir, protocol.CHECKPOINTS_DIRNAME))
    output.setdefault("tensorboard_dir", os.path.join(out_dir, protocol.TENSORBOARD_DIRNAME))
    config["resume"] = config.get("resume") or {}
    config["method"] = _method(config.get("method") or {"name": "sft"})
    base = config.get("base_run") or {}
    if base and not isinstance(base.get("checkpoint_dir"), str):
        raise LaunchError("base_run.checkpoint_dir is missing")
    config["base_run"] = base
    return config


_GRPO_VARIANTS = ("grpo", "dapo", "drgrpo")


def _method(method: dict) -> dict:
    """The method section: sft (the default), dpo, orpo or grpo, and its settings."""
    name = method.get("name", "sft")
    if name not in ("sft", "dpo", "orpo", "grpo"):
        raise LaunchError(f"unknown method {name!r}; supported: sft, dpo, orpo, grpo")
    where = "method"
    if name in ("dpo", "orpo"):
        method["beta"] = _number(method, "beta", where, default=0.1, minimum=0.0)
        method["lambda_orpo"] = _number(method, "lambda_orpo", where, default=0.1, minimum=0.0)
    if name == "grpo":
        if method.get("variant", "grpo") not in _GRPO_VARIANTS:
            raise LaunchError(f"method.variant must be one of {', '.join(_GRPO_VARIANTS)}")
        if method.get("loss_algo", "grpo") not in ("grpo", "gspo-token"):
            raise LaunchError("method.loss_algo must be grpo or gspo-token")
        method.setdefault("variant", "grpo")
        method.setdefault("loss_algo", "grpo")
        method["num_generations"] = _number(
            method, "num_generations", where, int, default=2, minimum=2
        )
        method["num_iterations"] = _number(
            method, "num_iterations", where, int, default=1, minimum=1
        )
        method["beta"] = _number(method, "beta", where, default=0.04, minimum=0.0)
        method["epsilon"] = _number(method, "epsilon", where, default=0.2, minimum=0.0)
        method["max_new_tokens"] = _number(
            method, "max_new_tokens", where, int, default=64, minimum=1
        )
        method["temperature"] = _number(method, "temperature", where, default=0.9, minimum=0.0)
        method["top_p"] = _number(method, "top_p", where, default=1.0, minimum=0.0)
        rewards = method.get("rewards")
        if not isinstance(rewards, dict) or not rewards.get("rewards"):
            raise LaunchError("method.rewards must name at least one reward")
    method["name"] = name
    return method


def _training(t: dict) -> dict:
    return {
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
        "warmup_steps": _number(t, "warmup_steps", "training", int, default=0, minimum=0),
        "max_grad_norm": _number(t, "max_grad_norm", "training", default=0.0, minimum=0.0),
        "lr_schedule": _choice(t, "lr_schedule", protocol.LR_SCHEDULES),
        "compute_dtype": _choice(t, "compute_dtype", protocol.COMPUTE_DTYPES),
        "long_completions": _choice(t, "long_completions", protocol.LONG_COMPLETIONS),
        "mesh": _mesh(t.get("mesh") or {}),
    }


def _mesh(mesh: dict) -> dict:
    """fsdp x tp devices; fsdp 0: every device the run's slot has, divided by tp."""
    if not isinstance(mesh, dict):
        raise LaunchError("training.mesh must be an object with fsdp and tp")
    return {
        "fsdp": _number(mesh, "fsdp", "training.mesh", int, default=0, minimum=0),
        "tp": _number(mesh, "tp", "training.mesh", int, default=1, minimum=1),
    }


def _choice(section: dict, key: str, choices: tuple):
    """A string setting; absent means the first choice."""
    value = section.get(key, choices[0])
    if value not in choices:
        raise LaunchError(f"training.{key} must be one of {', '.join(choices)}, not {value!r}")
    return value
