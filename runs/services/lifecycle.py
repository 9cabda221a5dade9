"""A run's life after creation: enqueue, claim, prepare, supervise, finish; cancel; the
reaper for runs whose worker was lost."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import psutil
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import protocol, slots, storage, training
from ..datasets.rendering import default_method
from ..datasets.services import dataset_render_to
from ..errors import Conflict
from ..models import ACTIVE_STATUSES, FINAL_STATUSES, RunKind, RunMode, RunStatus, TunixRun
from ..outage import DatabaseGate
from ..processes import kill_group, process_alive, this_host
from ..storage import UnsafePath
from ..supervisor import GONE, Outcome, Supervisor, final_patience, reaper_patience
from .hosts import hosts_wake

log = logging.getLogger(__name__)


def run_enqueue(*, run_id) -> None:
    """Tell the worker hosts that a run is pending. The message names no run: a host that has
    a free slot claims the oldest pending run that fits it (run_claim_next), so a busy host
    never sits on a run that another could start. Idle hosts also poll (hosts_poll)."""
    hosts_wake()


def _busy_slots(host: str) -> set[int]:
    return set(
        TunixRun.objects.filter(status=RunStatus.RUNNING, worker_host=host).values_list(
            "worker_slot", flat=True
        )
    )


def _claim(*, run_id=None) -> TunixRun | None:
    """One attempt: a free slot of this host and a pending run that fits it (the given one,
    or the oldest), taken with one UPDATE under a row lock. On PostgreSQL the run is read
    FOR UPDATE SKIP LOCKED, so concurrent claimers on all hosts take different runs; two
    processes of one host racing for one slot hit the run_one_per_slot constraint."""
    host = this_host()
    busy = _busy_slots(host)
    free = [slot for slot in slots.host_slots() if slot.index not in busy]
    if not free:
        return None
    candidates = TunixRun.objects.select_for_update(skip_locked=True).filter(
        status=RunStatus.PENDING
    )
    if run_id is not None:
        candidates = candidates.filter(id=run_id)
    else:
        candidates = candidates.filter(mode=RunMode.LOCAL)
    if all(slot.owns_devices for slot in free):
        # A run whose mesh names its device count waits for a slot of that size.
        sizes = {len(slot.devices) for slot in free}
        candidates = candidates.annotate(need=F("mesh_fsdp") * F("mesh_tp")).filter(
            Q(mesh_fsdp=0) | Q(need__in=sizes)
        )
    run = candidates.order_by("created_at", "id").first()
    if run is None:
        return None
    slot = next(slot for slot in free if slot.fits(run.devices_needed))
    now = timezone.now()
    me = psutil.Process()
    environment = {
        **(run.environment or {}),
        "host": host,
        "slot": slot.index,
        "slot_devices": ",".join(slot.devices) or "all",
        # The process that claims supervises the run: recorded now, so the reaper on this
        # host knows at once when it is gone (runs_reap), even before the child starts.
        "claimed_by_pid": me.pid,
        "claimed_by_create_time": me.create_time(),
    }
    claimed = TunixRun.objects.filter(id=run.id, status=RunStatus.PENDING).update(
        status=RunStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        phase=protocol.PHASE_STARTING,
        worker_host=host,
        worker_slot=slot.index,
        devices=",".join(slot.devices),
        environment=environment,
    )
    if not claimed:
        return None
    run.refresh_from_db()
    return run


def run_claim_next(*, run_id=None) -> TunixRun | None:
    """pending -> running on a free slot of this host: the run `run_id`, or the oldest
    pending local run that fits a free slot. None when no slot is free or nothing waits."""
    for _ in range(len(settings.SLOTS) + 1):
        try:
            with transaction.atomic():
                return _claim(run_id=run_id)
        except IntegrityError:
            continue  # another process of this host took that slot first: look again
    return None


def run_claim(*, run_id) -> bool:
    """pending -> running with one conditional UPDATE; exactly one claimer wins."""
    return run_claim_next(run_id=run_id) is not None


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
        # An evaluation renders as the format is scored: preference pairs as DPO reads them.
        method = run.method if run.kind == RunKind.TRAIN else default_method(run.dataset.format)
        dataset_render_to(run.dataset, run.model_family, rendered, method)
    config_path = output_path / protocol.CONFIG_FILENAME
    # This host's paths; with an object store, the parent's step is downloaded first.
    config = storage.run_localized(run)
    # 0600 from creation (and under the 077 umask anyway): no window before a chmod.
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(config, indent=2))
    return output_path, {**env, **training.launcher_environment()}


def run_execute(*, run_id=None) -> str:
    """The queue task's work: claim a run (this one, or the oldest that fits a free slot),
    prepare its folder, supervise it on its slot, record the end."""
    run = run_claim_next(run_id=run_id)
    if run is None:
        # No free slot, nothing pending, or (a named run) already running elsewhere,
        # finished or cancelled: a redelivered or duplicate task.
        return "skipped: the run is not pending" if run_id else "nothing to start"
    return run_execute_claimed(run=run)


def run_execute_claimed(*, run: TunixRun) -> str:
    """Prepare, supervise on its slot and record the end of a run this process claimed."""
    run_id = run.id
    try:
        cwd, env_extra = run_prepare(run=run)
    except (UnsafePath, OSError, ValueError) as exc:
        run_finish(
            run_id=run_id, status=RunStatus.FAILED, message=f"Could not prepare the run: {exc}"
        )
        return "failed to prepare"
    slot = slots.host_slots()[run.worker_slot]
    env_extra = {**env_extra, **slots.slot_environment(slot)}
    try:
        with storage.run_published(run):  # object store: uploads steps, then the folder
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


def _lost_here() -> list[TunixRun]:
    """Running runs of this host whose supervisor process is gone (a killed worker): lost
    now, not only once their heartbeat is stale, so their slot is free at the next pass."""
    lost = []
    for run in TunixRun.objects.filter(status=RunStatus.RUNNING, worker_host=this_host())[:100]:
        env = run.environment or {}
        if "claimed_by_pid" in env and not process_alive(
            env.get("claimed_by_pid"), env.get("claimed_by_create_time")
        ):
            lost.append(run)
    return lost


def runs_reap() -> str:
    """Finish running runs whose supervisor stopped writing its heartbeat, or died on this
    host ("worker lost"), and kill their process group when it lives on this host; wake the
    hosts for pending runs that waited too long (a wake lost, or no host was free)."""
    limit = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS)
    stale = list(TunixRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=limit)[:100])
    stale_ids = {run.id for run in stale}
    stale += [run for run in _lost_here() if run.id not in stale_ids]
    reaped = 0
    for run in stale:
        if run.heartbeat_at >= limit:
            seen = "its supervisor process on this host is gone"
        elif _supervisor_may_come_back(run):
            continue
        else:
            seen = f"no heartbeat since {run.heartbeat_at.isoformat(timespec='seconds')}"
        if run.cancel_requested_at:
            status, message = RunStatus.CANCELLED, "Cancelled (its worker was lost)."
        else:
            status, message = (
                RunStatus.FAILED,
                f"Worker lost: {seen} (its worker died, or it could not reach the database).",
            )
        reaped += _reap_one(run, status=status, message=message)
    requeue_before = timezone.now() - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    requeued = TunixRun.objects.filter(
        status=RunStatus.PENDING, mode=RunMode.LOCAL, enqueued_at__lt=requeue_before
    ).update(enqueued_at=timezone.now())
    if requeued:
        run_enqueue(run_id=None)
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
