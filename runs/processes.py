"""Process helpers: the child's minimal environment, dying with the parent, process groups
(signal, kill) and this host's name. No database, no models."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

import psutil
from django.conf import settings

# Variables a child may inherit from the worker (GPU selection, caches, proxies for hubs).
ENV_PASSTHROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "CUDA_VISIBLE_DEVICES",
    "TPU_VISIBLE_DEVICES",
    "TPU_VISIBLE_CHIPS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "JAX_PLATFORMS",
    "HF_HOME",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)


_PR_SET_PDEATHSIG = 1


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Only what a training process needs: never the secret key or a database URL."""
    env = {k: os.environ[k] for k in ENV_PASSTHROUGH if k in os.environ}
    venv_bin = str(Path(settings.TUNIX_PYTHON).parent)
    env["PATH"] = f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def die_with_parent() -> None:
    """In the child, before exec: be killed if the worker that supervises us dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def group_members(pgid: int, not_before: float | None) -> list[psutil.Process]:
    """Live processes of group `pgid` that were created no earlier than the run's child,
    so a recycled group id never points us at someone else's processes."""
    members = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            if not_before is not None and proc.info["create_time"] < not_before - 1:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            members.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return members


def signal_group(pgid: int, not_before: float | None, sig: int) -> None:
    for proc in group_members(pgid, not_before):
        _signal(proc, sig)


def kill_group(pgid: int, not_before: float | None, *, grace: float) -> None:
    """SIGTERM to every process of the group, then SIGKILL to what is left after `grace`."""
    members = group_members(pgid, not_before)
    for proc in members:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while members and time.monotonic() < deadline:
        members = [p for p in members if _alive(p)]
        time.sleep(0.05)
    for proc in group_members(pgid, not_before):
        _signal(proc, signal.SIGKILL)


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error, OSError):
        proc.send_signal(sig)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_alive(pid, create_time) -> bool:
    """Whether process `pid`, created at `create_time` (so not a recycled pid), lives."""
    if not isinstance(pid, int) or not isinstance(create_time, int | float):
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def this_host() -> str:
    """This worker host's name (TUNIXRT_HOST_NAME, else the system's host name)."""
    return settings.HOST_NAME
