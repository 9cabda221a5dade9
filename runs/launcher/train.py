"""Prepare (no JAX: bad input fails fast) and train, phase by phase."""

import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from runs import protocol
from runs.launcher.checkpoints import complete_steps, seed_from_parent
from runs.launcher.data import (
    EvalBatches,
    TrainBatches,
    make_batches,
    model_inputs,
    pick_seq_len,
    read_rows,
    split_rows,
    tokenize_rows,
)
from runs.launcher.events import Events, LaunchError, one_line
from runs.launcher.models import build_model_config, read_hf_config, resolve_model_dir
from runs.launcher.monitor import Monitor, make_hooks


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
            f"tokenizer {model_dir / 'tokenizer.json'} cannot be loaded: {one_line(exc)}"
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
    )


def resume_from_parent(config: dict, total_steps: int, events: Events) -> int | None:
    """Seed this run's checkpoint folder from its parent's; the step resumed from."""
    parent = config["resume"].get("checkpoint_dir")
    if not parent:
        return None
    resumed_from = seed_from_parent(Path(parent), Path(config["output"]["checkpoint_dir"]))
    if resumed_from >= total_steps:
        raise LaunchError(
            f"nothing to train: the checkpoint is at step {resumed_from} "
            f"and the run stops at step {total_steps}"
        )
    events.emit(protocol.EVENT_RESUMED, from_step=resumed_from)
    return resumed_from


def build_mesh():
    import jax

    devices = jax.devices()
    # Auto axes: Tunix's models rely on sharding propagation, which fails on
    # the Explicit axes that jax.make_mesh now creates by default.
    return jax.make_mesh(
        (len(devices), 1),
        ("fsdp", "tp"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def load_model(config: dict, prep: Prepared, mesh):
    """The base model from its safetensors, with LoRA applied when enabled."""
    import jax
    import qwix
    from flax import nnx
    from tunix.sft import utils as sft_utils

    family, lora = config["model"]["family"], config["lora"]
    model_config, params_lib = build_model_config(family, prep.hf)
    model = params_lib.create_model_from_safe_tensors(str(prep.model_dir), model_config, mesh)
    if not lora.get("enabled"):
        return model
    provider = qwix.LoraProvider(
        module_path=lora["module_path"], rank=lora["rank"], alpha=lora["alpha"]
    )
    model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(config["training"]["seed"]), **model.get_model_input()
    )
    if not sft_utils.is_lora_enabled(model):
        raise LaunchError(
            f"lora.module_path {lora['module_path']!r} matches no module of the {family} model"
        )
    if len(mesh.devices.flat) > 1:
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model


def build_optimizer(t: dict):
    import optax

    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=t["learning_rate"], weight_decay=t["weight_decay"]
    )


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


def make_final_eval(events: Events, monitor: Monitor, eval_batches: list):
    """Evaluate the final weights unless the loop just did."""
    import jax

    def final_eval(trainer):
        if not eval_batches or monitor.last_eval_step == trainer.train_steps:
            return
        events.enter(protocol.PHASE_EVALUATING)
        _, eval_step = trainer.jit_train_and_eval_step()
        losses = [float(jax.device_get(eval_step(b)[0])) for b in eval_batches]
        loss = sum(losses) / len(losses)
        prefix = trainer.metrics_prefix
        trainer.metrics_logger.log(prefix, "loss", loss, "eval", trainer.train_steps)
        if math.isfinite(loss) and loss < 80:
            trainer.metrics_logger.log(
                prefix, "perplexity", math.exp(loss), "eval", trainer.train_steps
            )

    return final_eval


def train(config: dict, prep: Prepared, events: Events, started: float) -> dict:
    import jax
    import numpy as np
    from tunix.sft import peft_trainer

    report_environment(events)
    t = config["training"]
    random.seed(t["seed"])
    np.random.seed(t["seed"])
    total_steps = prep.total_steps
    checkpoint_dir = Path(config["output"]["checkpoint_dir"])
    resumed_from = resume_from_parent(config, total_steps, events)
    examples = prep.eval_examples
    order = list(range(len(examples)))
    eval_batches = list(make_batches(examples, t["batch_size"], prep.seq_len, order))
    # A resumed run evaluates its starting step as well: its own curve starts there, and
    # an evaluation with no batches would only log "No eval examples found".
    eval_ds = EvalBatches(eval_batches, skip_first=False) or None
    mesh = build_mesh()
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
        )
        # Registered before the trainer's own TensorBoard listener, so a NaN
        # loss aborts the run before it is written anywhere.
        jax.monitoring.register_scalar_listener(monitor.on_scalar)
        trainer = peft_trainer.PeftTrainer(
            model, build_optimizer(t), build_training_config(config, total_steps)
        )
        trainer = trainer.with_gen_model_input_fn(model_inputs)
        trainer.with_training_hooks(
            make_hooks(events, make_final_eval(events, monitor, eval_batches))
        )
        events.enter(protocol.PHASE_COMPILING)
        trainer.train(prep.train_ds, eval_ds)

    monitor.report_checkpoints()
    steps = complete_steps(checkpoint_dir)
    events.enter(protocol.PHASE_DONE)
    return {
        "steps": trainer.train_steps,
        "first_loss": monitor.first_loss,
        "final_loss": monitor.final_loss,
        "eval_loss": monitor.eval_loss,
        "checkpoint_step": steps[-1] if steps else None,
        "seconds": round(time.monotonic() - started, 3),
    }
