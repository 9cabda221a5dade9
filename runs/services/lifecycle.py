"""A run's life after creation: enqueue, claim, prepare, supervise, finish; cancel; the
reaper for runs whose worker was lost."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from .. import protocol, storage, training
from ..datasets.services import dataset_render_to
from ..errors import Conflict
from ..models import ACTIVE_STATUSES, FINAL_STATUSES, RunKind, RunMode, RunStatus, TunixRun
from ..outage import DatabaseGate
from ..processes import kill_group, process_alive, this_host
from ..storage import UnsafePath
from ..supervisor import GONE, Outcome, Supervisor, final_patience, reaper_patience

log = logging.getLogger(__name__)


def run_enqueue(*, run_id) -> None:
    """Hand a pending run to the queue. Extra deliveries are harmless: the claim decides."""
    from django_q.tasks import async_task

    async_task("runs.tasks.execute_run", str(run_id), task_name=f"run-{run_id}")


def run_claim(*, run_id) -> bool:
    """pending -> running with one conditional UPDATE; exactly one claimer wins."""
    now = timezone.now()
    return bool(
        TunixRun.objects.filter(id=run_id, status=RunStatus.PENDING).update(
            status=RunStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            phase=protocol.PHASE_STARTING,
            worker_host=this_host(),
        )
    )


def run_finish(*, run_id, status: str, exit_code: int | None = None, message: str = "") -> bool:
    """Move an active run to a final state. Conditional: the first final write wins."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"{status!r} is not a final status")
    now = timezone.now()
    return bool(
        TunixRun.objects.filter(id=run_id, status__in=ACTIVE_STATUSES).update(
            status=status,
            exit_code=exit_code,
            message=message[:10_000],
            finished_at=now,
            heartbeat_at=now,
            phase=protocol.PHASE_DONE,
        )
    )


def run_heartbeat_is_stale(run: TunixRun) -> bool:
    limit = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS)
    return run.status == RunStatus.RUNNING and (
        run.heartbeat_at is None or run.heartbeat_at < limit
    )


def run_prepare(*, run: TunixRun) -> tuple[Path, dict[str, str]]:
    """Create the run's folder (checked again against the artifacts root right before the
    launch) and, for Tunix runs, write the config file and the rendered training data."""
    output_path = storage.run_output_path(run)
    output_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {"TUNIXRT_RUN_ID": str(run.id)}
    if not training.is_launcher_command(run.command):
        return output_path, env
    if run.kind != RunKind.EXPORT:  # an export reads the trained weights only
        if run.dataset is None:
            raise ValueError(f"dataset {run.dataset_key} no longer exists")
        rendered = output_path / protocol.TRAIN_DATA_FILENAME
        dataset_render_to(run.dataset, run.model_family, rendered)
    config_path = output_path / protocol.CONFIG_FILENAME
    # 0600 from creation (and under the 077 umask anyway): no window before a chmod.
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(run.config, indent=2))
    return output_path, {**env, **training.launcher_environment()}


def run_execute(*, run_id) -> str:
    """The queue task's work: claim the run, prepare its folder, supervise, record the end."""
    if not run_claim(run_id=run_id):
        # Already running elsewhere, finished or cancelled: a redelivered or duplicate task.
        return "skipped: the run is not pending"
    run = TunixRun.objects.get(id=run_id)
    try:
        cwd, env_extra = run_prepare(run=run)
    except (UnsafePath, OSError, ValueError) as exc:
        run_finish(
            run_id=run_id, status=RunStatus.FAILED, message=f"Could not prepare the run: {exc}"
        )
        return "failed to prepare"
    try:
        outcome = Supervisor(run, cwd=cwd, env_extra=env_extra).execute()
    except Exception as exc:
        # The supervisor stopped the child's group before raising (see Supervisor.execute).
        log.exception("supervisor failed for run %s", run_id)
        outcome = Outcome(RunStatus.FAILED, None, f"The supervisor failed: {exc}")
    if outcome.status == GONE:
        return "finished elsewhere"
    # The database may be away right now (the supervisor waited for it already, bounded):
    # the final state is written as soon as it is back, or the reaper writes it.
    recorded, _ = DatabaseGate().retry(
        lambda: run_finish(
            run_id=run_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
            message=outcome.message,
        ),
        patience=final_patience(),
    )
    return outcome.status if recorded else "database unreachable; left to the reaper"


def run_cancel(*, run: TunixRun) -> TunixRun:
    """Cancel a run. A pending run becomes cancelled and never starts. A running run gets a
    cancel request that its supervisor turns into SIGTERM, then SIGKILL after the grace
    period; whichever final write comes first (cancel or completion) is the only one."""
    now = timezone.now()
    if TunixRun.objects.filter(id=run.id, status=RunStatus.PENDING).update(
        status=RunStatus.CANCELLED,
        cancel_requested_at=now,
        finished_at=now,
        phase=protocol.PHASE_DONE,
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
    if run_heartbeat_is_stale(run) and not _supervisor_may_come_back(run):
        # Nobody supervises it any more: finish it here; the reaper kills what is left.
        _reap_one(run, status=RunStatus.CANCELLED, message="Cancelled (its worker was lost).")
        run.refresh_from_db()
    return run


def runs_cancel_supervised_by(*, pids: set[int]) -> int:
    """Cancel the running runs whose training child is one of `pids` on this host: the
    processes of a worker cluster that is being stopped (`manage.py serve`). Their
    supervisors stop them as for any cancel and record them cancelled, so the workers can
    exit instead of waiting for training to end. Returns how many were asked."""
    asked = 0
    for run in TunixRun.objects.filter(
        status=RunStatus.RUNNING,
        worker_host=this_host(),
        pid__in=pids,
        cancel_requested_at__isnull=True,
    ):
        try:
            run_cancel(run=run)
            asked += 1
        except Conflict:
            pass  # it ended meanwhile
    return asked


def _supervisor_may_come_back(run: TunixRun) -> bool:
    """A stale heartbeat whose supervisor still lives on this host means the database was
    away: that supervisor stops its child itself and records why once it can write. It is
    left alone for a bounded time (a hung supervisor is reaped after that)."""
    if run.worker_host != this_host() or run.heartbeat_at is None:
        return False
    env = run.environment or {}
    if not process_alive(env.get("supervisor_pid"), env.get("supervisor_create_time")):
        return False
    return timezone.now() - run.heartbeat_at < timedelta(seconds=reaper_patience())


def _reap_one(run: TunixRun, *, status: str, message: str) -> bool:
    if run.pgid and run.worker_host == this_host():
        kill_group(
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
        if _supervisor_may_come_back(run):
            continue
        if run.cancel_requested_at:
            status, message = RunStatus.CANCELLED, "Cancelled (its worker was lost)."
        else:
            seen = run.heartbeat_at.isoformat(timespec="seconds")
            status, message = (
                RunStatus.FAILED,
                f"Worker lost: no heartbeat since {seen} (its worker died, or it could not "
                "reach the database).",
            )
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


def reaper_loop() -> None:
    """Reap at worker start, then every TUNIXRT_REAPER_INTERVAL_SECONDS, forever (run in a
    daemon thread of each worker process; see apps.py). A failed pass is logged and the next
    one comes on time; each pass starts and ends with a fresh database connection."""
    while True:
        try:
            close_old_connections()
            runs_reap()
        except Exception:
            log.exception("reaper pass failed")
        finally:
            connection.close()
        time.sleep(settings.REAPER_INTERVAL_SECONDS)
