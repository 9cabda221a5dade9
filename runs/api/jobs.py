"""Evaluations and exports of a trained run. Each is a run of its own kind: follow it, read its
log or cancel it with the /tunix/runs/{id} endpoints; these add creation, listing and rows."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from runs import selectors, services
from runs.api.auth import api_auth
from runs.api.schemas import ErrorOut, RunOut
from runs.datasets.selectors import dataset_get
from runs.errors import NotFound
from runs.models import EvaluationRow, RunKind

router = Router(auth=api_auth, tags=["evaluations and exports"])

_ERRORS = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
}
ChangeName = Literal[tuple(EvaluationRow.Change.values)]  # type: ignore[valid-type]


class EvaluationIn(Schema):
    # Strict: Ninja's Schema would otherwise read any JSON value (a number, a list) as an
    # object with every field left out, and a boolean as an integer.
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_key: str | None = Field(None, description="Another dataset (all its rows).")
    max_rows: int | None = Field(None, description="Rows to evaluate (default 50).")
    max_new_tokens: int | None = None
    temperature: float | None = Field(None, description="0 (the default) is greedy.")
    top_p: float | None = None
    seed: int | None = None


class ExportIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field("", description="The local model name (local:NAME); derived if empty.")


class EvaluationRowOut(Schema):
    index: int
    prompt: str
    reference: str
    base_output: str
    tuned_output: str
    base_scores: dict[str, float]
    tuned_scores: dict[str, float]
    change: ChangeName


class EvaluationOut(Schema):
    run: RunOut
    scores: dict[str, dict[str, float]]
    changes: dict[str, int]
    rows: list[EvaluationRowOut]


class RowFilter(Schema):
    change: ChangeName | None = None


def _source(request, run_id: str):
    return selectors.run_for_user(user=request.auth, run_id=run_id)


@router.post(
    "/tunix/runs/{run_id}/evaluations",
    response={201: RunOut, **_ERRORS},
    summary="Evaluate a completed run by generation (fine-tuned vs base)",
)
def evaluation_create(request, run_id: str, payload: EvaluationIn | None = None):
    payload = payload or EvaluationIn()
    dataset = dataset_get(payload.dataset_key, user=request.auth) if payload.dataset_key else None
    settings = payload.dict(exclude={"dataset_key"}, exclude_none=True)
    job = services.evaluation_create(
        run=_source(request, run_id), owner=request.auth, dataset=dataset, generation=settings
    )
    return Status(201, job)


@router.get(
    "/tunix/runs/{run_id}/evaluations",
    response={200: list[RunOut], **_ERRORS},
    summary="A run's evaluations, newest first",
)
def evaluation_list(request, run_id: str):
    return list(selectors.run_jobs(_source(request, run_id), RunKind.EVALUATE)[:100])


@router.get(
    "/tunix/evaluations/{job_id}",
    response={200: EvaluationOut, **_ERRORS},
    summary="One evaluation: scores and rows (filter: better, worse, still_wrong, still_right)",
)
def evaluation_detail(request, job_id: UUID, filters: Query[RowFilter]):
    job = selectors.run_for_user(user=request.auth, run_id=job_id)
    if job.kind != RunKind.EVALUATE:
        raise NotFound("No such evaluation.")
    return {
        "run": job,
        "scores": selectors.evaluation_scores(job),
        "changes": selectors.evaluation_change_counts(job),
        "rows": list(selectors.evaluation_rows(job, change=filters.change)[:1000]),
    }


@router.post(
    "/tunix/runs/{run_id}/exports",
    response={201: RunOut, **_ERRORS},
    summary="Export a completed run as a Hugging Face folder (local:NAME)",
)
def export_create(request, run_id: str, payload: ExportIn | None = None):
    payload = payload or ExportIn()
    job = services.export_create(
        run=_source(request, run_id), owner=request.auth, name=payload.name
    )
    return Status(201, job)


@router.get(
    "/tunix/runs/{run_id}/exports",
    response={200: list[RunOut], **_ERRORS},
    summary="A run's exports, newest first",
)
def export_list(request, run_id: str):
    return list(selectors.run_jobs(_source(request, run_id), RunKind.EXPORT)[:100])
