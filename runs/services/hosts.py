"""Worker hosts: each registers itself (its slots and accelerators) and beats; a submission
wakes the hosts that have a free slot; idle hosts also poll. A wake names no run: the host
claims the oldest pending run that fits a free slot (lifecycle.run_claim_next), so no host
ever holds a run it cannot start while another host could."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Count, Q
from django.utils import timezone

from ..models import RunMode, RunStatus, TunixRun, WorkerHost
from ..processes import child_environment, this_host

log = logging.getLogger(__name__)

WAKE_TASK = "runs.tasks.start_runs"

# Hosts not seen for this long no longer count when a run's device needs are checked.
HOST_FORGOTTEN_AFTER = timedelta(days=1)

# Runs in the training interpreter with the worker's devices; never in the web process.
_DEVICE_PROBE = """
import json, jax
devices = jax.local_devices()
try:
    stats = devices[0].memory_stats() or {}
except Exception:
    stats = {}
print(json.dumps({"platform": devices[0].platform, "kind": devices[0].device_kind,
                  "count": len(devices), "memory_bytes": stats.get("bytes_limit")}))
"""


def host_queue() -> str:
    return settings.Q_CLUSTER.get("cluster_name") or settings.Q_CLUSTER["name"]


def host_beat() -> WorkerHost:
    """Register this host (or say it is alive): its name, queue and slots."""
    host, _ = WorkerHost.objects.update_or_create(
        name=this_host(),
        defaults={"queue": host_queue(), "slots": settings.SLOTS, "heartbeat_at": timezone.now()},
    )
    return host


def host_probe_devices() -> dict:
    """Ask the training interpreter what accelerators this host has; stored on its row.
    The probe must not take GPU memory from runs, so it allocates nothing up front."""
    env = child_environment({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    try:
        done = subprocess.run(
            [settings.TUNIX_PYTHON, "-c", _DEVICE_PROBE],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=settings.BASE_DIR,
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, IndexError, ValueError) as exc:
        found = {"error": f"device probe failed: {str(exc)[:300]}"}
    WorkerHost.objects.filter(name=this_host()).update(accelerators=found, probed_at=timezone.now())
    return found


def _free_slots_by_host() -> dict[str, tuple[WorkerHost, int]]:
    live = WorkerHost.objects.filter(
        heartbeat_at__gte=timezone.now() - timedelta(seconds=settings.HOST_STALE_SECONDS)
    )
    busy = dict(
        TunixRun.objects.filter(status=RunStatus.RUNNING)
        .values_list("worker_host")
        .annotate(n=Count("id"))
        .values_list("worker_host", "n")
    )
    return {h.name: (h, len(h.slots) - busy.get(h.name, 0)) for h in live}


def hosts_wake() -> int:
    """Wake every live host that has a free slot (one message each); with no host known
    yet, this host's own queue (the one-machine set-up, before its worker first beat)."""
    from django_q.tasks import async_task

    hosts = _free_slots_by_host()
    queues = [h.queue for h, free in hosts.values() if free > 0]
    if not hosts:
        queues = [host_queue()]
    for queue in queues:
        async_task(WAKE_TASK, cluster=queue, task_name="wake")
    return len(queues)


def live_queue(preferred: str | None = None) -> str:
    """The queue of a live worker host for small jobs that are not runs (playground
    prompts): `preferred` (the host that trained the run: its files are there) when it is
    alive, else the live host with the most free slots, else this host's own queue."""
    hosts = _free_slots_by_host()
    if preferred in hosts:
        return hosts[preferred][0].queue
    if hosts:
        return max(hosts.values(), key=lambda pair: pair[1])[0].queue
    return host_queue()


def _wake_waiting(queue: str) -> bool:
    """Whether a wake for this host waits in the queue, not yet pulled by its cluster."""
    if "orm" not in settings.Q_CLUSTER:
        return False
    from django_q.models import OrmQ

    return OrmQ.objects.filter(key=queue, lock__lte=timezone.now()).exists()


def host_poll() -> bool:
    """If this host has a free slot and a run is pending, wake this host (wakes sent at
    submission may have gone to hosts that filled up, or been lost with a dead host)."""
    busy = TunixRun.objects.filter(status=RunStatus.RUNNING, worker_host=this_host()).count()
    if busy >= len(settings.SLOTS):
        return False
    if not TunixRun.objects.filter(status=RunStatus.PENDING, mode=RunMode.LOCAL).exists():
        return False
    if _wake_waiting(host_queue()):
        return False
    from django_q.tasks import async_task

    async_task(WAKE_TASK, cluster=host_queue(), task_name="wake")
    return True


def _probe_is_mine(started) -> bool:
    """One process per host probes: the first of the processes started together (a later
    one, after a recycle or restart, probes again)."""
    if not settings.PROBE_DEVICES:
        return False
    recent = started - timedelta(seconds=60)
    return bool(
        WorkerHost.objects.filter(name=this_host())
        .filter(Q(probed_at__isnull=True) | Q(probed_at__lt=recent))
        .update(probed_at=timezone.now())
    )


def host_loop() -> None:
    """In a daemon thread of each worker process: beat, probe the devices once per host
    start, and poll for pending runs. The host's processes share the poll (each at a
    multiple of the interval), so a host polls about once per interval."""
    interval = settings.IDLE_POLL_SECONDS * len(settings.SLOTS)
    beat_every = max(1.0, settings.HOST_STALE_SECONDS / 4)
    started, last_beat, probe = timezone.now(), float("-inf"), True
    while True:
        try:
            close_old_connections()
            if time.monotonic() - last_beat >= beat_every:
                host_beat()
                last_beat = time.monotonic()
                if probe:
                    probe = False
                    if _probe_is_mine(started):
                        host_probe_devices()
            host_poll()
        except Exception:
            log.exception("host loop pass failed")
        finally:
            connection.close()
        time.sleep(interval)


def host_slot_sizes() -> list[tuple[str, list[int]]]:
    """(host, devices per slot) of the hosts seen lately; a slot that shares its host's
    devices counts them all (from the probe; 0 when unknown)."""
    seen = WorkerHost.objects.filter(heartbeat_at__gte=timezone.now() - HOST_FORGOTTEN_AFTER)
    found = []
    for host in seen:
        total = (host.accelerators or {}).get("count") or 0
        found.append((host.name, [size or total for size in host.slot_sizes]))
    return found


def mesh_fits_hosts(*, fsdp: int, tp: int) -> str | None:
    """Why no known host could run this mesh, or None (also when no host is known yet)."""
    hosts = host_slot_sizes()
    sizes = sorted({size for _, host_sizes in hosts for size in host_sizes if size})
    if not sizes:
        return None
    if fsdp and fsdp * tp not in sizes:
        return (
            f"No worker host has a slot of {fsdp * tp} devices (fsdp {fsdp} x tp {tp}); "
            f"slots have {', '.join(map(str, sizes))}."
        )
    if not fsdp and not any(size % tp == 0 for size in sizes):
        return (
            f"No worker host has a slot whose devices split into tensor parallelism {tp}; "
            f"slots have {', '.join(map(str, sizes))}."
        )
    return None
