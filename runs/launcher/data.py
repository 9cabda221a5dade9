"""Rows to batches: read the rendered rows, split, tokenize, pad and batch them."""

import json
import random
from pathlib import Path

from runs.launcher.events import LaunchError


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
