"""Rewards for GRPO and the answer extraction they share. Standard library only.

The launcher builds Tunix reward functions from these; the web side imports the same module
for the reward dry-run (scoring a dataset's own references before any training), and the
evaluation feature reuses `extract_answer` and `answers_match`. Nothing here runs user code:
the built-in rewards are plain functions, and extra ones are Python entry points in the
`tunixrt.rewards` group that an operator installed on the worker hosts.

Every reward has the Tunix signature `fn(prompts, completions, answer, **kwargs) -> list`
(one float per completion; `answer` holds each completion's reference answer), and a
`__name__` that Tunix logs as `rewards/<name>`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ENTRY_POINT_GROUP = "tunixrt.rewards"

EXTRACTIONS = ("marker", "tags", "whole")
MATCH_MODES = ("exact", "normalized", "numeric")
# Built-in rewards: name -> (what it checks, the most it gives at weight 1).
BUILTIN_REWARDS = {
    "answer_match": ("the extracted answer equals the reference", 1.0),
    "answer_format": ("an answer can be extracted in the configured format", 1.0),
    "length_penalty": ("minus the share by which a completion exceeds the target length", 0.0),
    "reasoning_format": ("reasoning comes before the answer, and nothing after it", 1.0),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Extraction:
    """Where the answer sits in a completion: after a marker, inside tags, or the whole text."""

    mode: str = "marker"
    marker: str = "Final answer:"
    tag: str = "answer"

    def describe(self) -> str:
        if self.mode == "marker":
            return f'the text after "{self.marker}"'
        if self.mode == "tags":
            return f"the text inside <{self.tag}>...</{self.tag}>"
        return "the whole completion"

    def wrap(self, answer: str) -> str:
        """A completion that holds `answer` in this format (for references and tests)."""
        if self.mode == "marker":
            return f"{self.marker} {answer}"
        if self.mode == "tags":
            return f"<{self.tag}>{answer}</{self.tag}>"
        return answer


def _span(text: str, extraction: Extraction) -> tuple[int, int] | None:
    """(start, end) of the answer in `text`, or None when it is not there."""
    if extraction.mode == "marker":
        marker = extraction.marker
        if not marker:
            return None
        start = text.lower().rfind(marker.lower())
        if start < 0:
            return None
        begin = start + len(marker)
        newline = text.find("\n", begin)
        end = len(text) if newline < 0 else newline
        return begin, end
    if extraction.mode == "tags":
        tag = re.escape(extraction.tag)
        found = list(re.finditer(rf"<{tag}>(.*?)</{tag}>", text, re.S | re.I))
        if not found:
            return None
        return found[-1].start(1), found[-1].end(1)
    return 0, len(text)


def extract_answer(text: str, extraction: Extraction) -> str | None:
    """The answer in a completion (the last one when there are several), or None."""
    span = _span(text, extraction)
    if span is None:
        return None
    answer = text[span[0] : span[1]].strip()
    return answer or None


def reference_answer(reference: str, extraction: Extraction) -> str:
    """The answer of a reference completion: extracted when it is in the format, else the
    whole text (a plain prompt/completion pair whose completion is just the answer)."""
    return extract_answer(reference, extraction) or reference.strip()


def normalize_text(text: str) -> str:
    """Case, whitespace, surrounding quotes/markup and a final full stop do not count."""
    text = " ".join(text.casefold().split())
    text = text.strip("*`\"' ")
    return text.rstrip(".").strip()


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def parse_number(text: str) -> float | None:
    """A number written as 1,234 / $12 / 12.5% / 3/4 / -2e3, or None."""
    text = normalize_text(text).replace(",", "").replace("$", "").rstrip("%").strip()
    if "/" in text:
        top, _, bottom = text.partition("/")
        a, b = parse_number(top), parse_number(bottom)
        return a / b if a is not None and b not in (None, 0) else None
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def answers_match(predicted: str | None, reference: str, mode: str, tolerance: float) -> bool:
    """Does the predicted answer equal the reference? `numeric` compares numbers within an
    absolute tolerance and falls back to `normalized` text when either is not a number."""
    if predicted is None:
        return False
    if mode == "exact":
        return predicted.strip() == reference.strip()
    if mode == "numeric":
        a, b = parse_number(predicted), parse_number(reference)
        if a is not None and b is not None:
            return abs(a - b) <= tolerance
    return normalize_text(predicted) == normalize_text(reference)


@dataclass(frozen=True)
class RewardSettings:
    """The reward part of a run's config (built from the run's hyperparameters)."""

    extraction: Extraction
    match_mode: str = "numeric"
    tolerance: float = 1e-6
    length_target: int = 400
    weights: tuple[tuple[str, float], ...] = (("answer_match", 1.0),)

    @classmethod
    def from_config(cls, section: dict) -> RewardSettings:
        return cls(
            extraction=Extraction(
                mode=section.get("extraction", "marker"),
                marker=section.get("marker", "Final answer:"),
                tag=section.get("tag", "answer"),
            ),
            match_mode=section.get("match_mode", "numeric"),
            tolerance=float(section.get("tolerance", 1e-6)),
            length_target=int(section.get("length_target", 400)),
            weights=tuple((r["name"], float(r["weight"])) for r in section.get("rewards", [])),
        )


def _answer_match(settings: RewardSettings, completion: str, reference: str) -> float:
    predicted = extract_answer(completion, settings.extraction)
    return float(answers_match(predicted, reference, settings.match_mode, settings.tolerance))


def _answer_format(settings: RewardSettings, completion: str, reference: str) -> float:
    return float(extract_answer(completion, settings.extraction) is not None)


def _length_penalty(settings: RewardSettings, completion: str, reference: str) -> float:
    target = max(1, settings.length_target)
    return -min(1.0, max(0, len(completion) - target) / target)


def _reasoning_format(settings: RewardSettings, completion: str, reference: str) -> float:
    """Half for some reasoning (a non-empty line) before the answer, half for nothing but
    closing markup after it."""
    span = _span(completion, settings.extraction)
    if span is None or settings.extraction.mode == "whole":
        return 0.0
    before = completion[: span[0]]
    if settings.extraction.mode == "marker":
        before = before[: before.lower().rfind(settings.extraction.marker.lower())]
    else:
        before = before[: before.lower().rfind(f"<{settings.extraction.tag.lower()}>")]
    after = completion[span[1] :]
    if settings.extraction.mode == "tags":
        after = after[len(settings.extraction.tag) + 3 :]
    return 0.5 * bool(before.strip()) + 0.5 * (not after.strip())


_BUILTIN: dict[str, Callable[[RewardSettings, str, str], float]] = {
    "answer_match": _answer_match,
    "answer_format": _answer_format,
    "length_penalty": _length_penalty,
    "reasoning_format": _reasoning_format,
}


def installed_rewards() -> dict[str, object]:
    """Operator-installed reward entry points by name (not loaded)."""
    import importlib.metadata

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> list[str]:
    return list(_BUILTIN) + sorted(n for n in installed_rewards() if n not in _BUILTIN)


class RewardError(ValueError):
    pass


def _as_texts(values) -> list[str]:
    # Tunix hands numpy arrays of strings; a plain list works too.
    return [str(v) for v in values]


def build_reward(name: str, weight: float, settings: RewardSettings) -> Callable[..., list]:
    """One weighted Tunix reward function, built-in or installed, named for its metric."""
    if name in _BUILTIN:
        score = _BUILTIN[name]

        def reward(prompts, completions, answer=None, **kwargs) -> list[float]:
            refs = _as_texts(answer) if answer is not None else [""] * len(completions)
            return [weight * score(settings, c, r) for c, r in zip(completions, refs, strict=True)]

    else:
        entry = installed_rewards().get(name)
        if entry is None:
            raise RewardError(
                f"unknown reward {name!r}; available: {', '.join(available_rewards())}"
            )
        plugin = entry.load()

        def reward(prompts, completions, answer=None, **kwargs) -> list[float]:
            values = plugin(
                prompts=_as_texts(prompts),
                completions=_as_texts(completions),
                answer=_as_texts(answer) if answer is not None else None,
            )
            return [weight * float(v) for v in values]

    reward.__name__ = name
    return reward


def build_rewards(settings: RewardSettings) -> list[Callable[..., list]]:
    if not settings.weights:
        raise RewardError("GRPO needs at least one reward with a weight other than 0")
    return [build_reward(name, weight, settings) for name, weight in settings.weights]


def parse_reward_list(text: str) -> list[tuple[str, float]]:
    """'name:weight, other:0.5' (extra rewards by name) -> [(name, weight)]."""
    pairs = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, weight = part.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise RewardError(f"{name!r} is not a reward name")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise RewardError(f"the weight of {name} must be a number, not {weight!r}") from None
        if not math.isfinite(value):
            raise RewardError(f"the weight of {name} must be finite")
        pairs.append((name, value))
    return pairs


def max_reward(name: str) -> float | None:
    """The most a built-in reward gives at weight 1 (None for installed ones: unknown)."""
    return BUILTIN_REWARDS[name][1] if name in BUILTIN_REWARDS else None


def score(
    fns: Sequence[Callable[..., list]], completions: list[str], answers: list[str]
) -> dict[str, list[float]]:
    """Each reward's values for these completions (for the dry-run)."""
    prompts = [""] * len(completions)
    return {fn.__name__: list(fn(prompts, completions, answer=answers)) for fn in fns}


def wrong_answers(reference: str) -> list[str]:
    """Deliberately wrong answers for a reference: a rewarded one means broken parsing."""
    number = parse_number(reference)
    if number is not None:
        shifted = number + 1
        text = str(int(shifted)) if float(shifted).is_integer() else f"{shifted:g}"
        return [text, "I do not know"]
    return [f"not {reference.strip()}", "I do not know"]
