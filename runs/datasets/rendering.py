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


def reference_of(row: dict, fmt: str) -> str:
    """A row's reference for GRPO's rewards: the final answer, the answer, or the whole
    completion (the reward extracts the answer from it when it is in the answer format)."""
    if fmt == "reasoning":
        return row["final_answer"]
    if fmt == "prompt_answer":
        return row["answer"]
    return row_turns(row, fmt)[1]


def render_row(row: dict, fmt: str, family: str, method: str = "sft") -> dict[str, str]:
    """The exact text the launcher trains on: {prompt, completion} for SFT (prompt masked),
    {prompt, chosen, rejected} for DPO/ORPO, {prompt, answer} for GRPO (the model writes
    the completion; `answer` is the reference its rewards compare with)."""
    if not format_fits(method, fmt):
        raise RowError(METHOD_NEEDS.get(method, f"unknown method '{method}'"))
    template = CHAT_TEMPLATES[family]
    turns, answer = row_turns(row, fmt)
    prompt, completion = template.render(turns, answer)
    if method in ("dpo", "orpo"):
        rejected = template.render(turns, _response(row["rejected"]))[1]
        return {"prompt": prompt, "chosen": completion, "rejected": rejected}
    if method == "grpo":
        return {"prompt": prompt, "answer": reference_of(row, fmt)}
    return {"prompt": prompt, "completion": completion}


def rendered_lines(
    rows: Iterable[dict], fmt: str, family: str, method: str = "sft"
) -> Iterator[str]:
    """The training JSONL, line by line: what the launcher reads and what export serves."""
    for row in rows:
        yield json.dumps(render_row(row, fmt, family, method)) + "\n"


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
        # A preference pair is measured with its chosen answer (the rejected one is cut to
        # the same length budget).
        texts = [r["prompt"] for r in pending] + [
            r.get("completion", r.get("chosen", "")) for r in pending
        ]
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
        pending.append(render_row(row, fmt, family, default_method(fmt)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return stats
