"""Scoring generated answers against references. Standard library only: the launcher's
evaluation uses it, and so can the web side or a reward function (the GRPO rewards of
runs/launcher/rewards.py are meant to share `extract_answer` with this module: one answer
extraction, not two).

Metrics, each in [0, 1] per row:
- answer_match: the final answer extracted from both texts is the same (reasoning traces);
- exact_match: the normalised texts are equal;
- token_f1: F1 over the normalised word tokens (SQuAD style);
- preference_accuracy (preference pairs, no generation): the model gives the chosen answer a
  higher summed log-probability than the rejected one.
"""

import re
import string
from collections import Counter

# "Final answer: 42", "The answer is 42", "#### 42" (GSM8K), a \boxed{42}.
_ANSWER_PATTERNS = (
    re.compile(r"final answer\s*[:：]\s*(.+)", re.I),
    re.compile(r"\\boxed\{([^}]*)\}"),
    re.compile(r"####\s*(.+)"),
    re.compile(r"the answer is\s*[:：]?\s*(.+)", re.I),
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# Which metrics apply to which dataset format (runs.models.Dataset.Format values).
FORMAT_METRICS = {
    "reasoning": ("answer_match", "token_f1"),
    "prompt_completion": ("exact_match", "token_f1"),
    "messages": ("exact_match", "token_f1"),
    "preference": ("preference_accuracy",),
}


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _canonical_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = numbers[0].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def extract_answer(text: str) -> str | None:
    """The final answer a text states, normalised; a number when the answer holds one.
    Falls back to the last number in the text; None when there is nothing to extract."""
    for pattern in _ANSWER_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            answer = matches[-1].strip().splitlines()[0] if matches[-1].strip() else ""
            number = _canonical_number(answer)
            return number if number is not None else normalize(answer) or None
    numbers = _NUMBER.findall(text)
    if numbers:
        return _canonical_number(numbers[-1])
    return None


def answer_match(output: str, reference: str) -> float:
    expected = extract_answer(reference)
    return float(expected is not None and extract_answer(output) == expected)


def exact_match(output: str, reference: str) -> float:
    return float(normalize(output) == normalize(reference))


def token_f1(output: str, reference: str) -> float:
    predicted, expected = normalize(output).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


METRICS = {"answer_match": answer_match, "exact_match": exact_match, "token_f1": token_f1}


def score(output: str, reference: str, fmt: str) -> dict[str, float]:
    """Every metric of the format; the first one is the row's headline score."""
    return {name: METRICS[name](output, reference) for name in FORMAT_METRICS.get(fmt, ())}


def headline(fmt: str) -> str:
    return FORMAT_METRICS.get(fmt, ("exact_match",))[0]


def preference_scores(chosen_logp: float, rejected_logp: float) -> dict[str, float]:
    """A preference row's scores: 1.0 when the chosen answer is the likelier one (a tie is
    no preference), so the row classifies as better/worse/still right/still wrong."""
    return {"preference_accuracy": float(chosen_logp > rejected_logp)}


def preference_accuracy(pairs: list[tuple[float, float]]) -> float:
    """The share of (chosen logp, rejected logp) pairs whose chosen answer is the likelier."""
    if not pairs:
        return 0.0
    return sum(preference_scores(c, r)["preference_accuracy"] for c, r in pairs) / len(pairs)
