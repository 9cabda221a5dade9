"""The execution engine against real `qcluster` workers and real child processes."""

import contextlib
import os
import signal
import sys
import threading

import psutil
import pytest
from django.db import connection

from runs import processes, services
from runs.models import LogChunk, Metric, RunStatus, TunixRun

from .conftest import py, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def final(run, timeout=60):
    def done():
        run.refresh_from_db()
        return run.is_final

    wait_for(done, timeout=timeout, message=f"run {run.id} to finish (now {run.status})")
    return run


def log_text(run) -> str:
    return "".join(LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True))


def group_alive(run) -> list:
    run.refresh_from_db()
    if not run.pgid:
        return []
    return processes.group_members(run.pgid, run.environment.get("pid_create_time"))


def test_a_short_command_completes_with_exit_code_0_and_its_logs(start_cluster, run_factory):
    start_cluster()
    run = run_factory(
        mode="local",
        command=py("print('hello from the child'); import sys; print('oops', file=sys.stderr)"),
    )
    assert run.status == RunStatus.PENDING
    final(run)
    assert run.status == RunStatus.COMPLETED
    assert run.exit_code == 0
    assert run.started_at and run.finished_at and run.duration_seconds >= 0
    text = log_text(run)
    assert "hello from the child" in text and "oops" in text
    streams = set(LogChunk.objects.filter(run=run).values_list("stream", flat=True))
    assert {"stdout", "stderr"} <= streams


def test_a_crashing_command_fails_with_its_exit_code(start_cluster, run_factory):
    start_cluster()
    run = final(run_factory(mode="local", command=py("import sys; print('bye'); sys.exit(7)")))
    assert run.status == RunStatus.FAILED
    assert run.exit_code == 7
    assert "exited with code 7" in run.message


def test_launcher_events_become_progress_metrics_and_the_error_reason(start_cluster, run_factory):
    start_cluster()
    code = (
        "import json, sys\n"
        "def e(**k): print(json.dumps(k), flush=True)\n"
        "e(event='phase', phase='training')\n"
        "for s in range(1, 6):\n"
        "    e(event='progress', step=s, total_steps=5)\n"
        "    e(event='metric', name='train/loss', step=s, value=5.0 - s / 10)\n"
        "e(event='metric', name='eval/loss', step=5, value=4.2)\n"
        'print(\'{"event": "metric", "name": "train/loss", "step": 6, "value": NaN}\')\n'
        "print('{not json but braces}')\n"
        "e(event='error', message='training loss became NaN at step 5')\n"
        "sys.exit(3)\n"
    )
    run = final(run_factory(mode="local", command=py(code)))
    assert run.status == RunStatus.FAILED and run.exit_code == 3
    assert run.message == "training loss became NaN at step 5"
    assert (run.progress_step, run.progress_total) == (5, 5)
    losses = list(
        Metric.objects.filter(run=run, name="train/loss")
        .order_by("step")
        .values_list("step", "value")
    )
    assert losses == [(s, 5.0 - s / 10) for s in range(1, 6)]
    assert Metric.objects.filter(run=run, name="eval/loss").count() == 1
    text = log_text(run)
    assert "{not json but braces}" in text
    assert '"event": "metric"' not in text


def test_worker_killed_mid_run_ends_failed_and_leaves_no_process(start_cluster, run_factory):
    cluster = start_cluster(workers=1)
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    run = run_factory(mode="local", command=py(code))
    wait_for(lambda: "started" in log_text(run), timeout=60, message="child start")
    wait_for(lambda: len(group_alive(run)) == 2, message="child and grandchild")
    run.refresh_from_db()
    # SIGKILL the worker process that is supervising this run.
    supervisor = psutil.Process(run.pid).parent()
    assert supervisor.pid in cluster.worker_pids()
    os.kill(supervisor.pid, signal.SIGKILL)
    final(run, timeout=30)
    assert run.status == RunStatus.FAILED
    assert "Worker lost" in run.message
    wait_for(lambda: not group_alive(run), timeout=10, message="no process left")


def test_cancel_while_pending_means_it_never_starts(start_cluster, run_factory, tmp_path):
    marker = tmp_path / "started"
    run = run_factory(mode="local", command=py(f"open({str(marker)!r}, 'w').write('x')"))
    services.run_cancel(run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    start_cluster()
    # A later run on the same queue finishing proves the cancelled run's task was consumed.
    later = final(run_factory(mode="local", command=py("print('after')")))
    assert later.status == RunStatus.COMPLETED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.started_at is None
    assert not marker.exists()


def test_cancel_while_running_kills_the_group_even_if_it_ignores_sigterm(
    start_cluster, run_factory
):
    start_cluster()
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal,time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('stubborn', flush=True)\n"
        "time.sleep(600)\n"
    )
    run = run_factory(mode="local", command=py(code))
    wait_for(lambda: "stubborn" in log_text(run), timeout=60, message="child start")
    wait_for(lambda: len(group_alive(run)) == 2, message="child and grandchild")
    services.run_cancel(run=run)
    final(run, timeout=20)
    assert run.status == RunStatus.CANCELLED
    # Grace is 2 s in these workers; allow the poll interval on top.
    wait_for(lambda: not group_alive(run), timeout=5, message="no process left")
    assert "stopping the process group" in log_text(run)


def test_timeout_kills_the_group_and_ends_timeout(start_cluster, run_factory):
    start_cluster()
    run = run_factory(
        mode="local",
        command=py("import time; print('x', flush=True); time.sleep(600)"),
        timeout_seconds=10,
    )
    final(run, timeout=60)
    assert run.status == RunStatus.TIMEOUT
    assert "Timed out after 10 s" in run.message
    wait_for(lambda: not group_alive(run), timeout=5, message="no process left")


def test_a_grandchild_left_behind_by_a_finished_child_is_killed(start_cluster, run_factory):
    start_cluster()
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('parent done')\n"
    )
    run = final(run_factory(mode="local", command=py(code)))
    assert run.status == RunStatus.COMPLETED
    wait_for(lambda: not group_alive(run), timeout=5, message="no process left")


def test_a_log_flood_without_newlines_is_capped_and_the_run_completes(start_cluster, run_factory):
    cluster = start_cluster(workers=1, TUNIXRT_LOG_CAP_BYTES=1_000_000)
    code = (
        "import sys\n"
        "chunk = 'x' * 65536\n"
        "for _ in range(800): sys.stdout.write(chunk)\n"  # 50 MiB, no newline
        "sys.stdout.write('\\nTHE END\\n')\n"
    )
    run = run_factory(mode="local", command=py(code))
    peak = {"rss": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid in cluster.worker_pids():
                with contextlib.suppress(psutil.Error):
                    peak["rss"] = max(peak["rss"], psutil.Process(pid).memory_info().rss)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        final(run, timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert run.status == RunStatus.COMPLETED
    stored = sum(len(t) for t in LogChunk.objects.filter(run=run).values_list("text", flat=True))
    assert stored < 1_100_000
    assert run.log_dropped_bytes > 49_000_000
    text = log_text(run)
    assert "THE END" in text
    assert "bytes in between were dropped" in text
    assert text.rstrip().endswith("bytes of output were not stored.")
    assert peak["rss"] < 250 * 1024 * 1024


def test_two_workers_execute_each_of_many_runs_exactly_once(start_cluster, run_factory, tmp_path):
    start_cluster(workers=2, name="a")
    start_cluster(workers=2, name="b")
    ledger = tmp_path / "ledger"
    code = (
        "import os\n"
        f"fd = os.open({str(ledger)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "os.write(fd, (os.environ['TUNIXRT_RUN_ID'] + '\\n').encode())\n"
    )
    runs = [run_factory(mode="local", command=py(code)) for _ in range(12)]
    for run in runs:
        final(run, timeout=120)
        assert run.status == RunStatus.COMPLETED
    lines = ledger.read_text().split()
    assert sorted(lines) == sorted(str(r.id) for r in runs)
    hosts = {r.worker_host for r in runs}
    assert hosts


def test_claim_is_exclusive_among_concurrent_claimers(run_factory):
    run = run_factory(mode="local", command=["true"])
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            results.append(services.run_claim(run_id=run.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_a_redelivered_task_for_a_finished_run_returns_at_once(run_factory):
    run = run_factory(mode="local", command=["true"])
    services.run_cancel(run=run)
    assert services.run_execute(run_id=run.id).startswith("skipped")


def test_cancel_racing_completion_leaves_one_final_state(run_factory):
    run = run_factory(mode="local", command=["true"])
    assert services.run_claim(run_id=run.id)
    winners = []
    barrier = threading.Barrier(2)

    def finish(status):
        barrier.wait()
        try:
            winners.append(services.run_finish(run_id=run.id, status=status))
        finally:
            connection.close()

    threads = [
        threading.Thread(target=finish, args=(s,))
        for s in (RunStatus.COMPLETED, RunStatus.CANCELLED)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(winners) == [False, True]
    run.refresh_from_db()
    assert run.is_final


def test_cancelling_a_finished_run_is_a_conflict(run_factory):
    from runs.errors import Conflict

    run = run_factory()
    with pytest.raises(Conflict):
        services.run_cancel(run=run)


def test_the_child_gets_a_minimal_environment(start_cluster, run_factory, settings):
    # The worker has the secret key and a database password in its environment...
    start_cluster(DJANGO_SECRET_KEY=settings.SECRET_KEY, PGPASSWORD="db-password-xyz")
    code = "import json, os; print('ENV=' + json.dumps(dict(os.environ)))"
    run = final(run_factory(mode="local", command=py(code)))
    assert run.status == RunStatus.COMPLETED
    text = log_text(run)
    # ...and the child sees neither.
    assert "DJANGO_SECRET_KEY" not in text and "DATABASE_URL" not in text
    assert settings.SECRET_KEY not in text and "db-password-xyz" not in text
    assert "TUNIXRT_RUN_ID" in text


def test_extra_runs_wait_pending_with_their_place_in_the_queue(start_cluster, run_factory):
    from runs.selectors import queue_position

    start_cluster(workers=1)
    blocker = run_factory(
        mode="local", command=py("import time; print('busy', flush=True); time.sleep(600)")
    )
    wait_for(lambda: TunixRun.objects.get(id=blocker.id).status == RunStatus.RUNNING)
    waiting = [run_factory(mode="local", command=py("print('ok')")) for _ in range(2)]
    assert [queue_position(r) for r in waiting] == [1, 2]
    services.run_cancel(run=blocker)
    for run in waiting:
        assert final(run).status == RunStatus.COMPLETED
    assert sys.executable
