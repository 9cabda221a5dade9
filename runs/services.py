"""Every state change of datasets, runs and tokens. Pages, the API, the admin, management
commands and queue tasks call these; none of them holds logic of its own."""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import datasets, retention, selectors, tunix
from .errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    TunixUnavailable,
)
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

    The bytes are validated, hashed and copied to a temporary file in one streaming pass;
    only a valid file is moved into place, and a rejected one leaves nothing behind (no
    row, no file, no folder). Errors name the line and the field (422); a file over
    DATASET_MAX_BYTES is 413; an existing key is 409 (versions are immutable).
    """
    fields = {}
    name = name.strip() if isinstance(name, str) else name
    version = version.strip() if isinstance(version, str) else version
    if not is_safe_segment(name) or len(name) > 100:
        fields["name"] = (
            "Use 1-100 letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    if not is_safe_segment(version) or len(version) > 50:
        fields["version"] = (
            "Use 1-50 letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    if declared_format not in (None, "", *datasets.FORMATS):
        fields["format"] = f"Must be one of: {', '.join(datasets.FORMATS)}."
    if not isinstance(description, str) or len(description) > 2000:
        fields["description"] = "At most 2000 characters."
    elif "\x00" in description:  # PostgreSQL text cannot hold NUL
        fields["description"] = "Must not contain NUL characters."
    if fields:
        raise InvalidInput("The dataset name, version or format is not valid.", fields=fields)
    key = f"{name}-{version}"
    if Dataset.objects.filter(Q(key=key) | Q(name=name, version=version)).exists():
        raise Conflict(f"Dataset {key} already exists; versions are immutable.")

    root = Path(settings.DATASETS_DIR).resolve()
    final_path = safe_relative(root, f"{name}/{version}.jsonl")
    chunks = datasets.read_chunks(source) if hasattr(source, "read") else source
    # In the root, not the dataset's folder, so a rejected file leaves no empty folder;
    # same filesystem, so the final move is an atomic rename. delete=False because a
    # valid file is renamed; the `with handle` closes it.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=root, prefix=".import-", suffix=".part", delete=False
    )
    tmp_path = Path(handle.name)
    created_folder = False
    try:
        with handle:
            report = datasets.validate_stream(
                chunks,
                declared_format=declared_format or None,
                max_bytes=settings.DATASET_MAX_BYTES,
                max_line_bytes=settings.DATASET_MAX_LINE_BYTES,
                sink=handle,
            )
        if report.too_large:
            limit = datasets.human_bytes(settings.DATASET_MAX_BYTES)
            raise PayloadTooLarge(
                f"The file is larger than the dataset limit of {limit}.",
                fields={"file": f"Larger than the limit of {limit}."},
            )
        if not report.ok:
            raise InvalidInput(
                f"Dataset rejected: {report.summary()}", fields={"file": report.details()}
            )
        try:
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
                if not final_path.parent.exists():
                    final_path.parent.mkdir()
                    created_folder = True
                os.replace(tmp_path, final_path)
        except IntegrityError as exc:
            # Another import of the same key committed between our check and our insert.
            raise Conflict(f"Dataset {key} already exists; versions are immutable.") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        if created_folder:
            final_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                final_path.parent.rmdir()
        raise
    return dataset


def dataset_delete(*, dataset: Dataset, user) -> None:
    """Delete a dataset: its row, then (once that has committed) its file.

    Only its owner or staff may; refused (409) while any run refers to it, since a rerun
    or a pending run would need the file. Runs keep the key and hash either way.
    """
    if not (user.is_staff or (dataset.owner_id is not None and dataset.owner_id == user.id)):
        raise Forbidden("Only the dataset's owner or staff can delete it.")
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if locked is None:
            raise NotFound("No such dataset.")
        runs = TunixRun.objects.filter(dataset=locked)
        used = runs.count()
        if used:
            active = runs.filter(status__in=ACTIVE_STATUSES).count()
            detail = f", {active} of them active" if active else ""
            raise Conflict(
                f"Dataset {locked.key} is used by {used} run{'s' if used != 1 else ''}{detail}; "
                "delete those runs first."
            )
        try:
            path = dataset_path(locked)
        except UnsafePath:
            path = None
        locked.delete()

        def remove_file() -> None:
            if path is None:
                return
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when no other version is left in it

        transaction.on_commit(remove_file)


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
    """Write the rendered {prompt, completion} rows the launcher trains on (the same lines
    the dataset page exports)."""
    count = 0
    with open(target, "w", encoding="utf-8") as out:
        for line in datasets.rendered_lines(
            datasets.iter_rows(dataset_path(dataset)), dataset.format, family
        ):
            out.write(line)
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


@dataclass
class RunPlan:
    """A validated, resolved run that is not stored yet (see run_plan)."""

    run: TunixRun
    problem: str | None  # what is wrong with the dataset (a dry-run records it as failed)
    rows: int | None  # valid rows, when the dataset's content was checked


def run_plan(
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
    check_dataset: bool = True,
) -> RunPlan:
    """Validate a run request and resolve its exact config and command, storing nothing.

    run_create records what this returns; the run form previews it. Bad input raises
    InvalidInput; a local run also raises when the dataset is unusable or Tunix is
    unavailable. `check_dataset=False` skips re-reading the dataset file (the form's live
    preview calls this on every change; the config does not depend on the file's rows).
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
    report = None
    if dataset is None:
        problem = f"Unknown dataset '{str(dataset_key)[:160]}'."
    elif not check_dataset:
        problem = None
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
    return RunPlan(run=run, problem=problem, rows=report.rows if report else None)


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
    plan = run_plan(
        owner=owner,
        dataset_key=dataset_key,
        model_id=model_id,
        mode=mode,
        hyperparameters=hyperparameters,
        output_dir=output_dir,
        timeout_seconds=timeout_seconds,
        name=name,
        parent=parent,
        command=command,
    )
    run, problem = plan.run, plan.problem
    now = timezone.now()
    if mode == RunMode.DRY_RUN:
        run.started_at = run.finished_at = now
        run.phase = "done"
        if problem:
            run.status = RunStatus.FAILED
            run.message = f"Dry-run failed: {problem}"
        else:
            run.status = RunStatus.COMPLETED
            run.message = (
                f"Dry-run passed: {plan.rows} valid rows; the config and command below are "
                "what a local run would execute. Nothing was executed."
            )
            figures = _dry_run_dataset_stats(
                run.dataset, tunix.parse_model_ref(run.model_id), run.max_seq_length
            )
            if figures is not None:
                run.environment = {**run.environment, "dataset_stats": figures}
                run.message += " " + selectors.truncation_sentence(figures)
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


def _dry_run_dataset_stats(dataset: Dataset, model, max_seq_length: int) -> dict | None:
    """The truncation figure a dry-run reports (see selectors.dataset_truncation), without
    the histogram. A failure here must not fail the dry-run: it is logged and left out."""
    try:
        figures = selectors.dataset_truncation(
            dataset, family=model.family, model=model, max_seq_length=max_seq_length
        )
    except Exception:
        log.exception("dataset statistics for dry-run on %s failed", dataset.key)
        return None
    figures.pop("histogram", None)
    return figures


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
    # os.walk + lstat, not Path.rglob: a retention pass calls this 100,000s of times.
    freed = retention.folder_size(path)
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
    # Daily retention. The first pass is set for the coming night (03:00 in TIME_ZONE);
    # later migrations update the schedule by name but never move its next run.
    Schedule.objects.update_or_create(
        name="tunixrt-retention",
        defaults={
            "func": "runs.tasks.prune_runs",
            "schedule_type": Schedule.DAILY,
            "repeats": -1,
        },
        create_defaults={
            "func": "runs.tasks.prune_runs",
            "schedule_type": Schedule.DAILY,
            "repeats": -1,
            "next_run": _next_quiet_hour(),
        },
    )


def _next_quiet_hour(hour: int = 3):
    now = timezone.localtime()
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


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
        # Recorded in the same transaction: if we die before the folder is gone, the next
        # retention pass removes it (runs/retention.py).
        deletions = retention.record_folder_deletion(locked)
        locked.delete()
    return retention.remove_folders(deletions)[1]


# --- retention, pinning, dataset deletion -----------------------------------------------


def runs_prune(
    *,
    older_than_days: int,
    dry_run: bool = False,
    batch_size: int = retention.DEFAULT_BATCH_SIZE,
    progress: retention.Progress | None = None,
    now=None,
) -> retention.PruneSummary:
    """Delete finished, unpinned runs that finished more than `older_than_days` ago
    (finished_at < now - N days), with their log chunks, metrics and folders, in batches of
    `batch_size` runs, each its own short transaction. Pending and running runs are never
    touched. Also finishes folder removals a previous pass left behind and removes
    orphaned `runs/<uuid>` folders. `dry_run` counts the same things and changes nothing.
    `progress(done, total)` is called after each batch. Safe to run twice and concurrently:
    every run is deleted by exactly one pass. Must not be called inside a transaction."""
    return retention.prune(
        older_than_days=older_than_days,
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
        now=now,
    )


def runs_prune_expired() -> str:
    """The daily retention task: prune runs older than TUNIXRT_RETENTION_DAYS (0: off)."""
    if settings.RETENTION_DAYS <= 0:
        return "retention is off (TUNIXRT_RETENTION_DAYS=0)"
    summary = runs_prune(older_than_days=settings.RETENTION_DAYS)
    log.info("retention: %s", summary)
    return str(summary)


def run_set_pinned(*, run: TunixRun, pinned: bool) -> TunixRun:
    """Pin a run (retention never deletes it) or unpin it. A pin racing a retention pass
    either lands first (the pass re-checks under its lock and keeps the run) or finds the
    run gone (404)."""
    if not TunixRun.objects.filter(id=run.id).update(pinned=bool(pinned)):
        raise NotFound("No such run.")
    run.pinned = bool(pinned)
    return run
