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


def row_turns(row: dict, fmt: str) -> tuple[list[tuple[str, str]], str]:
    """(turns before the answer, the answer) of one row, before any chat template."""
    if fmt == "prompt_completion":
        return [("user", row["prompt"])], row["completion"]
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


def render_row(row: dict, fmt: str, family: str, template: Template | None = None) -> dict:
    """The exact training text of a row: {prompt, completion, segments}. `completion` is the
    last assistant turn; `segments` lists every (text, trained) part, earlier assistant
    turns trained too."""
    segments = (template or Template(family)).segments(row_messages(row, fmt))
    prompt, completion = protocol.split_segments(segments)
    return {"prompt": prompt, "completion": completion, "segments": segments}


def rendered_lines(
    rows: Iterable[dict], fmt: str, family: str, template: Template | None = None
) -> Iterator[str]:
    """The rendered training text, line by line (what export serves)."""
    for row in rows:
        yield json.dumps(render_row(row, fmt, family, template)) + "\n"


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
        texts = [r["prompt"] for r in pending] + [r["completion"] for r in pending]
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
        pending.append(render_row(row, fmt, family, template))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return stats
