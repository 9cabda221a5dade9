"""The shared core of the preference and RL methods: the model (optionally another run's
result, its LoRA merged into its base), LoRA, the tokenizer, optimizer and logging options.

SFT keeps its own path in `runs.launcher.train`; mesh, environment report and the SFT-side
helpers are reused from there so both sides stay the same.
"""

import json
from pathlib import Path

from runs import protocol
from runs.launcher.checkpoints import complete_steps
from runs.launcher.events import LaunchError
from runs.launcher.models import build_model_config


class TextTokenizer:
    """The model folder's tokenizer.json with the methods Tunix's TokenizerAdapter expects
    (encode, decode, bos_id, eos_id, pad_id); no transformers import needed."""

    def __init__(self, model_dir: Path, hf: dict, family: str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        end_turn = protocol.END_OF_TURN[family]
        self.end_turn_id = self._tokenizer.token_to_id(end_turn)
        eos = hf.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        self._eos = eos if isinstance(eos, int) else self.end_turn_id
        bos = hf.get("bos_token_id")
        self._bos = bos if isinstance(bos, int) else None
        pad = hf.get("pad_token_id")
        self._pad = pad if isinstance(pad, int) else self._eos
        if self._eos is None:
            raise LaunchError("the model has no eos_token_id and its chat template no end token")

    def encode(self, text, **kwargs) -> list[int]:
        # Tunix hands numpy strings; the chat template's markers are already in the text.
        return self._tokenizer.encode(str(text), add_special_tokens=False).ids

    def decode(self, ids, **kwargs) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def bos_id(self):
        return self._bos

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return self._pad

    def stop_ids(self) -> list[int]:
        return sorted({i for i in (self._eos, self.end_turn_id) if i is not None})


def read_lora_of(base_dir: Path) -> dict:
    """The LoRA settings the base run trained with (its config file)."""
    try:
        config = json.loads((base_dir / protocol.CONFIG_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"base run config {base_dir / protocol.CONFIG_FILENAME}: {exc}") from None
    return config.get("lora") or {}


def base_checkpoint(base: dict) -> tuple[Path, int]:
    """(checkpoint root, newest complete step) of the run this one starts from. RL runs keep
    the policy's checkpoints in an `actor` subfolder."""
    root = Path(base["checkpoint_dir"])
    for candidate in (root, root / "actor"):
        steps = complete_steps(candidate)
        if steps:
            return candidate, steps[-1]
    raise LaunchError(f"the base run has no complete checkpoint under {root}")


def merge_lora(target, source, scale: float) -> int:
    """Add each LoRA pair's product of `source` (a LoRA model) to the same weight of `target`
    (the plain base model). Returns how many weights changed."""
    import jax.numpy as jnp
    from flax import nnx

    pairs: dict[tuple, dict] = {}
    for path, value in nnx.iter_graph(source):
        if isinstance(value, nnx.LoRAParam):
            name = str(path[-1])
            for suffix in ("_lora_a", "_lora_b"):
                if name.endswith(suffix):
                    pairs.setdefault((*path[:-1], name[: -len(suffix)]), {})[suffix] = value
    merged = 0
    for path, pair in pairs.items():
        module = target
        for part in path[:-1]:
            module = module[part] if isinstance(part, int) else getattr(module, part)
        weight = getattr(module, str(path[-1]))
        a, b = pair["_lora_a"][...], pair["_lora_b"][...]
        delta = jnp.tensordot(a, b, axes=1) * scale
        if delta.shape != weight[...].shape:
            raise LaunchError(
                f"cannot merge LoRA of {'.'.join(map(str, path))}: its product has shape "
                f"{delta.shape}, the weight {weight[...].shape}"
            )
        weight[...] = (weight[...] + delta).astype(weight[...].dtype)
        merged += 1
    return merged


def create_base(config: dict, model_dir: Path, hf: dict, mesh):
    """The plain model: the checkpoint's weights, with the base run's LoRA merged in when
    this run starts from another run's result."""
    import qwix
    from flax import nnx
    from tunix.sft import checkpoint_manager

    family = config["model"]["family"]
    model_config, params_lib = build_model_config(family, hf)
    model = params_lib.create_model_from_safe_tensors(str(model_dir), model_config, mesh)
    base = config.get("base_run") or {}
    if not base.get("checkpoint_dir"):
        return model
    lora = base.get("lora") or read_lora_of(Path(base["output_dir"]))
    if not lora.get("enabled"):
        raise LaunchError("the base run trained all weights; only LoRA results can be merged")
    root, step = base_checkpoint(base)
    adapted = params_lib.create_model_from_safe_tensors(str(model_dir), model_config, mesh)
    provider = qwix.LoraProvider(
        module_path=lora["module_path"], rank=lora["rank"], alpha=lora["alpha"]
    )
    adapted = qwix.apply_lora_to_model(
        adapted, provider, rngs=nnx.Rngs(0), **adapted.get_model_input()
    )
    manager = checkpoint_manager.CheckpointManager(str(root))
    restored, _ = manager.maybe_restore(adapted, step=step, restore_only_lora_params=True)
    manager.close()
    if restored != step:
        raise LaunchError(f"could not restore the base run's checkpoint step {step}")
    merged = merge_lora(model, adapted, lora["alpha"] / lora["rank"])
    print(f"launcher: merged {merged} LoRA weights of the base run (step {step})", flush=True)
    return model


def add_lora(model, config: dict):
    """This run's own LoRA on top of `model` (a no-op when LoRA is off)."""
    import qwix
    from flax import nnx
    from tunix.sft import utils as sft_utils

    lora = config["lora"]
    if not lora.get("enabled"):
        return model
    provider = qwix.LoraProvider(
        module_path=lora["module_path"], rank=lora["rank"], alpha=lora["alpha"]
    )
    model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(config["training"]["seed"]), **model.get_model_input()
    )
    if not sft_utils.is_lora_enabled(model):
        raise LaunchError(f"lora.module_path {lora['module_path']!r} matches no module")
    return model


def build_optimizer(t: dict):
    import jax.numpy as jnp
    import optax

    # fp32 hyperparameters: in bf16, b2=0.999 rounds to 1 and AdamW divides 0 by 0.
    return optax.inject_hyperparams(optax.adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"]
    )


def logging_options(config: dict):
    from tunix.sft import metrics_logger

    log_dir = config["output"]["tensorboard_dir"]
    return metrics_logger.MetricsLoggerOptions(
        log_dir=log_dir,
        flush_every_n_steps=10,
        backend_kwargs={
            "custom_backend": [
                lambda: metrics_logger.TensorboardBackend(log_dir=log_dir, flush_every_n_steps=10)
            ]
        },
    )


def checkpoint_options(t: dict, total_steps: int):
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies

    return ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy(
            [
                policies.FixedIntervalPolicy(t["checkpoint_every_n_steps"] or total_steps),
                policies.PreemptionCheckpointingPolicy(),
            ]
        ),
        max_to_keep=t["max_checkpoints_to_keep"],
    )


def pad_to(values: list[int], length: int, pad: int, *, left: bool) -> tuple[list, list]:
    """(ids, mask) of exactly `length`: cut to it, padded on the left or the right."""
    values = values[-length:] if left else values[:length]
    filler = [pad] * (length - len(values))
    mask = [1] * len(values)
    if left:
        return filler + values, [0] * len(filler) + mask
    return values + filler, mask + [0] * len(filler)


def round_up(n: int, multiple: int = 8) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def epoch_order(count: int, batch_size: int, seed: int, epoch: int) -> list[int]:
    """A reproducible shuffled order, wrapped round to whole batches (resume replays it)."""
    import random

    order = list(range(count))
    random.Random(seed * 1000 + epoch).shuffle(order)
    short = -len(order) % batch_size
    return order + [order[i % count] for i in range(short)]
