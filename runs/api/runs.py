"""The runs router. Thin: parse, call a service or selector, shape the answer."""

from __future__ import annotations

import math

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from ninja import Field as NField
from ninja import Query, Router, Schema, Status

from runs import hyperparameters, protocol, selectors, services, storage, training
from runs.api import encoding
from runs.api.auth import api_auth
from runs.api.schemas import (
    TEXT,
    DeletedOut,
    ErrorOut,
    HealthOut,
    LogPageOut,
    MetricsOut,
    OutputsOut,
    ReadyOut,
    RerunIn,
    ResumeIn,
    RunDetailOut,
    RunIn,
    RunModeName,
    RunPageOut,
    RunStatusName,
    TunixStatusOut,
)
from runs.errors import Forbidden
from runs.models import RunMode

router = Router(auth=api_auth)


@router.get("/health", auth=None, response=HealthOut, summary="Liveness: the web process answers")
def health(request):
    # No database round trip: a load balancer polls this often, and a database outage is
    # not a reason to restart web processes. Readiness (below) checks the database.
    return {"status": "ok"}


@router.get(
    "/ready",
    auth=None,
    response={200: ReadyOut, 503: ReadyOut},
    summary="Readiness: the web process answers and reaches its database",
)
def ready(request):
    return (
        Status(200, {"status": "ok"})
        if selectors.database_reachable()
        else Status(503, {"status": "unavailable", "detail": "The database cannot be reached."})
    )


@router.get(
    "/tunix/status",
    response={200: TunixStatusOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut},
    summary="Is Tunix available to the training interpreter?",
    description="`refresh=true` (staff only) probes again instead of answering the cached "
    "result: it starts the training interpreter.",
)
def tunix_status(request, refresh: bool = False):
    if refresh and not request.auth.is_staff:
        raise Forbidden("Only staff may refresh the probe: it starts the training interpreter.")
    status = training.probe(refresh=refresh)
    return {
        "available": status.available,
        "version": status.version,
        "jax_version": status.jax_version,
        "python": status.python,
        "message": status.message,
        "versions": status.versions,
        "supported_families": list(protocol.FAMILIES),
    }


@router.post(
    "/tunix/run",
    response={
        201: RunDetailOut,
        202: RunDetailOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
        501: ErrorOut,
    },
    summary="Create a run: a dry-run (201, finished) or a local run (202, queued)",
    description=(
        "A dry-run validates the dataset, model and hyperparameters and builds the exact "
        "config and command without executing anything. A local run is validated the same "
        "way and queued (429 when the queue limits are reached, 501 when Tunix is not "
        "installed for the training interpreter). Invalid input is 422 and stores nothing."
    ),
)
def run_create(request, payload: RunIn):
    data = payload.dict()
    run = services.run_create(
        owner=request.auth,
        request=services.RunRequest(
            dataset_key=payload.dataset_key,
            model_id=payload.model_id,
            mode=RunMode.DRY_RUN if payload.dry_run else RunMode.LOCAL,
            hyperparameters={name: data[name] for name in hyperparameters.HYPERPARAMETERS},
            timeout_seconds=payload.timeout_seconds,
            name=payload.name,
            base_run_id=str(payload.base_run_id) if payload.base_run_id else None,
            evaluate_after=payload.evaluate_after,
        ),
    )
    return Status(201 if payload.dry_run else 202, run)


class RunFilters(Schema):
    status: RunStatusName | None = None
    mode: RunModeName | None = None
    dataset_key: str | None = NField(None, max_length=160, pattern=TEXT)
    model_id: str | None = NField(None, max_length=200, pattern=TEXT)
    q: str | None = NField(
        None, max_length=100, pattern=TEXT, description="Text in name, model, dataset, message"
    )
    cursor: str | None = NField(
        None, max_length=200, pattern=TEXT, description="`next_cursor` of the previous page."
    )
    before: str | None = NField(
        None, max_length=200, pattern=TEXT, description="`prev_cursor` of the previous page."
    )
    page: int = NField(1, ge=1, le=1_000_000, description="Offset paging, 10,000 runs deep.")
    page_size: int = NField(25, ge=1, le=200)


@router.get(
    "/tunix/runs",
    response={200: RunPageOut, 401: ErrorOut, 422: ErrorOut},
    summary="List runs, newest first, filtered and paged",
    description=(
        "Your runs (staff: everyone's), with what a list shows; the run itself has the rest. "
        "Follow `next_cursor` (as `cursor`) for older runs: every page costs the same at any "
        "depth. `count` is exact up to 1,000 matches (`count_exact`), else 1,000: more."
    ),
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
    page = selectors.runs_page(
        runs,
        page_size=filters.page_size,
        cursor=filters.cursor,
        before=filters.before,
        page=filters.page,
        rows=True,
    )
    # Shaped here from plain rows and encoded directly: validating 50 ORM objects through
    # Ninja's getters cost more than the queries. tests/test_run_list_paging.py checks the
    # answer against RunPageOut.
    page.items = [_list_item(row) for row in page.items]
    return HttpResponse(encoding.dumps(page.as_dict()), content_type="application/json")


def _list_item(row: dict) -> dict:
    row["owner"] = row.pop("owner__username")
    started, finished = row["started_at"], row["finished_at"]
    row["duration_seconds"] = (finished - started).total_seconds() if started and finished else None
    loss = row["final_loss"]
    row["final_loss"] = loss if loss is not None and math.isfinite(loss) else None
    return row


@router.get(
    "/tunix/runs/{run_id}",
    response={200: RunDetailOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
    summary="One run",
)
def run_detail(request, run_id: str):
    # A finished run's answer comes from the cache (see runs.selectors.answers).
    body = selectors.run_answer(user=request.auth, run_id=run_id, render=_render_run)
    return HttpResponse(body, content_type="application/json")


def _render_run(run) -> bytes:
    """The same bytes Ninja would answer for `response=RunDetailOut`."""
    return encoding.dumps(RunDetailOut.from_orm(run).model_dump())


# Every operation on one run answers 401 without credentials, 403 for someone else's run
# and 404 for none.
_ONE_RUN = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut}
_ONE_RUN_WITH_BODY = {**_ONE_RUN, 400: ErrorOut, 413: ErrorOut, 422: ErrorOut}


class LogQuery(Schema):
    after: int = NField(0, ge=0, le=2**31 - 1, description="Return chunks after this seq.")
    limit: int = NField(500, ge=1, le=1000)


@router.get(
    "/tunix/runs/{run_id}/logs",
    response={200: LogPageOut, 422: ErrorOut, **_ONE_RUN},
    summary="Log chunks after a cursor, to follow a run",
    description=(
        "Ask with `after=0`, then with the `next_after` of each answer. Stop once `final` "
        "is true and `has_more` is false: the run has ended and everything stored was read."
    ),
)
def run_logs(request, run_id: str, query: Query[LogQuery]):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    # The status is read before the chunks: a run seen final has written all of its output,
    # so a client that stops on `final` cannot miss a last chunk.
    chunks = selectors.run_log_chunks(run, after=query.after, limit=query.limit + 1)
    has_more = len(chunks) > query.limit
    chunks = chunks[: query.limit]
    return {
        "run_id": run.id,
        "status": run.status,
        "final": run.is_final,
        "chunks": chunks,
        "next_after": chunks[-1]["seq"] if chunks else query.after,
        "has_more": has_more,
    }


@router.get(
    "/tunix/runs/{run_id}/logs.txt",
    response=_ONE_RUN,
    summary="The whole stored log as plain text",
    openapi_extra={
        "responses": {
            200: {
                "description": "The log, streamed.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
    },
)
def run_log_text(request, run_id: str):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    response = StreamingHttpResponse(
        selectors.run_log_text(run), content_type="text/plain; charset=utf-8"
    )
    response["Content-Disposition"] = f'inline; filename="run-{run.id}.log"'
    return response


class MetricsQuery(Schema):
    points: int = NField(
        selectors.SERIES_POINTS,
        ge=4,
        le=100_000,
        description="At most this many points a series.",
    )


@router.get(
    "/tunix/runs/{run_id}/metrics",
    response={200: MetricsOut, 422: ErrorOut, **_ONE_RUN},
    summary="Metric series of a run (train/loss, eval/loss, ...) by step, downsampled",
    description=(
        "A series whose step range fits in `points` comes whole. A longer one is cut into "
        "buckets of equal step width (a power of two), and each bucket gives its first and "
        "last point and, where they lie outside those, its minimum and maximum, placed "
        "between the bucket's first and last step: spikes are kept, and a series gives at "
        "most `points` points."
    ),
)
def run_metrics(request, run_id: str, query: Query[MetricsQuery]):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    series = {
        name: [
            {"step": step, "value": value if math.isfinite(value) else None}
            for step, value in points
        ]
        for name, points in selectors.run_metric_series(run, points=query.points).items()
    }
    return {"run_id": run.id, "series": series}


@router.post(
    "/tunix/runs/{run_id}/cancel",
    response={200: RunDetailOut, 409: ErrorOut, **_ONE_RUN},
    summary="Cancel a pending or running run (409 when it has already ended)",
    description=(
        "A pending run is cancelled at once and never starts. A running run gets a cancel "
        "request: its process group receives SIGTERM, then SIGKILL after the grace period; "
        "follow it until its status is `cancelled`."
    ),
)
def run_cancel(request, run_id: str):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    return services.run_cancel(run=run)


@router.post(
    "/tunix/runs/{run_id}/rerun",
    response={201: RunDetailOut, 202: RunDetailOut, 429: ErrorOut, 501: ErrorOut}
    | _ONE_RUN_WITH_BODY,
    summary="A new run from the same inputs, optionally changed",
    description=(
        "Every field of the body is optional; what is left out keeps the original value. "
        "The new run gets its own output folder. 201 for a dry-run, 202 for a queued run."
    ),
)
def run_rerun(request, run_id: str, changes: RerunIn | None = None):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    data = changes.dict(exclude_unset=True) if changes is not None else {}
    if "dry_run" in data:
        data["mode"] = RunMode.DRY_RUN if data.pop("dry_run") else RunMode.LOCAL
    new = services.run_rerun(run=run, owner=request.auth, changes=data)
    return Status(201 if new.mode == RunMode.DRY_RUN else 202, new)


@router.post(
    "/tunix/runs/{run_id}/resume",
    response={202: RunDetailOut, 409: ErrorOut, 429: ErrorOut, 501: ErrorOut} | _ONE_RUN_WITH_BODY,
    summary="Continue a finished run from its latest complete checkpoint",
    description=(
        "Queues a new local run with the same config and more steps, linked to its parent. "
        "409 when the run is still active or has no complete checkpoint."
    ),
)
def run_resume(request, run_id: str, payload: ResumeIn):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    new = services.run_resume(run=run, owner=request.auth, max_steps=payload.max_steps)
    return Status(202, new)


@router.delete(
    "/tunix/runs/{run_id}",
    response={200: DeletedOut, 409: ErrorOut, **_ONE_RUN},
    summary="Delete a finished run with its logs, metrics and output folder",
    description="409 while the run is pending or running: cancel it first.",
)
def run_delete(request, run_id: str):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    freed = services.run_delete(run=run)
    return {"id": run.id, "freed_bytes": freed}


@router.get(
    "/tunix/runs/{run_id}/outputs",
    response={200: OutputsOut, **_ONE_RUN},
    summary="Files in the run's output folder",
)
def run_outputs(request, run_id: str):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    limit = 2000
    files = storage.run_output_files(run, limit=limit)
    return {"run_id": run.id, "files": files, "truncated": len(files) >= limit}


@router.get(
    "/tunix/runs/{run_id}/outputs/{path:file_path}",
    response=_ONE_RUN,
    summary="Download one file of the run's output folder",
    description="`file_path` is relative to the folder; nothing outside it is served.",
    openapi_extra={
        "responses": {
            200: {
                "description": "The file, as an attachment.",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        }
    },
)
def run_output_download(request, run_id: str, file_path: str):
    run = selectors.run_for_user(user=request.auth, run_id=run_id)
    # An attachment of an opaque type: a file written by training is never rendered inline.
    return FileResponse(
        storage.run_output_file(run, file_path),  # FileResponse closes it
        as_attachment=True,
        filename=file_path.rstrip("/").rsplit("/", 1)[-1],
        content_type="application/octet-stream",
    )
