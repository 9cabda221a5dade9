"""`manage.py serve`: the web server and a queue worker as one foreground service (the last
step of `make run`).

SIGTERM or SIGINT (Ctrl-C), sent to this process alone or to its whole process group (what
a service manager, `docker stop` or `timeout` do), stops everything: the web server at
once; the worker after the training runs it supervises were cancelled (their process
groups get SIGTERM, then SIGKILL after TUNIXRT_CANCEL_GRACE_SECONDS, and the runs are
recorded `cancelled`). Past the grace and a few seconds for the worker to exit, whatever
is left is killed. Each child runs in a process group of its own, so a signal to ours
reaches only this process: qcluster stops its own workers in order, and a worker that got
the group's SIGTERM directly left its cluster waiting for it forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from runs import services

MANAGE = Path(settings.BASE_DIR) / "manage.py"
GUNICORN = Path(settings.BASE_DIR) / "tunixrt" / "gunicorn_settings.py"
# After the cancel grace: time for the supervisor to notice the cancel (it checks every
# second) and for the worker and its cluster to exit.
EXIT_MARGIN_SECONDS = 8


class Command(BaseCommand):
    help = "Serve the web app and a queue worker together; SIGTERM or Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--production",
            action="store_true",
            help="Serve with gunicorn (tunixrt/gunicorn_settings.py) instead of runserver.",
        )

    def handle(self, *args, addrport, production=False, **options):
        self.stop_signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        cluster = _spawn("qcluster")
        if production:
            web = _spawn_program(
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN), "tunixrt.wsgi"],
                env={**os.environ, "TUNIXRT_BIND": addrport},
            )
        else:
            web = _spawn("runserver", "--noreload", addrport)
        self._banner(addrport)
        while self.stop_signal is None and cluster.poll() is None and web.poll() is None:
            time.sleep(0.2)
        if self.stop_signal is not None:
            self.stdout.write(f"Stopping ({signal.Signals(self.stop_signal).name})...")
        else:
            gone = "worker" if cluster.poll() is not None else "web server"
            self.stderr.write(f"The {gone} exited; stopping the rest.")
        self._shutdown(cluster, web)
        if self.stop_signal is None:
            sys.exit(1)

    def _on_signal(self, signum, frame) -> None:
        # A group signal can arrive twice (from the terminal or service manager, and from
        # `make` passing it on): the first one starts the shutdown, later ones change nothing.
        if self.stop_signal is None:
            self.stop_signal = signum

    def _banner(self, addrport: str) -> None:
        url = f"http://{addrport}/"
        note = Path(settings.DATA_DIR) / "admin-password.txt"
        if note.exists():
            username = note.read_text().split("\n", 1)[0] or "admin"
            login = (
                f"Log in as '{username}' with the password in {note} (written at the first "
                "start; `manage.py changepassword` sets another)."
            )
        else:
            login = "Log in with a staff user (`manage.py createsuperuser` makes one)."
        self.stdout.write(
            f"\ntunix-rt is at {url}  API docs: {url}api/docs\n{login}\nStop with Ctrl-C.\n"
        )
        self.stdout.flush()

    def _shutdown(self, cluster: subprocess.Popen, web: subprocess.Popen) -> None:
        deadline = time.monotonic() + settings.CANCEL_GRACE_SECONDS + EXIT_MARGIN_SECONDS
        _signal(web, signal.SIGTERM)
        # To qcluster's main process only: it stops taking tasks and waits for its workers;
        # we cancel what they are running so that they can finish.
        _signal(cluster, signal.SIGTERM)
        groups: set[int] = set()
        while cluster.poll() is None and time.monotonic() < deadline:
            pids, pgids = _descendants(cluster.pid)
            groups |= pgids
            with contextlib.suppress(Exception):  # a database hiccup must not block the exit
                close_old_connections()
                services.runs_cancel_supervised_by(pids=pids)
            time.sleep(0.2)
        # Past the deadline (or after a clean exit, where this finds nothing): no process of
        # ours outlives this command.
        groups |= _descendants(cluster.pid)[1]
        for proc in (cluster, web):
            groups.add(proc.pid)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for proc in (cluster, web):
            proc.wait()


def _spawn(*argv: str) -> subprocess.Popen:
    return _spawn_program([sys.executable, str(MANAGE), *argv])


def _spawn_program(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        env=env,
        start_new_session=True,  # its own process group: see the module's docstring
        preexec_fn=_stop_with_parent,  # noqa: PLW1509 - only async-signal-safe work
    )


def _stop_with_parent() -> None:
    """In the child: get SIGTERM if this command dies without its shutdown (SIGKILL)."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _descendants(pid: int) -> tuple[set[int], set[int]]:
    """The pids under `pid` (workers, training children and theirs) and their process
    groups (a training child leads a group of its own)."""
    pids, pgids = set(), set()
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            pids.add(child.pid)
            with contextlib.suppress(OSError):
                pgids.add(os.getpgid(child.pid))
    return pids, pgids
