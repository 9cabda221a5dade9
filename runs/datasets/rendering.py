"""Rows into conversations and training text. The training file the launcher reads holds
each row as a conversation ({"messages": [...]}, `training_lines`); the launcher renders it
with the checkpoint's own chat template or the family's built-in one (runs.protocol), and
so does the preview here (`render_row`): every assistant turn is trained, the rest masked.
Also length statistics of the rendered text. Standard library only, like `validation`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runs import protocol
from runs.datasets.validation import RowError

# The dataset formats each method can train on, and why the others cannot.
METHOD_FORMATS = {
    "sft": ("reasoning", "prompt_completion", "messages", "prompt_answer"),
    "dpo": ("preference",),
    "orpo": ("preference",),
    "grpo": ("reasoning", "prompt_completion", "messages", "prompt_answer"),
}
METHOD_NEEDS = {
    "sft": "SFT needs a prompt and its answer; preference pairs are for DPO and ORPO.",
    "dpo": "DPO needs preference pairs: a prompt with a chosen and a rejected answer.",
    "orpo": "ORPO needs preference pairs: a prompt with a chosen and a rejected answer.",
    "grpo": "GRPO needs a prompt and a reference answer; preference pairs have no single one.",
}


def format_fits(method: str, fmt: str) -> bool:
    return fmt in METHOD_FORMATS.get(method, ())


def default_method(fmt: str) -> str:
    """The method a dataset page previews a format with."""
    return "dpo" if fmt == "preference" else "sft"


def _prompt_turns(prompt: str | list) -> list[tuple[str, str]]:
    if isinstance(prompt, str):
        return [("user", prompt)]
    return [(m["role"], m["content"]) for m in prompt]


def _response(value: str | list) -> str:
    return value if isinstance(value, str) else value[0]["content"]


def row_turns(row: dict, fmt: str) -> tuple[list[tuple[str, str]], str]:
    """(turns before the answer, the answer) of one row, before any chat template. For a
    preference pair, the answer is the chosen one."""
    if fmt == "prompt_completion":
        return [("user", row["prompt"])], row["completion"]
    if fmt == "prompt_answer":
        return [("user", row["prompt"])], row["answer"]
    if fmt == "preference":
        return _prompt_turns(row["prompt"]), _response(row["chosen"])
    if fmt == "reasoning":
        steps = sorted(row["steps"], key=lambda s: s["i"])
        lines = [f"Step {s['i']} ({s['type']}): {s['content']}" for s in steps]
        lines.append(f"Final answer: {row['final_answer']}")
        return [("user", row["prompt"])], "\n".join(lines)
    if fmt == "messages":
        messages = row["messages"]
        return [(m["role"], m["content"]) for m in messages[:-1]], messages[-1]["content"]
    raise RowError(f"unknown format '{fmt}'")


def row_messages(row: dict, fmt: str) -> list[dict[str, str]]:
    """The row as a conversation ending with the assistant's answer."""
    turns, answer = row_turns(row, fmt)
    return [{"role": r, "content": t} for r, t in turns] + [
        {"role": "assistant", "content": answer}
    ]


@dataclass(frozen=True)
class Template:
    """Which chat template renders: a checkpoint's own (Jinja) or the family's built-in."""

    family: str
    source: str | None = None  # the checkpoint's chat_template, if it has one
    tokens: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.source:
            return "the checkpoint's own chat_template"
        return protocol.BUILTIN_TEMPLATE_NAMES[self.family]

    def segments(self, messages: list[dict]) -> list[protocol.Segment]:
        try:
            return protocol.render_chat(self.family, messages, self.source, self.tokens)
        except protocol.TemplateError as exc:
            raise RowError(f"the checkpoint's chat template failed: {exc}") from None


def reference_of(row: dict, fmt: str) -> str:
    """A row's reference for GRPO's rewards: the final answer, the answer, or the whole
    completion (the reward extracts the answer from it when it is in the answer format)."""
    if fmt == "reasoning":
        return row["final_answer"]
    if fmt == "prompt_answer":
        return row["answer"]
    return row_turns(row, fmt)[1]


def render_row(
    row: dict, fmt: str, family: str, template: Template | None = None, method: str = "sft"
) -> dict:
    """The exact training text of a row. SFT: {prompt, completion, segments}; `completion` is
    the last assistant turn; `segments` lists every (text, trained) part, earlier assistant
    turns trained too. DPO/ORPO: {prompt, chosen, rejected}. GRPO: {prompt, answer} (the
    model writes the completion; `answer` is the reference its rewards compare with)."""
    if not format_fits(method, fmt):
        raise RowError(METHOD_NEEDS.get(method, f"unknown method '{method}'"))
    template = template or Template(family)
    messages = row_messages(row, fmt)
    segments = template.segments(messages)
    prompt, completion = protocol.split_segments(segments)
    if method in ("dpo", "orpo"):
        rejected_chat = messages[:-1] + [
            {"role": "assistant", "content": _response(row["rejected"])}
        ]
        rejected = protocol.split_segments(template.segments(rejected_chat))[1]
        return {"prompt": prompt, "chosen": completion, "rejected": rejected}
    if method == "grpo":
        return {"prompt": prompt, "answer": reference_of(row, fmt)}
    return {"prompt": prompt, "completion": completion, "segments": segments}


def rendered_lines(
    rows: Iterable[dict],
    fmt: str,
    family: str,
    template: Template | None = None,
    method: str = "sft",
) -> Iterator[str]:
    """The rendered training text, line by line (what export serves; for DPO, ORPO and GRPO
    also what the launcher reads)."""
    for row in rows:
        yield json.dumps(render_row(row, fmt, family, template, method)) + "\n"


def training_lines(rows: Iterable[dict], fmt: str) -> Iterator[str]:
    """The training file the launcher reads: one conversation per line."""
    for row in rows:
        yield json.dumps({"messages": row_messages(row, fmt)}) + "\n"


# --- length statistics ------------------------------------------------------------------

Counter_ = Callable[[list[str]], list[int]]


def count_characters(texts: list[str]) -> list[int]:
    return [len(text) for text in texts]


def token_counter(tokenizer: Any) -> Counter_:
    """Count tokens the way the launcher does: prompt and completion encoded separately,
    with no special tokens added (the chat template's markers are in the text)."""

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return count


@dataclass
class LengthStats:
    """Lengths of the rendered rows, kept as counts per length: exact for any cut-off, and
    small however many rows there are (memory grows with distinct lengths, not rows)."""

    unit: str  # "tokens" or "characters"
    rows: int = 0  # rows measured
    every: int = 1  # 1: every row was measured; k: every k-th row (a sample)
    totals: Counter = field(default_factory=Counter)  # prompt + completion length -> rows
    completions: Counter = field(default_factory=Counter)  # last answer's length -> rows

    def truncated(self, max_len: int) -> int:
        """Rows longer than max_len: the launcher cuts their prompt from the left."""
        return sum(n for length, n in self.totals.items() if length > max_len)

    def dropped(self, max_len: int) -> int:
        """Rows whose last answer alone does not fit max_len: the launcher drops them (or,
        with long_completions=keep, keeps the answer's start)."""
        return sum(n for length, n in self.completions.items() if length > max_len)

    def percentile(self, q: float) -> int:
        if not self.rows:
            return 0
        rank = max(1, round(q * self.rows))
        seen = 0
        for length in sorted(self.totals):
            seen += self.totals[length]
            if seen >= rank:
                return length
        return max(self.totals)

    def histogram(self, bins: int = 20) -> list[tuple[int, int, int]]:
        """(start, end, rows) for equal-width bins from the shortest to the longest row;
        end is exclusive."""
        if not self.rows:
            return []
        shortest, longest = min(self.totals), max(self.totals)
        width = max(1, -(-(longest - shortest + 1) // bins))
        counts = [0] * bins
        for length, n in self.totals.items():
            counts[(length - shortest) // width] += n
        while counts[-1] == 0:
            counts.pop()
        return [(shortest + i * width, shortest + (i + 1) * width, c) for i, c in enumerate(counts)]


def measure_lengths(
    rows: Iterable[dict],
    fmt: str,
    family: str,
    *,
    count: Counter_ = count_characters,
    unit: str = "characters",
    every: int = 1,
    batch: int = 512,
    template: Template | None = None,
) -> LengthStats:
    """Render rows with the chat template and count their prompt and last answer: every
    row, or every `every`-th one (an evenly spaced sample when counting is slow)."""
    stats = LengthStats(unit=unit, every=every)
    pending: list[dict[str, str]] = []

    def flush() -> None:
        # A preference pair is measured with its chosen answer (the rejected one is cut to
        # the same length budget).
        texts = [r["prompt"] for r in pending] + [
            r.get("completion", r.get("chosen", "")) for r in pending
        ]
        lengths = count(texts)
        half = len(pending)
        for p, c in zip(lengths[:half], lengths[half:], strict=True):
            stats.totals[p + c] += 1
            stats.completions[c] += 1
        stats.rows += half
        pending.clear()

    for n, row in enumerate(rows):
        if n % every:
            continue
        pending.append(render_row(row, fmt, family, template, default_method(fmt)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return stats
