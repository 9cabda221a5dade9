"""`make run`'s serving step (`make serve`, i.e. `manage.py serve`), run as a real process
group the way a terminal or a service manager runs it: SIGTERM to the whole group (what
systemd, `docker stop` and `timeout` send) or SIGINT (Ctrl-C) stops the web server, the
worker and the training run in progress, which ends `cancelled`, within the cancel grace
plus a few seconds. Nothing is left behind."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import psutil
import pytest

from .conftest import REPO, wait_for

pytestmark = pytest.mark.worker

GRACE = 2
# The supervisor checks for a cancel every second; then the grace; then the worker and its
# cluster exit (serve's own margin is 8 s past the grace): well inside this.
STOPPED_WITHIN = GRACE + 12


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A data folder set up as `make run` sets it up (migrate, bootstrap), with a token."""
    data = tmp_path_factory.mktemp("serve-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "TUNIXRT_"))}
    env.update(
        TUNIXRT_DATA_DIR=str(data),
        TUNIXRT_CANCEL_GRACE_SECONDS=str(GRACE),
        TUNIXRT_LAUNCHER_MODULE="tests.programs.tiny_launcher",
        TUNIXRT_QUEUE_POLL_SECONDS="0.1",
        TUNIXRT_MAX_CONCURRENT_RUNS="1",
    )
    manage = [sys.executable, "manage.py"]
    for args in (["migrate", "--noinput", "-v", "0"], ["bootstrap"]):
        subprocess.run(manage + args, cwd=REPO, env=env, check=True, capture_output=True)
    model = data / "models" / "tiny-llama3"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    token = subprocess.run(
        manage + ["create_api_token", "admin"], cwd=REPO, env=env, check=True, capture_output=True
    )
    return {"env": env, "data": data, "token": token.stdout.decode().strip()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url, token, body=None):
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def answers(url) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


def alive(pids) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_to_the_process_group_stops_everything_and_cancels_training(site, tmp_path, sig):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"PY={sys.executable}", f"PORT={port}"],
            cwd=REPO,
            env=site["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )
    try:
        wait_for(lambda: answers(url), timeout=60, message="the server to answer")
        banner = log.read_text()
        assert f"password in {site['data'] / 'admin-password.txt'}" in banner
        run = call(
            f"{url}/api/tunix/run",
            site["token"],
            {
                "dataset_key": "sample-v1",
                "model_id": "local:tiny-llama3",
                "max_steps": 100000,
                "dry_run": False,
            },
        )
        detail = f"{url}/api/tunix/runs/{run['id']}"
        wait_for(
            lambda: (call(detail, site["token"])["progress_step"] or 0) > 0,
            timeout=60,
            message="training to start",
        )
        tree = [make.pid] + [p.pid for p in psutil.Process(make.pid).children(recursive=True)]
        assert len(tree) >= 4  # make, serve, qcluster (+ workers), runserver, training

        os.killpg(make.pid, sig)
        wait_for(
            lambda: not alive(tree),
            timeout=STOPPED_WITHIN,
            message=f"every process to end: {alive(tree)}",
        )
    finally:
        for pid in alive([make.pid]):
            os.killpg(pid, signal.SIGKILL)
    make.wait(timeout=5)
    with sqlite3.connect(site["data"] / "tunixrt.sqlite3") as db:
        status, message = db.execute(
            "SELECT status, message FROM runs_tunixrun WHERE id = ?",
            (run["id"].replace("-", ""),),
        ).fetchone()
    assert status == "cancelled", (message, log.read_text()[-3000:])
    assert "Traceback" not in log.read_text() and "Segmentation" not in log.read_text()
