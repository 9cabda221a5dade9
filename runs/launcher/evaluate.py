"""Evaluation by generation: python -m runs.launcher.evaluate CONFIG.json

Generates completions for the evaluation rows with the fine-tuned weights and with the base
model, scores both against the references (runs.launcher.scoring) and writes one JSON line per
row to output.rows; the scores go out as metric events (step 0) and in the summary.

Config: {"schema", "source": {model_dir, family, checkpoint_dir, lora, ...}, "dataset": {path,
format, eval_fraction, seed}, "generation": {max_rows, batch_size, max_new_tokens, temperature,
top_p, seed}, "output": {"rows": path}}.

A `preference` dataset is scored without generation instead: runs.launcher.preference_eval.
"""

import json
import os
import sys
from pathlib import Path

from runs import protocol
from runs.launcher.data import Renderer, read_rows, split_rows
from runs.launcher.events import Events, LaunchError
from runs.launcher.generate import Generator, Settings, clip_prompt
from runs.launcher.scoring import headline, score

MAX_PROMPT_TOKENS = 1024


def eval_rows(dataset: dict, max_rows: int, renderer: Renderer) -> list[dict]:
    """The held-out split of the run's data (same fraction and seed as training), or every
    row when the fraction is 0 (another dataset); at most max_rows. Each row as
    {"prompt", "completion"}: the conversation rendered as training renders it, the prompt
    being everything before the last trained (assistant) turn."""
    rows = read_rows(Path(dataset["path"]))
    fraction = float(dataset.get("eval_fraction") or 0)
    if fraction > 0:
        _, rows = split_rows(rows, fraction, int(dataset.get("seed", 0)))
    if not rows:
        raise LaunchError("the dataset has no evaluation rows")
    rendered = []
    for row in rows[:max_rows]:
        prompt, completion = protocol.split_segments(renderer.segments(row))
        rendered.append({"prompt": prompt, "completion": completion})
    return rendered


def reference_text(completion: str, family: str) -> str:
    text = completion.rstrip("\n")
    end = protocol.END_OF_TURN[family]
    return text[: -len(end)] if text.endswith(end) else text


def _generate_all(generator, prompts: list[str], batch: int, progress) -> list[str]:
    outputs: list[str] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        # A short last batch is padded with its first prompt: one compiled batch shape.
        padded = chunk + [chunk[0]] * (batch - len(chunk))
        outputs += generator(padded)[: len(chunk)]
        progress(len(chunk))
    return outputs


def evaluate(config: dict, events: Events) -> dict:
    from runs.launcher.train import build_mesh
    from runs.launcher.weights import TextTokenizer, load_base, load_trained

    source, generation = config["source"], config.get("generation") or {}
    family, fmt = source["family"], config["dataset"].get("format", "prompt_completion")
    if fmt == "preference":
        from runs.launcher import preference_eval

        return preference_eval.evaluate(config, events, reference_text)
    settings = Settings.from_dict(generation)
    max_rows = int(generation.get("max_rows", 50))
    batch = max(1, int(generation.get("batch_size", 8)))
    template, tokens = protocol.read_chat_template(str(source["model_dir"]))
    rows = eval_rows(config["dataset"], max_rows, Renderer(family, template, tokens))
    tokenizer = TextTokenizer(Path(source["model_dir"]), family)
    prompts = [clip_prompt(tokenizer, r["prompt"], MAX_PROMPT_TOKENS) for r in rows]
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    total, done = 2 * len(rows), [0]

    def progress(n: int) -> None:
        done[0] += n
        events.emit(protocol.EVENT_PROGRESS, step=done[0], total_steps=total)

    events.enter(protocol.PHASE_LOADING)
    mesh = build_mesh()
    with mesh:
        model, model_config, _, step = load_trained(source, mesh)
        events.enter(protocol.PHASE_EVALUATING)
        progress(0)
        tuned = _generate_all(
            Generator(model, model_config, tokenizer, settings, longest), prompts, batch, progress
        )
        del model
        base_model = load_base(Path(source["model_dir"]), family, mesh)[0]
        base = _generate_all(
            Generator(base_model, model_config, tokenizer, settings, longest),
            prompts,
            batch,
            progress,
        )
    return _score_and_write(config, events, rows, tuned, base, fmt, family) | {
        "step": step,
        "generation": settings.as_dict() | {"max_rows": max_rows},
    }


def _score_and_write(config, events, rows, tuned, base, fmt, family) -> dict:
    totals: dict[str, dict[str, float]] = {"tuned": {}, "base": {}}
    path = Path(config["output"]["rows"])
    with path.open("w", encoding="utf-8") as handle:
        for index, (row, tuned_out, base_out) in enumerate(zip(rows, tuned, base, strict=True)):
            reference = reference_text(row["completion"], family)
            scores = {
                "tuned": score(tuned_out, reference, fmt),
                "base": score(base_out, reference, fmt),
            }
            for which, values in scores.items():
                for name, value in values.items():
                    totals[which][name] = totals[which].get(name, 0.0) + value
            record = {
                "index": index,
                "prompt": row["prompt"],
                "reference": reference,
                "tuned_output": tuned_out,
                "base_output": base_out,
                "tuned_scores": scores["tuned"],
                "base_scores": scores["base"],
            }
            handle.write(json.dumps(record) + "\n")
    means = {
        which: {name: value / len(rows) for name, value in values.items()}
        for which, values in totals.items()
    }
    for which, values in means.items():
        for name, value in values.items():
            events.emit(
                protocol.EVENT_METRIC, name=f"generation/{which}/{name}", step=0, value=value
            )
    return {"rows": len(rows), "format": fmt, "headline": headline(fmt), "scores": means}


def main(argv: list[str]) -> int:
    from runs.launcher.job import run_job

    return run_job(argv, evaluate, "python -m runs.launcher.evaluate CONFIG.json")


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
