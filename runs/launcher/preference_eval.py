"""Evaluation of preference pairs: python -m runs.launcher.evaluate on a `preference` dataset.

No generation: for the fine-tuned and the base model, the summed log-probability of the
chosen and of the rejected answer given the prompt (one forward pass each). A row scores
preference_accuracy 1.0 when the chosen answer is the likelier (runs.launcher.scoring). The
rows are those the web side rendered as DPO trains on them, {prompt, chosen, rejected}, and
the held-out split is training's (same fraction and seed).
"""

import json
from pathlib import Path

from runs import protocol
from runs.launcher.data import read_fields, split_rows
from runs.launcher.events import Events, LaunchError
from runs.launcher.scoring import headline, preference_accuracy, preference_scores

MAX_PROMPT_TOKENS = 1024
MAX_ANSWER_TOKENS = 1024


def preference_rows(dataset: dict, max_rows: int) -> list[dict]:

    rows = read_fields(Path(dataset["path"]), ("prompt", "chosen", "rejected"))
    fraction = float(dataset.get("eval_fraction") or 0)
    if fraction > 0:
        _, rows = split_rows(rows, fraction, int(dataset.get("seed", 0)))
    if not rows:
        raise LaunchError("the dataset has no evaluation rows")
    return rows[:max_rows]


def _pairs(tokenizer, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt, chosen) and (prompt, rejected) ids of every row, in that order; a long prompt
    loses its start, a long answer its end."""
    pairs = []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"])[-MAX_PROMPT_TOKENS:]
        for key in ("chosen", "rejected"):
            pairs.append((prompt, tokenizer.encode(row[key])[:MAX_ANSWER_TOKENS]))
    return pairs


def evaluate(config: dict, events: Events, reference_text) -> dict:
    """As runs.launcher.evaluate.evaluate; `reference_text` is its cut of the chosen answer."""
    from runs.launcher.train import build_mesh
    from runs.launcher.weights import TextTokenizer, answer_logps, load_base, load_trained

    source, generation = config["source"], config.get("generation") or {}
    family = source["family"]
    max_rows = int(generation.get("max_rows", 50))
    batch = max(1, int(generation.get("batch_size", 8)))
    rows = preference_rows(config["dataset"], max_rows)
    pairs = _pairs(TextTokenizer(Path(source["model_dir"]), family), rows)
    events.enter(protocol.PHASE_LOADING)
    mesh = build_mesh()
    with mesh:
        model, _, _, step = load_trained(source, mesh)
        events.enter(protocol.PHASE_EVALUATING)
        events.emit(protocol.EVENT_PROGRESS, step=0, total_steps=2)
        tuned = answer_logps(model, pairs, batch)
        events.emit(protocol.EVENT_PROGRESS, step=1, total_steps=2)
        del model
        base = answer_logps(load_base(Path(source["model_dir"]), family, mesh)[0], pairs, batch)
        events.emit(protocol.EVENT_PROGRESS, step=2, total_steps=2)
    logps = {"tuned": _paired(tuned), "base": _paired(base)}
    _write_rows(Path(config["output"]["rows"]), rows, logps, family, reference_text)
    means = {which: {headline("preference"): preference_accuracy(v)} for which, v in logps.items()}
    for which, values in means.items():
        for name, value in values.items():
            events.emit(
                protocol.EVENT_METRIC, name=f"generation/{which}/{name}", step=0, value=value
            )
    return {
        "rows": len(rows),
        "format": "preference",
        "headline": headline("preference"),
        "scores": means,
        "step": step,
        "generation": {"max_rows": max_rows},
    }


def _paired(values: list[float]) -> list[tuple[float, float]]:
    return list(zip(values[::2], values[1::2], strict=True))


def _margin_text(chosen: float, rejected: float) -> str:
    return f"chosen {chosen:.3f} - rejected {rejected:.3f} = {chosen - rejected:+.3f}"


def _write_rows(path: Path, rows, logps: dict, family: str, reference_text) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            tuned, base = logps["tuned"][index], logps["base"][index]
            record = {
                "index": index,
                "prompt": row["prompt"],
                "reference": reference_text(row["chosen"], family),
                "tuned_output": _margin_text(*tuned),
                "base_output": _margin_text(*base),
                "tuned_scores": preference_scores(*tuned),
                "base_scores": preference_scores(*base),
            }
            handle.write(json.dumps(record) + "\n")
