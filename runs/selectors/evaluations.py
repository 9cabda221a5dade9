"""Reads of evaluations and exports: a run's jobs, an evaluation's scores and rows."""

from __future__ import annotations

from django.db.models import QuerySet

from ..errors import NotFound
from ..models import EvaluationRow, Metric, PlaygroundPrompt, RunKind, RunStatus, TunixRun
from .runs import run_for_user

SCORE_PREFIX = "generation/"


def run_jobs(run: TunixRun, kind: str) -> QuerySet[TunixRun]:
    """A run's evaluations or exports, newest first (index run_source_kind)."""
    return (
        TunixRun.objects.filter(source=run, kind=kind)
        .select_related("owner")
        .order_by("-created_at", "-id")
    )


def evaluation_scores(job: TunixRun) -> dict[str, dict[str, float]]:
    """{"tuned": {metric: mean}, "base": {...}} from the metrics the evaluation reported."""
    scores: dict[str, dict[str, float]] = {"tuned": {}, "base": {}}
    for name, value in Metric.objects.filter(run=job, name__startswith=SCORE_PREFIX).values_list(
        "name", "value"
    ):
        parts = name.split("/")
        if len(parts) == 3 and parts[1] in scores:
            scores[parts[1]][parts[2]] = value
    return scores


def evaluation_rows(job: TunixRun, *, change: str | None = None) -> QuerySet[EvaluationRow]:
    rows = EvaluationRow.objects.filter(evaluation=job)
    if change:
        rows = rows.filter(change=change)
    return rows.order_by("index")


def evaluation_change_counts(job: TunixRun) -> dict[str, int]:
    counts = {c.value: 0 for c in EvaluationRow.Change}
    for change in EvaluationRow.objects.filter(evaluation=job).values_list("change", flat=True):
        counts[change] += 1
    return counts


def latest_evaluation(run: TunixRun) -> TunixRun | None:
    return run_jobs(run, RunKind.EVALUATE).first()


def latest_scores(run: TunixRun) -> dict[str, dict[str, float]]:
    """The scores of the run's newest completed evaluation ({} when it has none)."""
    done = run_jobs(run, RunKind.EVALUATE).filter(status=RunStatus.COMPLETED).first()
    return evaluation_scores(done) if done is not None else {}


def run_prompts(run: TunixRun) -> QuerySet[PlaygroundPrompt]:
    """A run's playground prompts, newest first (index prompt_run_created)."""
    return (
        PlaygroundPrompt.objects.filter(run=run)
        .select_related("owner")
        .order_by("-created_at", "-id")
    )


def prompt_for_user(*, user, prompt_id) -> PlaygroundPrompt:
    """The prompt if `user` may see its run (NotFound / Forbidden as for the run)."""
    record = PlaygroundPrompt.objects.select_related("owner").filter(id=prompt_id).first()
    if record is None:
        raise NotFound("No such prompt.")
    run_for_user(user=user, run_id=record.run_id)
    return record
