"""DPO and ORPO: Tunix's DPOTrainer on {prompt, chosen, rejected} rows.

DPO keeps a frozen reference (the starting model without this run's LoRA); ORPO needs none.
Prompts are left-padded and answers right-padded to one static shape, so the run compiles
once; a pair longer than max_seq_length is cut (the prompt from its start, the answers at
their end) and counted.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runs import protocol
from runs.launcher.checkpoints import complete_steps
from runs.launcher.data import read_fields, split_rows
from runs.launcher.events import Events, LaunchError
from runs.launcher.methods import common
from runs.launcher.models import read_hf_config, resolve_model_dir
from runs.launcher.monitor import Monitor, make_hooks


@dataclass
class Prepared:
    model_dir: Path
    hf: dict
    pad: int
    train_pairs: list
    eval_pairs: list
    prompt_len: int
    response_len: int
    total_steps: int
    truncated: int


def prepare(config: dict) -> Prepared:
    """Read and tokenize the pairs: no JAX, so bad input fails fast."""
    from tokenizers import Tokenizer

    model_cfg, t = config["model"], config["training"]
    model_dir = resolve_model_dir(model_cfg)
    hf = read_hf_config(model_dir, model_cfg["family"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rows = read_fields(Path(config["dataset"]["path"]), ("prompt", "chosen", "rejected"))
    split_seed = config["dataset"].get("split_seed", t["seed"])
    train_rows, eval_rows = split_rows(rows, config["dataset"]["eval_fraction"], split_seed)

    def encode(row):
        ids = [
            tokenizer.encode(row[k], add_special_tokens=False).ids
            for k in ("prompt", "chosen", "rejected")
        ]
        return tuple(ids)

    train_pairs = [encode(r) for r in train_rows]
    eval_pairs = [encode(r) for r in eval_rows]
    pairs = train_pairs + eval_pairs
    try:
        prompt_len, response_len, truncated = protocol.preference_lengths(
            [len(p) for p, _, _ in pairs],
            [max(len(c), len(r)) for _, c, r in pairs],
            t["max_seq_length"],
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    if truncated:
        print(
            f"launcher: {truncated} pairs cut to {prompt_len} prompt and {response_len} "
            f"answer tokens (max_seq_length={t['max_seq_length']})",
            file=sys.stderr,
        )
    vocab = hf["vocab_size"]
    if max(max(max(x, default=0) for x in pair) for pair in train_pairs) >= vocab:
        raise LaunchError(f"tokenizer produced an id outside the vocabulary of {vocab}")
    per_epoch = -(-len(train_pairs) // t["batch_size"])
    data_steps = per_epoch * t["num_epochs"]
    pad = hf.get("pad_token_id") if isinstance(hf.get("pad_token_id"), int) else 0
    return Prepared(
        model_dir=model_dir,
        hf=hf,
        pad=pad,
        train_pairs=train_pairs,
        eval_pairs=eval_pairs,
        prompt_len=prompt_len,
        response_len=response_len,
        total_steps=min(t["max_steps"], data_steps) if t["max_steps"] else data_steps,
        truncated=truncated,
    )


def _batch(pairs: list, order: list, prep: Prepared):
    import numpy as np
    from tunix.sft.dpo import dpo_trainer

    columns = {k: [] for k in ("prompt", "chosen", "rejected")}
    masks = {k: [] for k in columns}
    for index in order:
        for key, ids in zip(columns, pairs[index], strict=True):
            left = key == "prompt"
            length = prep.prompt_len if left else prep.response_len
            padded, mask = common.pad_to(ids, length, prep.pad, left=left)
            columns[key].append(padded)
            masks[key].append(mask)
    arrays = {k: np.asarray(v, dtype=np.int32) for k, v in columns.items()}
    mask_arrays = {k: np.asarray(v, dtype=np.int32) for k, v in masks.items()}
    return dpo_trainer.TrainingInput(
        prompt_ids=arrays["prompt"],
        prompt_mask=mask_arrays["prompt"],
        chosen_ids=arrays["chosen"],
        chosen_mask=mask_arrays["chosen"],
        rejected_ids=arrays["rejected"],
        rejected_mask=mask_arrays["rejected"],
    )


class PairBatches:
    """Epochs of shuffled pair batches, the same on every pass (Tunix resumes by replay)."""

    def __init__(self, prep: Prepared, batch_size: int, num_epochs: int, seed: int):
        self.prep, self.batch_size, self.num_epochs, self.seed = prep, batch_size, num_epochs, seed

    def __iter__(self):
        pairs = self.prep.train_pairs
        for epoch in range(self.num_epochs):
            order = common.epoch_order(len(pairs), self.batch_size, self.seed, epoch)
            for start in range(0, len(order), self.batch_size):
                yield _batch(pairs, order[start : start + self.batch_size], self.prep)


def _eval_batches(prep: Prepared, batch_size: int) -> list:
    pairs = prep.eval_pairs
    if not pairs:
        return []
    order = common.epoch_order(len(pairs), batch_size, 0, 0)
    return [
        _batch(pairs, order[s : s + batch_size], prep) for s in range(0, len(order), batch_size)
    ]


# long: one phase after another inside the mesh, as in runs.launcher.train.train.
def train(config: dict, prep: Prepared, events: Events, started: float) -> dict:
    import jax
    from flax import nnx
    from tunix.sft.dpo import dpo_trainer

    from runs.launcher.train import build_mesh, report_environment, resume_from_parent

    report_environment(events)
    t, method = config["training"], config["method"]
    total_steps = prep.total_steps
    checkpoint_dir = Path(config["output"]["checkpoint_dir"])
    resumed_from = resume_from_parent(config, prep, events)
    # Every evaluation sees the held-out pairs, the first after a resume too.
    eval_ds = _eval_batches(prep, t["batch_size"]) or None
    mesh = build_mesh()
    with mesh:
        base = common.create_base(config, prep.model_dir, prep.hf, mesh)
        model = common.add_lora(base, config)
        reference = None
        if method["name"] == "dpo":
            # The LoRA model shares the frozen base's arrays; without LoRA every weight
            # trains, so the reference must be a copy.
            reference = base if model is not base else nnx.clone(base)
        monitor = Monitor(
            events,
            total_steps,
            checkpoint_dir,
            Path(config["output"]["dir"]),
            known_steps=[resumed_from] if resumed_from else [],
        )
        jax.monitoring.register_scalar_listener(monitor.on_scalar)
        training_config = dpo_trainer.DPOTrainingConfig(
            algorithm=method["name"],
            beta=method.get("beta", 0.1),
            lambda_orpo=method.get("lambda_orpo", 0.1),
            eval_every_n_steps=t["eval_every_n_steps"] or total_steps + 1,
            max_steps=total_steps,
            checkpoint_root_directory=str(checkpoint_dir),
            checkpointing_options=common.checkpoint_options(t, total_steps),
            metrics_logging_options=common.logging_options(config),
            pbar_description=None,
        )
        trainer = dpo_trainer.DPOTrainer(
            model, reference, common.build_optimizer(t), training_config
        )
        trainer.with_training_hooks(make_hooks(events, lambda trainer: None))
        events.enter(protocol.PHASE_COMPILING)
        trainer.train(PairBatches(prep, t["batch_size"], t["num_epochs"], t["seed"]), eval_ds)

    monitor.report_checkpoints()
    steps = complete_steps(checkpoint_dir)
    events.enter(protocol.PHASE_DONE)
    return {
        "method": method["name"],
        "steps": trainer.train_steps,
        "first_loss": monitor.first_loss,
        "final_loss": monitor.final_loss,
        "eval_loss": monitor.eval_loss,
        "truncated_pairs": prep.truncated,
        "checkpoint_step": steps[-1] if steps else None,
        "seconds": round(time.monotonic() - started, 3),
    }
