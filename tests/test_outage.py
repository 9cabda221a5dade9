"""A database outage does not fail a run: a real qcluster supervises a real child while the
database goes away. On PostgreSQL the server is stopped and started again (the throwaway
cluster of .ci/throwaway-postgres, named by TUNIXRT_TEST_PG_DIR); on SQLite another
connection holds the write lock past the busy timeout ("database is locked")."""

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from runs import processes
from runs.models import LogChunk, Metric, RunStatus, TunixRun

from .conftest import REPO, database_env, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

STEPS = 30
# The child writes each step to the log, as a metric, and to a file the test can read while
# the database is away (so the test knows training went on meanwhile).
CHILD = """
import json, sys, time
steps, trace = int(sys.argv[1]), sys.argv[2]
for step in range(1, steps + 1):
    print(f"line {step} of the training log", flush=True)
    print(json.dumps({"event": "progress", "step": step, "total_steps": steps}), flush=True)
    print(json.dumps({"event": "metric", "name": "train/loss", "step": step,
                      "value": 1.0 / step}), flush=True)
    with open(trace, "a") as handle:
        handle.write(f"{step}\\n")
    time.sleep(float(sys.argv[3]))
"""


def child(tmp_path: Path, steps: int, pause: float) -> list[str]:
    return [sys.executable, "-c", CHILD, str(steps), str(tmp_path / "trace"), str(pause)]


def steps_done(tmp_path: Path) -> int:
    trace = tmp_path / "trace"
    return len(trace.read_text().split()) if trace.exists() else 0


def log_text(run) -> str:
    return "".join(LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True))


def final(run, timeout=90):
    def done():
        with contextlib.suppress(Exception):
            run.refresh_from_db()
            return run.is_final
        connection.close()  # the database came back: a fresh connection
        return False

    wait_for(done, timeout=timeout, interval=0.2, message=f"run {run.id} to finish")
    return run


class Postgres:
    """Stop and start the test's own PostgreSQL server."""

    def __init__(self, folder: str):
        self.folder = folder

    def _ctl(self, action: str) -> None:
        subprocess.run(
            [str(REPO / ".ci" / "throwaway-postgres"), action, self.folder],
            check=True,
            timeout=90,
        )

    @contextlib.contextmanager
    def down(self):
        connection.close()
        self._ctl("pause")
        try:
            yield
        finally:
            self._ctl("resume")
            connection.close()


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL outage needs PostgreSQL")
    folder = os.environ.get("TUNIXRT_TEST_PG_DIR")
    if not folder or not Path(folder, "options").exists():
        pytest.skip("TUNIXRT_TEST_PG_DIR names no throwaway server (make test sets it)")
    return Postgres(folder)


@pytest.mark.alone
def test_a_run_lives_through_an_8_second_postgresql_outage(
    start_cluster, run_factory, postgres, tmp_path
):
    start_cluster(workers=1, TUNIXRT_HEARTBEAT_STALE_SECONDS=25)
    run = run_factory(mode="local", command=child(tmp_path, STEPS, 0.5))
    wait_for(lambda: steps_done(tmp_path) >= 3, timeout=60, message="training to start")
    wait_for(lambda: "line 2 " in log_text(run), timeout=30, message="the log to arrive")
    with postgres.down():
        began, before = time.monotonic(), steps_done(tmp_path)
        # The outage lasts 8 s, and training goes on meanwhile.
        wait_for(
            lambda: time.monotonic() - began >= 8 and steps_done(tmp_path) > before + 4,
            timeout=30,
            message="8 s of training without a database",
        )
    final(run)
    assert run.status == RunStatus.COMPLETED, run.message
    text = log_text(run)
    for step in range(1, STEPS + 1):
        assert f"line {step} of the training log" in text
    assert "the database was unreachable for" in text
    assert Metric.objects.filter(run=run, name="train/loss").count() == STEPS
    assert run.progress_step == STEPS


@pytest.mark.alone
def test_an_outage_longer_than_the_window_stops_the_child_and_fails_the_run(
    start_cluster, run_factory, postgres, tmp_path
):
    start_cluster(workers=1, TUNIXRT_HEARTBEAT_STALE_SECONDS=5)
    run = run_factory(mode="local", command=child(tmp_path, 100_000, 0.2))
    wait_for(lambda: steps_done(tmp_path) >= 3, timeout=60, message="training to start")
    wait_for(lambda: TunixRun.objects.get(id=run.id).pgid, message="the child's group")
    run.refresh_from_db()
    pgid, born = run.pgid, run.environment.get("pid_create_time")
    with postgres.down():
        # Still without a database: the supervisor itself stops the whole group.
        wait_for(
            lambda: not processes.group_members(pgid, born),
            timeout=40,
            message="the supervisor to stop the child while the database is away",
        )
    final(run)
    assert run.status == RunStatus.FAILED
    assert "database was unreachable" in run.message
    assert not processes.group_members(pgid, born)


@pytest.mark.parametrize("until", ["training goes on", "the child has exited"])
def test_sqlite_locked_past_its_busy_timeout_does_not_fail_the_run(
    start_cluster, run_factory, tmp_path, until
):
    """The lock ends while the child trains (a periodic store notices the database is
    back), or only after the child exited (the supervisor's last store notices): either
    way the output of that time is buffered, stored, and the outage is said in the log."""
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite lock case")
    cluster = start_cluster(workers=1, TUNIXRT_HEARTBEAT_STALE_SECONDS=25, TUNIXRT_SQLITE_TIMEOUT=1)
    steps = 40 if until == "training goes on" else 20
    run = run_factory(mode="local", command=child(tmp_path, steps, 0.3))
    wait_for(lambda: "line 2 " in log_text(run), timeout=60, message="the log to arrive")
    exited = f"run {run.id}: the training process exited"

    def long_enough() -> bool:
        if time.monotonic() - began < 5 or steps_done(tmp_path) <= before + 4:
            return False
        # The supervisor says so (in its log, not the locked database) before its last store.
        return until == "training goes on" or exited in cluster.log_path.read_text(errors="replace")

    path = database_env()["TUNIXRT_SQLITE_PATH"]
    locker = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        began, before = time.monotonic(), steps_done(tmp_path)
        wait_for(long_enough, timeout=40, message=f"the lock to last until {until}")
    finally:
        locker.execute("COMMIT")
        locker.close()
    final(run)
    assert run.status == RunStatus.COMPLETED, run.message
    text = log_text(run)
    for step in range(1, steps + 1):
        assert f"line {step} of the training log" in text
    assert "the database was unreachable for" in text
    assert Metric.objects.filter(run=run).count() == steps


def test_any_other_database_error_in_the_supervisor_stops_the_child(
    run_factory, monkeypatch, tmp_path
):
    from django.db import ProgrammingError

    from runs import services
    from runs.supervisor import Supervisor

    def broken(self):
        raise ProgrammingError("a bug, not an outage")

    monkeypatch.setattr(Supervisor, "_check_cancel", broken)
    run = run_factory(mode="local", command=child(tmp_path, 100_000, 0.2))
    assert services.run_execute(run_id=run.id) == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "a bug, not an outage" in run.message
    assert steps_done(tmp_path) >= 1
    assert not processes.group_members(run.pgid, run.environment.get("pid_create_time"))
