"""HTTP over real sockets for the benchmarks: the two servers the Makefile starts and a
keep-alive client that turns off Nagle (TCP_NODELAY) and delayed ACKs (TCP_QUICKACK) on its
side, so what is measured is the server's own behaviour."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVERS = {
    # What `make run` starts (the embedded default).
    "runserver": lambda host, port: [
        sys.executable,
        "manage.py",
        "runserver",
        "--noreload",
        f"{host}:{port}",
    ],
    # What `make serve` starts (production).
    "gunicorn": lambda host, port: [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        "tunixrt/gunicorn_settings.py",
        "--bind",
        f"{host}:{port}",
        "tunixrt.wsgi",
    ],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(kind: str, env: dict, *, port: int | None = None, log: Path | None = None):
    """Start `kind` on 127.0.0.1 and wait until /api/health answers; (process, port)."""
    port = port or free_port()
    argv = SERVERS[kind]("127.0.0.1", port)
    return start_process(argv, env, port=port, health="/api/health", log=log, name=kind)


def start_process(argv, env: dict, *, port: int, health: str, log: Path | None, name: str):
    """Start a server that listens on `port` and wait until `health` answers 200."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            client = KeepAliveClient(port)
            if client.get(health)[0] == 200:
                client.close()
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"{name} did not start (see {log})")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class KeepAliveClient:
    """One HTTP/1.1 connection, reused for every request."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.conn.connect()
        self._tune()
        self.reconnects = 0

    def _tune(self) -> None:
        sock = self.conn.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        return self.request("GET", path, headers=headers)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        """(status, body) of one request on the kept-alive connection."""
        if self.conn.sock is None:  # the server closed the connection after an answer
            self._reconnect()
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the kept-alive connection while it was idle (its keep-alive
            # timeout): once more on a new one, as HTTP clients do.
            self._reconnect()
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
        answer = response.read()
        if hasattr(socket, "TCP_QUICKACK") and self.conn.sock is not None:
            # Linux turns quick ACKs off again by itself; keep them on.
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return response.status, answer

    def _reconnect(self) -> None:
        self.conn.close()
        self.conn.connect()
        self._tune()
        self.reconnects += 1

    def close(self) -> None:
        self.conn.close()


def measure(client: KeepAliveClient, paths, samples: int, headers=None, warmup: int = 20):
    """p50, p95 (ms) and the mean answer size (bytes) of GETs cycling through `paths`."""
    return summary(*timings(client, paths, samples, headers, warmup))


def timings(client: KeepAliveClient, requests, samples: int, headers=None, warmup: int = 20):
    """Times (ms) and answer sizes (bytes) of `samples` requests cycling through `requests`,
    after `warmup` untimed ones. A request is a path (GET) or (method, path, body)."""
    requests = [("GET", r, None) if isinstance(r, str) else r for r in requests]
    times, sizes = [], []
    for i in range(warmup + samples):
        method, path, body = requests[i % len(requests)]
        begin = time.perf_counter()
        status, answer = client.request(method, path, body, headers)
        elapsed = (time.perf_counter() - begin) * 1000
        assert status in (200, 286), (path, status, answer[:200])
        if i >= warmup:
            times.append(elapsed)
            sizes.append(len(answer))
    return times, sizes


def summary(times, sizes):
    """p50, p95 (ms) and the mean answer size (bytes)."""
    cuts = statistics.quantiles(times, n=20, method="inclusive")
    return statistics.median(times), cuts[18], statistics.mean(sizes)
