"""The reward dry-run: score a dataset's own references (and deliberately wrong answers)
with a GRPO run's rewards before any training. A reference that gets less than a reward's
maximum, or a wrong answer that gets it, means the answer parsing is broken and training
would burn accelerator hours on noise. Standard library only (runs.launcher.rewards)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from runs.datasets.rendering import reference_of, row_turns
from runs.launcher import rewards as rewards_lib

SHOWN_EXAMPLES = 3


def _reference_completion(row: dict, fmt: str, extraction: rewards_lib.Extraction) -> str:
    """What a perfect completion looks like: the text the dataset teaches (a reasoning
    trace ends with "Final answer: ..."); a bare prompt/answer row has only the answer, so
    it is put in the configured format."""
    if fmt == "prompt_answer":
        return extraction.wrap(row["answer"].strip())
    return row_turns(row, fmt)[1]


def reward_dry_run(rows: Iterable[dict], fmt: str, section: dict, limit: int = 200) -> dict:
    """Per reward: the distribution over references and over wrong answers, and the plain
    sentences that flag a broken extraction."""
    settings = rewards_lib.RewardSettings.from_config(section)
    fns = rewards_lib.build_rewards(settings)
    completions, answers, wrong, wrong_answers = [], [], [], []
    for n, row in enumerate(rows):
        if n >= limit:
            break
        reference = rewards_lib.reference_answer(reference_of(row, fmt), settings.extraction)
        completions.append(_reference_completion(row, fmt, settings.extraction))
        answers.append(reference)
        for bad in rewards_lib.wrong_answers(reference):
            wrong.append(settings.extraction.wrap(bad))
            wrong_answers.append(reference)
    ref_scores = rewards_lib.score(fns, completions, answers)
    wrong_scores = rewards_lib.score(fns, wrong, wrong_answers)
    report = {"rows": len(completions), "rewards": [], "warnings": []}
    for (name, weight), fn in zip(settings.weights, fns, strict=True):
        top = rewards_lib.max_reward(name)
        best = weight * top if top is not None else None
        refs, bads = ref_scores[fn.__name__], wrong_scores[fn.__name__]
        entry = {
            "name": name,
            "weight": weight,
            "max": best,
            "reference": _summary(refs),
            "wrong": _summary(bads),
        }
        report["rewards"].append(entry)
        if best is None or name in ("length_penalty", "reasoning_format"):
            continue
        short = [i for i, v in enumerate(refs) if v < best]
        if short:
            examples = "; ".join(repr(completions[i][-80:]) for i in short[:SHOWN_EXAMPLES])
            report["warnings"].append(
                f"{name}: {len(short)} of {len(refs)} reference answers get less than the "
                f"maximum {best:g}. The answer is probably not where the reward looks "
                f"({settings.extraction.describe()}), e.g. {examples}."
            )
        if name == "answer_match":
            full = [i for i, v in enumerate(bads) if v >= best]
            if full:
                examples = "; ".join(repr(wrong[i]) for i in full[:SHOWN_EXAMPLES])
                report["warnings"].append(
                    f"{name}: {len(full)} of {len(bads)} deliberately wrong answers get the "
                    f"maximum {best:g}: the comparison cannot tell them apart, e.g. {examples}."
                )
    return report


def _summary(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "min": None, "max": None, "spread": None}
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": min(values),
        "max": max(values),
        "spread": round(statistics.pstdev(values), 4),
    }
