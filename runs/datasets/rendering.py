"""Rows into training text: each row's turns rendered with the model family's chat
template ({prompt, completion}, the prompt masked from the loss), and length statistics of
the rendered text. Standard library only, like `validation`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runs.datasets.validation import RowError
from runs.protocol import CHAT_TEMPLATES


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


def render_row(row: dict, fmt: str, family: str) -> dict[str, str]:
    """The exact {prompt, completion} text the launcher trains on (prompt is masked)."""
    turns, answer = row_turns(row, fmt)
    prompt, completion = CHAT_TEMPLATES[family].render(turns, answer)
    return {"prompt": prompt, "completion": completion}


def rendered_lines(rows: Iterable[dict], fmt: str, family: str) -> Iterator[str]:
    """The training JSONL, line by line: what the launcher reads and what export serves."""
    for row in rows:
        yield json.dumps(render_row(row, fmt, family)) + "\n"


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
    prompts: Counter = field(default_factory=Counter)  # prompt length -> rows

    def truncated(self, max_len: int) -> int:
        """Rows longer than max_len: the launcher cuts them to max_len."""
        return sum(n for length, n in self.totals.items() if length > max_len)

    def dropped(self, max_len: int) -> int:
        """Rows whose prompt alone fills max_len: no answer token is left to learn from,
        so the launcher drops them."""
        return sum(n for length, n in self.prompts.items() if length >= max_len)

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
) -> LengthStats:
    """Render rows with the family's template and count their prompt and completion: every
    row, or every `every`-th one (an evenly spaced sample when counting is slow)."""
    stats = LengthStats(unit=unit, every=every)
    pending: list[dict[str, str]] = []

    def flush() -> None:
        texts = [r["prompt"] for r in pending] + [r["completion"] for r in pending]
        lengths = count(texts)
        half = len(pending)
        for p, c in zip(lengths[:half], lengths[half:], strict=True):
            stats.totals[p + c] += 1
            stats.prompts[p] += 1
        stats.rows += half
        pending.clear()

    for n, row in enumerate(rows):
        if n % every:
            continue
        pending.append(render_row(row, fmt, family))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return stats
