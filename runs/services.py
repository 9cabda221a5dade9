"""Every state change of datasets, runs and tokens. Pages, the API, the admin, management
commands and queue tasks call these; none of them holds logic of its own."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import datasets, tunix
from .errors import Conflict, InvalidInput, LimitExceeded, NotFound, TunixUnavailable
from .models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    ApiToken,
    Dataset,
    LogChunk,
    RunMode,
    RunStatus,
    TunixRun,
)
from .paths import UnsafePath, is_safe_segment, safe_relative

log = logging.getLogger(__name__)

# --- datasets ---------------------------------------------------------------------------


def dataset_import(
    *,
    source: IO[bytes] | Iterable[bytes],
    name: str,
    version: str,
    owner=None,
    declared_format: str | None = None,
    description: str = "",
) -> Dataset:
    """Validate a JSONL stream and register it as dataset `name-version`.

    The bytes are validated and copied to a temporary file in one pass; only a valid file
    is moved into place, and a rejected one leaves nothing behind (no row, no file).
    """
    fields = {}
    if not is_safe_segment(name) or len(name) > 100:
        fields["name"] = "Use letters, digits, '.', '_' and '-' (start with a letter or digit)."
    if not is_safe_segment(version) or len(version) > 50:
        fields["version"] = "Use letters, digits, '.', '_' and '-' (start with a letter or digit)."
    if declared_format not in (None, "", *datasets.FORMATS):
        fields["format"] = f"Must be one of: {', '.join(datasets.FORMATS)}."
    if fields:
        raise InvalidInput("The dataset name, version or format is not valid.", fields=fields)
    key = f"{name}-{version}"
    if Dataset.objects.filter(Q(key=key) | Q(name=name, version=version)).exists():
        raise Conflict(f"Dataset {key} already exists; versions are immutable.")

    root = Path(settings.DATASETS_DIR).resolve()
    final_path = safe_relative(root, f"{name}/{version}.jsonl")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    chunks = datasets.read_chunks(source) if hasattr(source, "read") else source
    # Closed by the `with handle` below; delete=False because a valid file is renamed.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=final_path.parent, suffix=".part", delete=False
    )
    tmp_path = Path(handle.name)
    try:
        with handle:
            report = datasets.validate_stream(
                chunks,
                declared_format=declared_format or None,
                max_bytes=settings.DATASET_MAX_BYTES,
                max_line_bytes=settings.DATASET_MAX_LINE_BYTES,
                sink=handle,
            )
        if not report.ok:
            raise InvalidInput(
                f"Dataset rejected: {report.summary()}",
                fields={"file": report.summary()},
            )
        with transaction.atomic():
            dataset = Dataset.objects.create(
                key=key,
                name=name,
                version=version,
                format=report.format,
                file_path=str(final_path.relative_to(root)),
                row_count=report.rows,
                size_bytes=report.size_bytes,
                sha256=report.sha256,
                owner=owner,
                description=description,
            )
            os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return dataset


def dataset_path(dataset: Dataset) -> Path:
    return safe_relative(Path(settings.DATASETS_DIR), dataset.file_path)


def dataset_check(dataset: Dataset) -> datasets.ValidationReport:
    """Re-read a stored dataset: does it still exist, hash the same and hold valid rows?"""
    path = dataset_path(dataset)
    if not path.is_file():
        report = datasets.ValidationReport(format=dataset.format)
        report.errors.append(f"the file of dataset {dataset.key} is missing")
        report.error_count = 1
        return report
    with open(path, "rb") as handle:
        report = datasets.validate_stream(
            datasets.read_chunks(handle),
            declared_format=dataset.format,
            max_bytes=max(settings.DATASET_MAX_BYTES, dataset.size_bytes),
            max_line_bytes=settings.DATASET_MAX_LINE_BYTES,
        )
    if report.ok and report.sha256 != dataset.sha256:
        report.errors.append(f"the file of dataset {dataset.key} changed since it was imported")
        report.error_count += 1
    return report


def dataset_render_to(dataset: Dataset, family: str, target: Path) -> int:
    """Write the rendered {prompt, completion} rows the launcher trains on."""
    count = 0
    with open(target, "w", encoding="utf-8") as out:
        for row in datasets.iter_rows(dataset_path(dataset)):
            out.write(json.dumps(datasets.render_row(row, dataset.format, family)) + "\n")
            count += 1
    return count


# --- runs: creation ---------------------------------------------------------------------


def _queue_lock() -> None:
    """Serialise the queue-limit check. SQLite's IMMEDIATE transactions already serialise
    writers; PostgreSQL needs a lock, or two submissions could both count below the limit."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x7475_6E69])


def _check_queue_limits(owner) -> None:
    active = TunixRun.objects.filter(mode=RunMode.LOCAL, status=RunStatus.PENDING)
    if active.filter(owner=owner).count() >= settings.MAX_QUEUED_RUNS_PER_USER:
        raise LimitExceeded(
            f"You already have {settings.MAX_QUEUED_RUNS_PER_USER} queued runs, the most "
            "allowed per user; wait for some to start or cancel them."
        )
    if active.count() >= settings.MAX_QUEUED_RUNS_TOTAL:
        raise LimitExceeded(
            f"The queue is full ({settings.MAX_QUEUED_RUNS_TOTAL} queued runs); try again later."
        )


def run_create(
    *,
    owner,
    dataset_key: str,
    model_id: str,
    mode: str = RunMode.DRY_RUN,
    hyperparameters: dict[str, Any] | None = None,
    output_dir: str | None = None,
    timeout_seconds: int | None = None,
    name: str = "",
    parent: TunixRun | None = None,
    command: list[str] | None = None,
) -> TunixRun:
    """Validate and record a run.

    A dry-run checks everything a local run would need, builds the exact config and
    command, and finishes `completed` (or `failed`, naming the dataset problem) without
    starting any process. A local run is validated the same way, then queued; bad input
    raises InvalidInput and stores nothing. `command` replaces the Tunix launcher with
    another argv; only trusted code (tests, benchmarks) passes it, never a request.
    """
    if mode not in RunMode.values:
        raise InvalidInput("Unknown mode.", fields={"mode": "Must be 'dry-run' or 'local'."})
    hp, fields = tunix.validate_hyperparameters(hyperparameters or {})
    if timeout_seconds is None:
        timeout_seconds = settings.RUN_TIMEOUT_DEFAULT
    elif not (
        isinstance(timeout_seconds, int) and 10 <= timeout_seconds <= settings.RUN_TIMEOUT_MAX
    ):
        fields["timeout_seconds"] = f"Must be between 10 and {settings.RUN_TIMEOUT_MAX} seconds."
    model = None
    try:
        model = tunix.parse_model_ref(model_id)
    except tunix.ModelRefError as exc:
        fields["model_id"] = str(exc)
    run_id = uuid.uuid4()
    output_dir = output_dir or f"runs/{run_id}"
    try:
        if len(output_dir) > 200:
            raise UnsafePath("must be at most 200 characters")
        output_path = safe_relative(Path(settings.ARTIFACTS_DIR), output_dir)
        output_dir = str(output_path.relative_to(Path(settings.ARTIFACTS_DIR).resolve()))
        if TunixRun.objects.filter(output_dir=output_dir).exists() or output_path.exists():
            fields["output_dir"] = "This output folder is already in use."
    except UnsafePath as exc:
        fields["output_dir"] = f"Output folder {exc}."
    if len(name) > 200:
        fields["name"] = "At most 200 characters."
    if fields:
        raise InvalidInput("The run request is not valid.", fields=fields)

    # Dataset checks: a dry-run records what is wrong; a local run refuses to queue.
    dataset = Dataset.objects.filter(key=dataset_key).first() if dataset_key else None
    if dataset is None:
        problem = f"Unknown dataset '{str(dataset_key)[:160]}'."
    else:
        report = dataset_check(dataset)
        problem = None if report.ok else f"Dataset {dataset.key} is not usable: {report.summary()}."
    if problem and mode == RunMode.LOCAL:
        raise InvalidInput(problem, fields={"dataset_key": problem})

    status = tunix.probe() if command is None else None
    if mode == RunMode.LOCAL and status is not None and not status.available:
        raise TunixUnavailable(status.message)

    resume_dir = None
    if parent is not None:
        resume_dir = str(Path(settings.ARTIFACTS_DIR) / parent.output_dir / "checkpoints")
    config = tunix.build_config(
        run_id=str(run_id),
        model=model,
        dataset_key=dataset_key,
        dataset_sha256=dataset.sha256 if dataset else "",
        output_path=output_path,
        hyperparameters=hp,
        resume_checkpoint_dir=resume_dir,
    )
    now = timezone.now()
    run = TunixRun(
        id=run_id,
        owner=owner,
        mode=mode,
        name=name,
        dataset=dataset,
        dataset_key=str(dataset_key)[:160],
        dataset_sha256=dataset.sha256 if dataset else "",
        model_id=model_id,
        model_family=model.family,
        output_dir=output_dir,
        timeout_seconds=timeout_seconds,
        config=config,
        command=command if command is not None else tunix.build_command(output_path),
        environment=_environment_from_probe(status),
        parent=parent,
        **hp,
    )
    if mode == RunMode.DRY_RUN:
        run.started_at = run.finished_at = now
        run.phase = "done"
        if problem:
            run.status = RunStatus.FAILED
            run.message = f"Dry-run failed: {problem}"
        else:
            run.status = RunStatus.COMPLETED
            run.message = (
                f"Dry-run passed: {report.rows} valid rows; the config and command below are "
                "what a local run would execute. Nothing was executed."
            )
        _run_insert(run)
        return run

    with transaction.atomic():
        _queue_lock()
        _check_queue_limits(owner)
        run.status = RunStatus.PENDING
        run.phase = "queued"
        run.enqueued_at = now
        _run_insert(run)
        transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return run


def _run_insert(run: TunixRun) -> None:
    """Insert a new run. Two requests naming the same output folder can both pass the check
    above; the unique constraint lets only one in, and the other gets the same 422."""
    try:
        with transaction.atomic():
            run.save(force_insert=True)
    except IntegrityError as exc:
        raise InvalidInput(
            "The run request is not valid.",
            fields={"output_dir": "This output folder is already in use."},
        ) from exc


def _environment_from_probe(status: tunix.TunixStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {"tunix_available": status.available, "probe": status.versions or {}}


def run_enqueue(*, run_id) -> None:
    """Hand a pending run to the queue. Extra deliveries are harmless: the claim decides."""
    from django_q.tasks import async_task

    async_task("runs.tasks.execute_run", str(run_id), task_name=f"run-{run_id}")


# --- runs: execution state --------------------------------------------------------------


def run_claim(*, run_id) -> bool:
    """pending -> running with one conditional UPDATE; exactly one claimer wins."""
    now = timezone.now()
    return bool(
        TunixRun.objects.filter(id=run_id, status=RunStatus.PENDING).update(
            status=RunStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            phase="starting",
            worker_host=socket.gethostname()[:255],
        )
    )


def run_finish(*, run_id, status: str, exit_code: int | None = None, message: str = "") -> bool:
    """Move an active run to a final state. Conditional: the first final write wins."""
    assert status in FINAL_STATUSES
    now = timezone.now()
    return bool(
        TunixRun.objects.filter(id=run_id, status__in=ACTIVE_STATUSES).update(
            status=status,
            exit_code=exit_code,
            message=message[:10_000],
            finished_at=now,
            heartbeat_at=now,
            phase="done",
        )
    )


def run_get(*, run_id) -> TunixRun:
    try:
        return TunixRun.objects.get(id=uuid.UUID(str(run_id)))
    except (TunixRun.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound("No such run.") from exc


def run_append_system_log(*, run_id, text: str) -> None:
    """A line from tunix-rt itself (not the child) in the run's log."""
    with transaction.atomic():
        last = (
            LogChunk.objects.filter(run_id=run_id).order_by("-seq").values_list("seq", flat=True)
        ).first()
        LogChunk.objects.create(
            run_id=run_id, seq=(last or 0) + 1, stream=LogChunk.Stream.SYSTEM, text=text
        )


def run_heartbeat_is_stale(run: TunixRun) -> bool:
    limit = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS)
    return run.status == RunStatus.RUNNING and (
        run.heartbeat_at is None or run.heartbeat_at < limit
    )


# --- API tokens -------------------------------------------------------------------------

TOKEN_PREFIX = "trt_"  # noqa: S105 - a public prefix, not a secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def api_token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Create a token; the clear text is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken.objects.create(
        user=user, name=name[:100], prefix=token[:12], token_hash=token_hash(token)
    )
    return record, token


def api_token_authenticate(*, token: str):
    """The user of an active token, or None. Records when the token was last used."""
    if not token or len(token) > 200:
        return None
    record = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=token_hash(token), revoked_at__isnull=True)
        .first()
    )
    if record is None or not record.user.is_active:
        return None
    now = timezone.now()
    # Write at most once a minute per token, not on every request.
    if record.last_used_at is None or now - record.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=record.pk).update(last_used_at=now)
    return record.user


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


# --- artifacts --------------------------------------------------------------------------


def run_output_path(run: TunixRun) -> Path:
    return safe_relative(Path(settings.ARTIFACTS_DIR), run.output_dir)


def remove_tree(path: Path) -> int:
    """Delete a run's folder; returns the bytes freed. Never follows a symlink out."""
    if not path.exists():
        return 0
    freed = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    shutil.rmtree(path, ignore_errors=True)
    return freed


# --- runs: preparing, cancelling, reaping -----------------------------------------------


def run_prepare(*, run: TunixRun) -> tuple[Path, dict[str, str]]:
    """Create the run's folder (checked again against the artifacts root right before the
    launch) and, for Tunix runs, write the config file and the rendered training data."""
    output_path = run_output_path(run)
    output_path.mkdir(parents=True, exist_ok=True)
    env = {"TUNIXRT_RUN_ID": str(run.id)}
    if not tunix.is_launcher_command(run.command):
        return output_path, env
    if run.dataset is None:
        raise ValueError(f"dataset {run.dataset_key} no longer exists")
    rendered = output_path / tunix.TRAIN_DATA_FILENAME
    dataset_render_to(run.dataset, run.model_family, rendered)
    config_path = output_path / tunix.CONFIG_FILENAME
    config_path.write_text(json.dumps(run.config, indent=2))
    return output_path, {**env, **tunix.launcher_environment()}


def run_cancel(*, run: TunixRun) -> TunixRun:
    """Cancel a run. A pending run becomes cancelled and never starts. A running run gets a
    cancel request that its supervisor turns into SIGTERM, then SIGKILL after the grace
    period; whichever final write comes first (cancel or completion) is the only one."""
    now = timezone.now()
    if TunixRun.objects.filter(id=run.id, status=RunStatus.PENDING).update(
        status=RunStatus.CANCELLED,
        cancel_requested_at=now,
        finished_at=now,
        phase="done",
        message="Cancelled before it started.",
    ):
        run.refresh_from_db()
        return run
    if not TunixRun.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
        cancel_requested_at=now
    ):
        run.refresh_from_db()
        raise Conflict(f"The run is already {run.status}; there is nothing to cancel.")
    run.refresh_from_db()
    if run_heartbeat_is_stale(run):
        # Nobody supervises it any more: finish it here; the reaper kills what is left.
        _reap_one(run, status=RunStatus.CANCELLED, message="Cancelled (its worker was lost).")
        run.refresh_from_db()
    return run


def _reap_one(run: TunixRun, *, status: str, message: str) -> bool:
    from . import engine

    if run.pgid and run.worker_host == engine.this_host():
        engine.kill_group(
            run.pgid, run.environment.get("pid_create_time"), grace=settings.CANCEL_GRACE_SECONDS
        )
    return run_finish(run_id=run.id, status=status, message=message)


def runs_reap() -> str:
    """Finish running runs whose supervisor stopped writing its heartbeat ("worker lost")
    and kill their process group when it lives on this host; hand pending runs that waited
    too long to the queue again (a task lost with its broker or stuck behind a busy host)."""
    limit = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS)
    stale = TunixRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=limit)
    reaped = 0
    for run in stale[:100]:
        if run.cancel_requested_at:
            status, message = RunStatus.CANCELLED, "Cancelled (its worker was lost)."
        else:
            seen = run.heartbeat_at.isoformat(timespec="seconds")
            status, message = RunStatus.FAILED, f"Worker lost: no heartbeat since {seen}."
        reaped += _reap_one(run, status=status, message=message)
    requeue_before = timezone.now() - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    requeued = 0
    for run_id in TunixRun.objects.filter(
        status=RunStatus.PENDING, mode=RunMode.LOCAL, enqueued_at__lt=requeue_before
    ).values_list("id", flat=True)[:100]:
        if TunixRun.objects.filter(
            id=run_id, status=RunStatus.PENDING, enqueued_at__lt=requeue_before
        ).update(enqueued_at=timezone.now()):
            run_enqueue(run_id=run_id)
            requeued += 1
    return f"reaped {reaped}, requeued {requeued}"


def schedules_ensure() -> None:
    """The recurring queue jobs, created or updated by name: safe to run any number of times."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="tunixrt-reaper",
        defaults={
            "func": "runs.tasks.reap_runs",
            "schedule_type": Schedule.MINUTES,
            "minutes": max(1, settings.REAPER_INTERVAL_SECONDS // 60),
            "repeats": -1,
        },
    )


# --- runs: again, resume, delete --------------------------------------------------------

_RERUN_FIELDS = ("dataset_key", "model_id", "mode", "timeout_seconds", "name")


def run_request(run: TunixRun) -> dict[str, Any]:
    """The inputs that created `run`, in the shape run_create takes (for "run again")."""
    return {
        "dataset_key": run.dataset_key,
        "model_id": run.model_id,
        "mode": run.mode,
        "timeout_seconds": run.timeout_seconds,
        "name": run.name,
        "hyperparameters": {name: getattr(run, name) for name in tunix.HYPERPARAMETERS},
    }


def run_rerun(*, run: TunixRun, owner, changes: dict[str, Any] | None = None) -> TunixRun:
    """A new run from the same inputs, optionally changed. The new run gets its own folder
    (never the old one's), and a launcher command is rebuilt, a custom one kept."""
    request = run_request(run)
    for key, value in (changes or {}).items():
        if key in tunix.HYPERPARAMETERS:
            request["hyperparameters"][key] = value
        elif key in _RERUN_FIELDS:
            request[key] = value
        else:
            raise InvalidInput(f"'{key}' cannot be changed on a rerun.", fields={key: "Unknown."})
    command = None if tunix.is_launcher_command(run.command) or not run.command else run.command
    return run_create(owner=owner, command=command, **request)


def run_latest_checkpoint(run: TunixRun) -> int | None:
    """The newest step whose Orbax checkpoint is complete (has commit_success.txt)."""
    steps = [c["step"] for c in run_checkpoints(run) if c["complete"]]
    return max(steps) if steps else None


def run_checkpoints(run: TunixRun) -> list[dict[str, Any]]:
    """Checkpoints by step with their completeness marker, newest first."""
    try:
        root = run_output_path(run) / "checkpoints"
    except UnsafePath:
        return []
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink() and child.name.isdigit():
            found.append(
                {
                    "step": int(child.name),
                    "complete": (child / "commit_success.txt").is_file(),
                    "path": str(child.relative_to(run_output_path(run))),
                }
            )
    return sorted(found, key=lambda c: c["step"], reverse=True)


def run_resume(*, run: TunixRun, owner, max_steps: int) -> TunixRun:
    """Continue `run` from its latest complete checkpoint: the same config with more steps,
    as a new local run linked to its parent."""
    if not run.is_final:
        raise Conflict("Only a finished run can be continued.")
    step = run_latest_checkpoint(run)
    if step is None:
        raise Conflict("The run has no complete checkpoint to continue from.")
    if max_steps <= step:
        raise InvalidInput(
            f"max_steps must be greater than the checkpoint's step {step}.",
            fields={"max_steps": f"Must be greater than {step}."},
        )
    request = run_request(run)
    request["mode"] = RunMode.LOCAL
    request["hyperparameters"]["max_steps"] = max_steps
    new = run_create(owner=owner, parent=run, **request)
    TunixRun.objects.filter(id=new.id).update(resume_from_step=step)
    new.resume_from_step = step
    return new


def run_delete(*, run: TunixRun) -> int:
    """Delete a finished run: its rows first (logs and metrics cascade), then, once that has
    committed, its folder. Returns the bytes freed. Active runs are refused (409)."""
    with transaction.atomic():
        locked = TunixRun.objects.select_for_update().filter(id=run.id).first()
        if locked is None:
            raise NotFound("No such run.")
        if locked.is_active:
            raise Conflict(f"The run is {locked.status}; cancel it before deleting it.")
        try:
            path = run_output_path(locked)
        except UnsafePath:
            path = None
        locked.delete()
    return remove_tree(path) if path is not None else 0
