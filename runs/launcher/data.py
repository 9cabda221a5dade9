"""Rows to batches: read the rendered rows, split, tokenize, pad and batch them."""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from runs import protocol
from runs.launcher.events import LaunchError


def read_jsonl(path: Path, accepts, refusal: str) -> list[dict]:
    """The rendered rows of a training file, one JSON value a line: each must pass `accepts`,
    else the launch fails with "dataset line N " + `refusal`. Blank lines are skipped."""
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
            if not accepts(row):
                raise LaunchError(f"dataset line {number} {refusal}")
            rows.append(row)
    if not rows:
        raise LaunchError(f"dataset file {path} holds no rows")
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows of the training file: {"messages": [...]} conversations (what the web side
    writes), or {"prompt", "completion"} text already rendered (prompt masked)."""
    return read_jsonl(
        path,
        lambda row: _is_conversation(row) or _is_rendered(row),
        "is neither a conversation ('messages' ending with an assistant turn) nor an object "
        "with string 'prompt' and 'completion'",
    )


def read_fields(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """The rendered rows, each an object with these string fields (DPO, GRPO, evaluation)."""
    fields = ", ".join(f"'{k}'" for k in keys)
    return read_jsonl(
        path,
        lambda row: isinstance(row, dict) and all(isinstance(row.get(k), str) for k in keys),
        f"is not an object with string {fields}",
    )


def _is_conversation(row) -> bool:
    messages = row.get("messages") if isinstance(row, dict) else None
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
            for m in messages
        )
        and messages[-1]["role"] == "assistant"
    )


def _is_rendered(row) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("prompt"), str)
        and isinstance(row.get("completion"), str)
    )


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split: the same seed always holds out the same rows. The
    seed is derived from the dataset (protocol.split_seed), so runs share held-out rows."""
    _, n_eval = protocol.split_sizes(len(rows), eval_fraction)
    if not n_eval:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [
        r for i, r in enumerate(rows) if i in held
    ]


@dataclass
class Renderer:
    """Renders rows with the checkpoint's chat template, or the family's built-in one."""

    family: str
    template: str | None = None
    tokens: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.template:
            return "the checkpoint's own chat_template"
        return protocol.BUILTIN_TEMPLATE_NAMES[self.family]

    def segments(self, row: dict) -> list:
        if "messages" in row:
            try:
                return protocol.render_chat(
                    self.family, row["messages"], self.template, self.tokens
                )
            except protocol.TemplateError as exc:
                raise LaunchError(f"the checkpoint's chat template failed: {exc}") from None
        return [(row["prompt"], False), (row["completion"], True)]


@dataclass
class Tokenized:
    """Training examples and how each row fared against max_seq_length."""

    examples: list = field(default_factory=list)
    fit: int = 0
    prompt_cut: int = 0  # the prompt lost its start to make room
    long_dropped: int = 0  # the last answer alone did not fit: dropped
    long_kept: int = 0  # ... kept, cut at the end
    empty: int = 0  # nothing left to learn from

    def counts(self) -> dict:
        return {
            "fit": self.fit,
            "prompt_truncated": self.prompt_cut,
            "long_completion_dropped": self.long_dropped,
            "long_completion_kept": self.long_kept,
            "no_trained_tokens": self.empty,
        }


def _encode(tokenizer, segments: list) -> tuple[list[int], list[int], int]:
    """(ids, loss mask, tokens of the last trained segment and after), from the whole
    text at once so that token boundaries are the tokenizer's own; a token is trained
    when it starts inside a trained segment."""
    text, spans, at = "", [], 0
    for chunk, trained in segments:
        if trained:
            spans.append((at, at + len(chunk)))
        text += chunk
        at += len(chunk)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ids, mask = list(encoding.ids), []
    for start, _ in encoding.offsets:
        mask.append(int(any(a <= start < b for a, b in spans)))
    last_start = spans[-1][0] if spans else len(text)
    tail = sum(1 for start, _ in encoding.offsets if start >= last_start)
    return ids, mask, tail


def _keep_answer_start(ids, mask, tail, max_len, has_bos):
    """A row whose answer alone is too long: (BOS,) the end of its prompt (at most half
    the window) and the start of its answer."""
    head = 1 if has_bos else 0
    start = len(ids) - tail
    context = min(start - head, (max_len - head) // 2)
    keep = range(start - context, start - context + max_len - head)
    return ids[:head] + [ids[i] for i in keep], mask[:head] + [mask[i] for i in keep]


def tokenize_rows(
    rows: list, tokenizer, max_seq_length: int, renderer: Renderer, keep_long: bool = False
) -> Tokenized:
    """Tokenize rows, truncating from the left: a row too long loses the start of its
    prompt (keeping a leading BOS) so that its answer and end-of-turn token survive. A row
    whose last answer alone does not fit is dropped, or kept with its answer cut
    (keep_long: the end of the prompt and the start of the answer)."""
    out = Tokenized()
    bos = {tokenizer.token_to_id(t) for t in ("<|begin_of_text|>", "<bos>")} - {None}
    for row in rows:
        ids, mask, tail = _encode(tokenizer, renderer.segments(row))
        if len(ids) <= max_seq_length:
            out.fit += 1
        elif tail > max_seq_length:
            if not keep_long:
                out.long_dropped += 1
                continue
            out.long_kept += 1
            ids, mask = _keep_answer_start(ids, mask, tail, max_seq_length, ids[0] in bos)
        else:
            out.prompt_cut += 1
            # The BOS stays unless the answer needs its place too.
            head = 1 if ids[0] in bos and tail < max_seq_length else 0
            keep = max_seq_length - head
            ids, mask = ids[:head] + ids[-keep:], mask[:head] + mask[-keep:]
        # The loss predicts token t from tokens < t, so a row needs a trained token
        # after position 0 to contribute anything.
        if not any(mask[1:]):
            out.empty += 1
            continue
        out.examples.append((ids, mask))
    return out


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
    """Epochs of shuffled batches, reproducible from the seed, repeated until `steps`
    batches were yielded (max_steps wins: the data repeats as needed).

    Tunix resumes by replaying the iterator and skipping the batches already
    trained, so every pass must yield the same batches in the same order.
    """

    def __init__(self, examples, batch_size, seq_len, steps, seed):
        self.examples, self.batch_size, self.seq_len = examples, batch_size, seq_len
        self.steps, self.seed = steps, seed

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def __iter__(self):
        yielded, epoch = 0, 0
        while yielded < self.steps:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1000 + epoch).shuffle(order)
            for batch in make_batches(self.examples, self.batch_size, self.seq_len, order):
                if yielded >= self.steps:
                    return
                yielded += 1
                yield batch
            epoch += 1


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
