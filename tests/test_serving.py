"""The servers the Makefile starts: `make run`'s runserver sets TCP_NODELAY on every
connection; `make serve`'s gunicorn keeps connections alive, and its liveness check answers
while the database is down (readiness says it is down)."""

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from django.core.management import get_commands, load_command_class

from .conftest import REPO, wait_for


def test_runserver_is_ours_and_sets_tcp_nodelay_on_each_connection():
    assert get_commands()["runserver"] == "runs"
    command = load_command_class("runs", "runserver")
    server_cls = command.server_cls
    listener = socket.create_server(("127.0.0.1", 0))
    server = server_cls.__new__(server_cls)
    server.socket = listener
    client = socket.create_connection(listener.getsockname())
    try:
        accepted, _ = server.get_request()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        accepted.close()
    finally:
        client.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gunicorn_keeps_the_connection_and_is_live_without_its_database(tmp_path):
    port = free_port()
    # A PostgreSQL address where nothing listens: the database is down.
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://nobody:x@127.0.0.1:{free_port()}/none",
        "TUNIXRT_DATA_DIR": str(tmp_path),
        "TUNIXRT_WEB_WORKERS": "1",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "-c",
            "tunixrt/gunicorn_settings.py",
            "--bind",
            f"127.0.0.1:{port}",
            "tunixrt.wsgi",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, timeout=60, message="gunicorn to listen")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/health")
        health = conn.getresponse()
        assert (health.status, health.read()) == (200, b'{"status":"ok"}')
        first_socket = conn.sock
        conn.request("GET", "/api/ready")
        ready = conn.getresponse()
        assert ready.status == 503 and b"unavailable" in ready.read()
        assert conn.sock is first_socket  # the same connection served both
        conn.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
