"""The runs router. Thin: parse, call a service or selector, shape the answer."""

from __future__ import annotations

from typing import Literal

from django.db import connection
from ninja import Field as NField
from ninja import Query, Router, Schema, Status

from . import selectors, services, tunix
from .auth import api_auth
from .models import RunMode
from .schemas import ErrorOut, HealthOut, RunIn, RunOut, RunPageOut, TunixStatusOut

router = Router(auth=api_auth)


@router.get("/health", auth=None, response=HealthOut, summary="Liveness and database check")
def health(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        ok = cursor.fetchone() == (1,)
    return {"status": "ok", "database": ok}


@router.get(
    "/tunix/status",
    response={200: TunixStatusOut, 401: ErrorOut},
    summary="Is Tunix available to the training interpreter?",
)
def tunix_status(request, refresh: bool = False):
    status = tunix.probe(refresh=refresh)
    return {
        "available": status.available,
        "version": status.version,
        "jax_version": status.jax_version,
        "python": status.python,
        "message": status.message,
        "versions": status.versions,
        "supported_families": list(tunix.SUPPORTED_FAMILIES),
    }


@router.post(
    "/tunix/run",
    response={
        201: RunOut,
        202: RunOut,
        401: ErrorOut,
        409: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
        501: ErrorOut,
    },
    summary="Create a run: a dry-run (201, finished) or a local run (202, queued)",
)
def run_create(request, payload: RunIn):
    data = payload.dict()
    hyperparameters = {name: data[name] for name in tunix.HYPERPARAMETERS}
    run = services.run_create(
        owner=request.auth,
        dataset_key=payload.dataset_key,
        model_id=payload.model_id,
        mode=RunMode.DRY_RUN if payload.dry_run else RunMode.LOCAL,
        hyperparameters=hyperparameters,
        output_dir=payload.output_dir,
        timeout_seconds=payload.timeout_seconds,
        name=payload.name,
    )
    return Status(201 if payload.dry_run else 202, run)


class RunFilters(Schema):
    status: Literal["pending", "running", "completed", "failed", "timeout", "cancelled"] | None = (
        None
    )
    mode: Literal["dry-run", "local"] | None = None
    dataset_key: str | None = NField(None, max_length=160)
    model_id: str | None = NField(None, max_length=200)
    q: str | None = NField(None, max_length=100, description="Text search")
    page: int = NField(1, ge=1, le=1_000_000)
    page_size: int = NField(25, ge=1, le=200)


@router.get(
    "/tunix/runs",
    response={200: RunPageOut, 401: ErrorOut},
    summary="List runs, newest first, filtered and paged",
)
def run_list(request, filters: Query[RunFilters]):
    runs = selectors.runs_filter(
        selectors.runs_visible_to(request.auth),
        status=filters.status,
        mode=filters.mode,
        dataset_key=filters.dataset_key,
        model_id=filters.model_id,
        q=filters.q,
    )
    page = selectors.paginate(runs, page=filters.page, page_size=filters.page_size)
    return {
        "items": page.items,
        "count": page.count,
        "page": page.page,
        "page_size": page.page_size,
        "pages": page.pages,
    }


@router.get(
    "/tunix/runs/{run_id}",
    response={200: RunOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
    summary="One run",
)
def run_detail(request, run_id: str):
    return selectors.run_for_user(user=request.auth, run_id=run_id)
