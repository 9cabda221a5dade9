"""Evaluations and exports of a trained run. Each is a run of its own kind: follow it, read its
log or cancel it with the /tunix/runs/{id} endpoints; these add creation, listing and rows."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from runs import selectors, services
from runs.api.auth import api_auth
from runs.api.schemas import ErrorOut, RunOut
from runs.datasets.selectors import dataset_get
from runs.errors import NotFound
from runs.models import EvaluationRow, PlaygroundPrompt, RunKind

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


# --- the playground --------------------------------------------------------------------


class PromptIn(Schema):
    prompt: str = Field(..., description="The user's message; the run's chat template is applied.")
    max_new_tokens: int | None = None
    temperature: float | None = Field(None, description="0 (the default) is greedy.")
    top_p: float | None = None
    seed: int | None = None


class PromptOut(Schema):
    id: UUID
    run_id: UUID
    owner: str | None = Field(None, alias="owner.username")
    prompt: str
    rendered_prompt: str
    generation: dict
    status: Literal[tuple(PlaygroundPrompt.Status.values)]  # type: ignore[valid-type]
    tuned_output: str
    base_output: str
    error: str
    cold: bool = Field(..., description="This answer loaded the models and compiled.")
    seconds: float | None = Field(None, description="Seconds on the worker.")
    created_at: datetime
    finished_at: datetime | None


class WaitQuery(Schema):
    wait: float = Field(0, ge=0, le=60, description="Seconds to wait for the answer.")


@router.post(
    "/tunix/runs/{run_id}/prompts",
    response={201: PromptOut, 202: PromptOut, **_ERRORS},
    summary="Ask a completed run and its base model a prompt (?wait=S: wait for the answer)",
)
def prompt_create(request, run_id: str, payload: PromptIn, query: Query[WaitQuery]):
    generation = payload.dict(exclude={"prompt"}, exclude_none=True)
    record = services.prompt_submit(
        run=_source(request, run_id),
        owner=request.auth,
        prompt=payload.prompt,
        generation=generation,
    )
    if query.wait:
        record = services.prompt_wait(record, timeout=query.wait)
    return Status(201 if record.status != PlaygroundPrompt.Status.PENDING else 202, record)


@router.get(
    "/tunix/runs/{run_id}/prompts",
    response={200: list[PromptOut], **_ERRORS},
    summary="A run's playground prompts and answers, newest first",
)
def prompt_list(request, run_id: str):
    return list(selectors.run_prompts(_source(request, run_id))[:100])


@router.get(
    "/tunix/prompts/{prompt_id}",
    response={200: PromptOut, **_ERRORS},
    summary="One prompt and its answers (?wait=S: wait for them)",
)
def prompt_detail(request, prompt_id: UUID, query: Query[WaitQuery]):
    record = selectors.prompt_for_user(user=request.auth, prompt_id=prompt_id)
    if query.wait:
        record = services.prompt_wait(record, timeout=query.wait)
    return record


# --- the models folder ------------------------------------------------------------------


class ModelOut(Schema):
    model_id: str
    name: str
    family: str
    size: int
    base_model: str | None = Field(
        None, description="For an export: the model it was trained from."
    )
    source_run_id: UUID | None = Field(None, description="For an export: the run it came from.")
    export_id: UUID | None = None
    run_ids: list[UUID] = Field(..., description="Runs that trained from this model.")


@router.get("/tunix/models", response={200: list[ModelOut], **_ERRORS}, summary="Local models")
def model_list(request):
    return [
        {
            **entry,
            "source_run_id": entry["source_run"].id if entry["source_run"] else None,
            "export_id": entry["export"].id if entry["export"] else None,
            "run_ids": [run.id for run in entry["runs"]],
        }
        for entry in services.model_catalogue()
    ]


@router.delete(
    "/tunix/models/{name}",
    response={204: None, **_ERRORS},
    summary="Delete a local model's folder (409 while runs use it)",
)
def model_delete(request, name: str):
    services.model_delete(name=name)
    return Status(204, None)
