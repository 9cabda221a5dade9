"""The worker's side of the playground's generation server (runs/launcher/serve.py): one per
worker host, started lazily by the first prompt that finds none, in the training interpreter,
with the launcher's minimal environment; it dies with the worker process that started it and
exits by itself when idle. Talks over a Unix socket (one JSON line each way)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from django.conf import settings

from . import processes, training


class ServerError(Exception):
    """The generation server could not be started or did not answer."""


def socket_path() -> str:
    """Short (Unix sockets allow ~100 bytes) and unique per data folder and user."""
    key = hashlib.sha256(f"{settings.ARTIFACTS_DIR}:{os.getuid()}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"tunixrt-gen-{key}.sock")


def _log_path() -> Path:
    return Path(settings.ARTIFACTS_DIR) / "playground-server.log"


def _ask(request: dict, timeout: float) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(socket_path())
        client.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = client.recv(65536)
            if not part:
                break
            data += part
    if not data:
        raise ServerError("The generation server closed the connection without an answer.")
    return json.loads(data)


def _start() -> None:
    """Start the server unless another worker of this host is starting it (a file lock)."""
    with open(socket_path() + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _reachable():
            return
        command = [
            settings.TUNIX_PYTHON,
            "-m",
            "runs.launcher.serve",
            socket_path(),
            "--models",
            str(settings.PLAYGROUND_MODELS),
            "--idle",
            str(settings.PLAYGROUND_IDLE_SECONDS),
        ]
        log = _log_path().open("ab")
        subprocess.Popen(  # noqa: S603 - our own argv, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=processes.child_environment(training.launcher_environment()),
            cwd=str(settings.BASE_DIR),
            preexec_fn=processes.die_with_parent,  # noqa: PLW1509 - prctl only
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + settings.PLAYGROUND_START_SECONDS
        while not _reachable():
            if time.monotonic() > deadline:
                raise ServerError(
                    f"The generation server did not start; see {_log_path().name} in the "
                    "artifacts folder."
                )
            time.sleep(0.1)


def _reachable() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_path())
        except OSError:
            return False
    # A bare connect is one accepted connection with no request: the server reads an empty
    # line, answers an error and goes on.
    return True


def generate(request: dict, *, timeout: float) -> dict:
    """Send one request; start the server first when there is none."""
    try:
        return _ask(request, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            if not _reachable():
                os.unlink(socket_path())
        _start()
        return _ask(request, timeout)
    except (OSError, ValueError) as exc:
        raise ServerError(f"The generation server did not answer: {exc}") from exc
