"""Prepare (no JAX: bad input fails fast) and train, phase by phase."""

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from runs import protocol
from runs.launcher.checkpoints import complete_steps, seed_from_parent
from runs.launcher.data import (
    Renderer,
    TrainBatches,
    make_batches,
    model_inputs,
    pick_seq_len,
    read_rows,
    split_rows,
    tokenize_rows,
)
from runs.launcher.evaluation import make_trainer_class
from runs.launcher.events import Events, LaunchError, one_line
from runs.launcher.models import build_model_config, read_hf_config, resolve_model_dir
from runs.launcher.monitor import Monitor, make_hooks
from runs.launcher.optim import (
    build_optimizer,
    lora_provider,
    lora_to_fp32,
    loss_fn,
    weight_dtypes,
)
from runs.launcher.rope import DEFAULT_ROPE_THETA
from runs.launcher.rope import install as install_rope


@dataclass
class Prepared:
    """Everything checked and computed before JAX is imported."""

    model_dir: Path
    hf: dict
    train_ds: "TrainBatches"
    eval_examples: list
    seq_len: int
    total_steps: int
    plan: dict


def _load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise LaunchError(
            f"tokenizer {model_dir / 'tokenizer.json'} cannot be loaded: {one_line(exc)}"
        ) from None


def _check_checkpoint(family: str, hf: dict) -> dict:
    read, refusals = protocol.model_config_check(family, hf)
    if refusals:
        raise LaunchError("this checkpoint cannot be trained correctly: " + "; ".join(refusals))
    return read


def prepare(config: dict) -> Prepared:
    """Resolve the model, read, render and tokenize the data: no JAX, so bad input fails
    fast."""
    model_cfg, data_cfg, t = config["model"], config["dataset"], config["training"]
    model_dir = resolve_model_dir(model_cfg)
    hf = read_hf_config(model_dir, model_cfg["family"])
    fields_read = _check_checkpoint(model_cfg["family"], hf)
    tokenizer = _load_tokenizer(model_dir)
    template, tokens = protocol.read_chat_template(str(model_dir))
    renderer = Renderer(model_cfg["family"], template, tokens)

    rows = read_rows(Path(data_cfg["path"]))
    split_seed = data_cfg.get("split_seed", t["seed"])
    train_rows, eval_rows = split_rows(rows, data_cfg["eval_fraction"], split_seed)
    keep_long = t["long_completions"] == "keep"
    train = tokenize_rows(train_rows, tokenizer, t["max_seq_length"], renderer, keep_long)
    held = tokenize_rows(eval_rows, tokenizer, t["max_seq_length"], renderer, keep_long)
    if not train.examples:
        raise LaunchError(
            f"no training rows left at max_seq_length={t['max_seq_length']}: {train.counts()}"
        )
    vocab = hf["vocab_size"]
    too_big = max(max(ids) for ids, _ in train.examples + held.examples)
    if too_big >= vocab:
        raise LaunchError(
            f"tokenizer produced id {too_big}, outside the model's vocabulary of {vocab}"
        )
    seq_len = pick_seq_len(train.examples + held.examples, t["max_seq_length"])

    accumulation = t["gradient_accumulation_steps"]
    sched = protocol.schedule(len(train.examples), t["batch_size"], t["num_epochs"], t["max_steps"])
    total_steps = sched["steps"] // accumulation if not t["max_steps"] else t["max_steps"]
    if total_steps < 1:
        raise LaunchError(
            f"{len(train.examples)} training rows make fewer batches than "
            f"gradient_accumulation_steps={accumulation}"
        )
    train_ds = TrainBatches(
        train.examples, t["batch_size"], seq_len, total_steps * accumulation, t["seed"]
    )
    plan = {
        **sched,
        "steps": total_steps,
        "train_rows": len(train.examples),
        "eval_rows": len(held.examples),
        "train_length": train.counts(),
        "eval_length": held.counts(),
        "chat_template": renderer.name,
        "trained_turns": "every assistant turn",
        "config_fields": fields_read,
    }
    return Prepared(model_dir, hf, train_ds, held.examples, seq_len, total_steps, plan)


# Base frequency Tunix's model code should have used when config.json names none.


def describe_plan(plan: dict) -> str:
    """One line for the log: what the run will train, before it starts."""
    lengths = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in plan["train_length"].items() if v)
    return (
        f"training {plan['steps']} steps = {plan['epochs']} epochs of {plan['train_rows']} rows "
        f"({plan['batches_per_epoch']} batches each); {plan['eval_rows']} rows held out for "
        f"evaluation; rows at max_seq_length: {lengths}; chat template: "
        f"{plan['chat_template']}; trained: {plan['trained_turns']}"
    )


def report_numerics(config: dict, prep: Prepared, events: Events) -> None:
    """Install the checkpoint's RoPE, and say which dtypes and RoPE the run uses and what
    it will train."""
    family, t = config["model"]["family"], config["training"]
    rope = install_rope(family, prep.hf, default_theta=DEFAULT_ROPE_THETA.get(family, 10_000))
    dtypes = weight_dtypes(t["compute_dtype"], bool(config["lora"].get("enabled")))
    if rope:
        dtypes["rope"] = f"theta {rope['rope_theta']:g}, scaling {rope['rope_scaling'] or 'none'}"
    events.emit(protocol.EVENT_ENVIRONMENT, **dtypes)
    print(f"launcher: {describe_plan(prep.plan)}", file=sys.stderr, flush=True)


def report_environment(events: Events) -> None:
    import importlib.metadata

    import jax

    events.emit(
        protocol.EVENT_ENVIRONMENT,
        tunix_version=importlib.metadata.version("google-tunix"),
        jax_version=jax.__version__,
        jaxlib_version=importlib.metadata.version("jaxlib"),
        platform=jax.devices()[0].platform,
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES")
        or os.environ.get("TPU_VISIBLE_CHIPS")
        or "all",
    )


def resume_from_parent(config: dict, prep, events: Events, subfolder: str = "") -> int | None:
    """Seed this run's checkpoint folder from its parent's; the step resumed from. The
    data repeats as needed, so a resumed run trains to its max_steps whatever the parent's
    epochs were; the event says what it will train. Every method resumes here: GRPO's
    step folders are in the `subfolder` its trainer writes (protocol.checkpoint_folder)."""
    parent = config["resume"].get("checkpoint_dir")
    if not parent:
        return None
    total_steps = prep.total_steps
    own = Path(config["output"]["checkpoint_dir"])
    resumed_from = seed_from_parent(Path(parent) / subfolder, own / subfolder)
    if resumed_from >= total_steps:
        raise LaunchError(
            f"nothing to train: the checkpoint is at step {resumed_from} "
            f"and the run stops at step {total_steps}"
        )
    # Methods other than SFT prepare no plan: their epochs are then counted in steps.
    per_epoch = (getattr(prep, "plan", None) or {}).get("batches_per_epoch") or 1
    events.emit(
        protocol.EVENT_RESUMED,
        from_step=resumed_from,
        to_step=total_steps,
        steps=total_steps - resumed_from,
        from_epoch=round(resumed_from / per_epoch, 2),
        to_epoch=round(total_steps / per_epoch, 2),
    )
    return resumed_from


def mesh_shape(mesh: dict | None, device_count: int, batch_size: int = 0) -> tuple[int, int]:
    """(fsdp, tp) from the run's settings: fsdp 0 takes every device tp leaves. Their
    product must be the number of devices the run's slot gave it, and the batch is split
    over the data axis, so fsdp must divide it."""
    mesh = mesh or {}
    tp = int(mesh.get("tp") or 1)
    fsdp = int(mesh.get("fsdp") or 0) or device_count // tp
    if fsdp < 1 or fsdp * tp != device_count:
        raise LaunchError(
            f"the mesh fsdp={mesh.get('fsdp') or 'all'} x tp={tp} needs "
            f"{max(fsdp, 1) * tp} devices; this run's slot has {device_count}"
        )
    if batch_size and batch_size % fsdp:
        raise LaunchError(
            f"the batch size ({batch_size}) must be a multiple of the mesh's data/FSDP "
            f"parallelism ({fsdp}) to split evenly over its devices"
        )
    return fsdp, tp


def build_mesh(mesh: dict | None = None, batch_size: int = 0):
    import jax

    devices = jax.devices()
    # Auto axes: Tunix's models rely on sharding propagation, which fails on
    # the Explicit axes that jax.make_mesh now creates by default.
    return jax.make_mesh(
        mesh_shape(mesh, len(devices), batch_size),
        ("fsdp", "tp"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def load_model(config: dict, prep: Prepared, mesh):
    """The base model from its safetensors (fp32, or bf16 under LoRA when compute_dtype is
    bf16), with fp32 LoRA weights applied when enabled."""
    import jax
    import jax.numpy as jnp
    import qwix
    from flax import nnx
    from tunix.sft import utils as sft_utils

    family, lora = config["model"]["family"], config["lora"]
    dtypes = weight_dtypes(config["training"]["compute_dtype"], bool(lora.get("enabled")))
    model_config, params_lib = build_model_config(family, prep.hf)
    model = params_lib.create_model_from_safe_tensors(
        str(prep.model_dir), model_config, mesh, dtype=jnp.dtype(dtypes["base_weights"])
    )
    if not lora.get("enabled"):
        return model
    provider = lora_provider(lora["module_path"], lora["rank"], lora["alpha"])
    model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(config["training"]["seed"]), **model.get_model_input()
    )
    if not sft_utils.is_lora_enabled(model):
        raise LaunchError(
            f"lora.module_path {lora['module_path']!r} matches no module of the {family} model"
        )
    lora_to_fp32(model)
    if len(mesh.devices.flat) > 1:
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model


def build_training_config(config: dict, total_steps: int):
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies
    from tunix.sft import metrics_logger, peft_trainer

    t, output = config["training"], config["output"]
    accumulation = t["gradient_accumulation_steps"]
    log_dir = output["tensorboard_dir"]
    return peft_trainer.TrainingConfig(
        # Tunix needs a number; without one, evaluate only before and after.
        eval_every_n_steps=t["eval_every_n_steps"] or total_steps + 1,
        max_steps=total_steps,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
        checkpoint_root_directory=output["checkpoint_dir"],
        checkpointing_options=ocp.CheckpointManagerOptions(
            # Orbax's default policy also saves the very first step; only
            # every N steps here (Tunix itself adds the final step).
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(t["checkpoint_every_n_steps"] or total_steps),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            # Old checkpoints are pruned by the monitor, which keeps the best one too.
            max_to_keep=None,
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


def final_eval(trainer) -> None:
    """Evaluate the final weights unless the loop just did."""
    if trainer.last_eval_step != trainer.train_steps:
        trainer._run_eval()


def train(config: dict, prep: Prepared, events: Events, started: float) -> dict:
    import jax
    import numpy as np

    report_environment(events)
    t = config["training"]
    random.seed(t["seed"])
    np.random.seed(t["seed"])
    total_steps = prep.total_steps
    checkpoint_dir = Path(config["output"]["checkpoint_dir"])
    resumed_from = resume_from_parent(config, prep, events)
    report_numerics(config, prep, events)
    order = list(range(len(prep.eval_examples)))
    eval_batches = list(make_batches(prep.eval_examples, t["batch_size"], prep.seq_len, order))
    mesh = build_mesh(t.get("mesh"), t["batch_size"])
    fsdp, tp = mesh.devices.shape
    events.emit(protocol.EVENT_ENVIRONMENT, mesh=f"fsdp={fsdp},tp={tp}")
    # Tunix's trainer finds the mesh through the legacy `with mesh:` context
    # (pxla.thread_resources); jax.set_mesh alone would leave its inputs unsharded.
    warnings.filterwarnings(
        "ignore", message=".*`with mesh:` context manager", category=DeprecationWarning
    )
    with mesh:
        model = load_model(config, prep, mesh)
        monitor = Monitor(
            events,
            total_steps,
            checkpoint_dir,
            Path(config["output"]["dir"]),
            known_steps=[resumed_from] if resumed_from else [],
            keep=t["max_checkpoints_to_keep"],
        )
        # Registered before the trainer's own TensorBoard listener, so a NaN
        # loss aborts the run before it is written anywhere.
        jax.monitoring.register_scalar_listener(monitor.on_scalar)
        trainer = make_trainer_class()(
            model,
            build_optimizer(t, total_steps),
            build_training_config(config, total_steps),
        )
        trainer.eval_batches, trainer.events = eval_batches, events
        trainer = trainer.with_gen_model_input_fn(model_inputs).with_loss_fn(loss_fn)
        trainer.with_training_hooks(make_hooks(events, final_eval))
        events.enter(protocol.PHASE_COMPILING)
        # A truthy eval_ds makes Tunix call the (replaced) evaluation.
        trainer.train(prep.train_ds, eval_batches or None)

    monitor.report_checkpoints()
    events.enter(protocol.PHASE_DONE)
    return _summary(trainer.train_steps, prep, monitor, checkpoint_dir, started)


def _summary(done: int, prep: Prepared, monitor: Monitor, checkpoint_dir: Path, started) -> dict:
    steps = complete_steps(checkpoint_dir)
    summary = {
        "steps": done,
        "total_steps": prep.total_steps,
        "first_loss": monitor.first_loss,
        "final_loss": monitor.final_loss,
        "eval_loss": monitor.eval_loss,
        "checkpoint_step": steps[-1] if steps else None,
        "seconds": round(time.monotonic() - started, 3),
        "plan": prep.plan,
    }
    if done < prep.total_steps:
        summary["stopped_early"] = f"the data ran out after {done} of {prep.total_steps} steps"
    return summary
