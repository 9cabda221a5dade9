"""Shared set-up for the benchmark scripts: a throwaway data folder (SQLite by default, or
DATABASE_URL when set), Django configured and migrated, and real qcluster workers."""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent


def setup_django(**env) -> Path:
    data = Path(tempfile.mkdtemp(prefix="tunixrt-bench-"))
    os.environ.setdefault("TUNIXRT_DATA_DIR", str(data))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixrt.settings")
    os.environ.update({k: str(v) for k, v in env.items()})
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return Path(os.environ["TUNIXRT_DATA_DIR"])


def bench_user():
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench")
    return user


def start_cluster(workers: int = 1, **env) -> subprocess.Popen:
    log = open(Path(os.environ["TUNIXRT_DATA_DIR"]) / "qcluster.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=REPO,
        env={
            **os.environ,
            "TUNIXRT_MAX_CONCURRENT_RUNS": str(workers),
            "TUNIXRT_LOG_LEVEL": "INFO",  # its "ready for work" line tells us it started
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    logfile = Path(log.name)
    deadline = time.monotonic() + 60
    while b"ready for work" not in logfile.read_bytes():
        if time.monotonic() > deadline:
            raise SystemExit("qcluster did not start")
        time.sleep(0.1)
    return proc


def stop_cluster(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_final(run_id, timeout=600):
    from runs.models import TunixRun

    deadline = time.monotonic() + timeout
    while True:
        run = TunixRun.objects.get(id=run_id)
        if run.is_final:
            return run
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not finish")
        time.sleep(0.02)


def median(values):
    return statistics.median(values)


def with_database(url: str, name: str) -> str:
    """The same PostgreSQL server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin_sql(url: str, sql: str) -> None:
    """Run CREATE/DROP DATABASE and the like on the server's maintenance database."""
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql)
