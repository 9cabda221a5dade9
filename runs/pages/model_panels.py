"""What the run page shows of a trained run's evaluations and exports (reads only); the
views of runs/pages/model_views.py and the run page render it."""

from __future__ import annotations

from runs import model_files, selectors
from runs.datasets.selectors import dataset_choices
from runs.errors import NotFound
from runs.models import EvaluationRow, RunKind, RunMode, RunStatus
from runs.services.jobs import GENERATION_BOUNDS

ROWS_SHOWN = 200
JOBS_SHOWN = 10
FILTERS = (
    (EvaluationRow.Change.BETTER, "Got better"),
    (EvaluationRow.Change.WORSE, "Got worse"),
    (EvaluationRow.Change.STILL_WRONG, "Still wrong"),
)


def usable(run) -> bool:
    return run.kind == RunKind.TRAIN and run.mode == RunMode.LOCAL


def evaluation_context(user, run, *, evaluation_id=None, change: str = "") -> dict:
    """The evaluation card: the chosen (else newest) evaluation, its scores and rows."""
    jobs = list(selectors.run_jobs(run, RunKind.EVALUATE)[:JOBS_SHOWN])
    evaluation = next((j for j in jobs if str(j.id) == str(evaluation_id)), None)
    evaluation = evaluation or (jobs[0] if jobs else None)
    change = change if change in EvaluationRow.Change.values else ""
    context = {
        "run": run,
        "evaluations": jobs,
        "evaluation": evaluation,
        "change": change,
        "filters": FILTERS,
        "eval_datasets": dataset_choices(user=user),
        "eval_defaults": {k: v[0] for k, v in GENERATION_BOUNDS.items()},
        "eval_polling": evaluation is not None and evaluation.is_active,
    }
    if evaluation is not None and evaluation.status == RunStatus.COMPLETED:
        scores = selectors.evaluation_scores(evaluation)
        names = sorted(set(scores["tuned"]) | set(scores["base"]))
        context["score_rows"] = [_score_row(name, scores) for name in names]
        counts = selectors.evaluation_change_counts(evaluation)
        context["filters"] = [(value, label, counts[value]) for value, label in FILTERS]
        rows = selectors.evaluation_rows(evaluation, change=change or None)
        context["rows"] = list(rows[:ROWS_SHOWN])
        context["rows_more"] = max(0, rows.count() - ROWS_SHOWN)
        context["settings"] = evaluation.config.get("generation", {})
    return context


def _score_row(name: str, scores: dict) -> tuple:
    base, tuned = scores["base"].get(name), scores["tuned"].get(name)
    delta = tuned - base if base is not None and tuned is not None else None
    return name, base, tuned, delta


def exports_context(run) -> dict:
    jobs = list(selectors.run_jobs(run, RunKind.EXPORT)[:JOBS_SHOWN])
    for job in jobs:
        try:
            job.model_present = bool(model_files.model_path(job.name))
        except NotFound:
            job.model_present = False
    return {
        "run": run,
        "exports": jobs,
        "exports_polling": any(job.is_active for job in jobs),
    }


def panel_context(user, run) -> dict:
    """What the run page adds for a local training run (nothing for other runs)."""
    if not usable(run) or run.status != RunStatus.COMPLETED:
        return {}
    return (
        {"model_panels": True}
        | evaluation_context(user, run)
        | exports_context(run)
        | playground_context(run)
    )


PROMPTS_SHOWN = 20


def playground_context(run) -> dict:
    """The playground card: the settings' defaults and the run's earlier prompts."""
    prompts = list(selectors.run_prompts(run)[:PROMPTS_SHOWN])
    return {
        "prompts": prompts,
        "prompt_defaults": {k: v[0] for k, v in GENERATION_BOUNDS.items() if k != "max_rows"},
        # The host's generation server has this run's models when an earlier prompt was
        # answered recently; otherwise the first prompt loads and compiles.
        "warm": any(p.status == "done" for p in prompts[:1]),
    }


def playground_prompt(run, record) -> dict:
    return {"run": run, "prompt": record}
