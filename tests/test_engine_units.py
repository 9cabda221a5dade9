"""Engine pieces that need no worker: ETA, reaper decisions, the log cap, the event parser."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from runs import protocol, services, storage, supervisor, training
from runs.models import LogChunk, RunStatus, TunixRun

pytestmark = pytest.mark.django_db


def test_eta_is_linear_in_the_steps_done_since_start(run_factory):
    run = run_factory(mode="local", command=["true"])
    assert run.eta_seconds is None
    now = timezone.now()
    run.status = RunStatus.RUNNING
    run.started_at = now - timedelta(seconds=100)
    run.progress_updated_at = now
    run.progress_step, run.progress_total = 25, 100
    assert run.eta_seconds == pytest.approx(300)
    assert run.progress_fraction == 0.25
    run.resume_from_step = 20  # a resumed run: only 5 steps were done in those 100 s
    assert run.eta_seconds == pytest.approx(1500)


def test_reaper_fails_runs_with_a_stale_heartbeat_and_spares_fresh_ones(run_factory, settings):
    stale = run_factory(mode="local", command=["true"])
    fresh = run_factory(mode="local", command=["true"])
    for run in (stale, fresh):
        assert services.run_claim(run_id=run.id)
    old = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS + 5)
    TunixRun.objects.filter(id=stale.id).update(heartbeat_at=old)
    assert services.runs_reap().startswith("reaped 1")
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == RunStatus.FAILED and "Worker lost" in stale.message
    assert fresh.status == RunStatus.RUNNING


def test_reaper_hands_long_waiting_pending_runs_to_the_queue_again(run_factory, settings):
    run = run_factory(mode="local", command=["true"])
    before = OrmQ.objects.count()
    assert services.runs_reap().endswith("requeued 0")
    old = timezone.now() - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS + 1)
    TunixRun.objects.filter(id=run.id).update(enqueued_at=old)
    assert services.runs_reap().endswith("requeued 1")
    assert OrmQ.objects.count() == before + 1


def test_cancel_of_a_running_run_whose_worker_is_gone_finishes_it(run_factory, settings):
    run = run_factory(mode="local", command=["true"])
    services.run_claim(run_id=run.id)
    old = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS + 5)
    TunixRun.objects.filter(id=run.id).update(heartbeat_at=old)
    run = services.run_cancel(run=run)
    assert run.status == RunStatus.CANCELLED


def test_the_log_cap_keeps_head_and_tail_with_a_marker(run_factory):
    run = run_factory(mode="local", command=["true"])
    writer = supervisor.LogWriter(run.id, cap=1000)
    for i in range(100):
        writer.write("stdout", f"line {i:03d} " + "x" * 40 + "\n")
    texts = list(LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True))
    joined = "".join(texts)
    assert joined.startswith("line 000")
    assert "line 099" in joined
    assert "bytes in between were dropped" in joined
    assert sum(len(t) for t in texts if not t.startswith("[tunix-rt]")) <= 1000
    assert writer.dropped > 0


@pytest.mark.parametrize(
    "line,expected",
    [
        ('{"event": "phase", "phase": "training"}', {"event": "phase", "phase": "training"}),
        ('{"no_event": 1}', None),
        ("{broken", None),
        ('["event"]', None),
        ("plain text", None),
    ],
)
def test_only_json_objects_with_an_event_key_are_events(line, expected):
    assert protocol.parse_event(line) == expected


def test_the_output_archive_holds_the_runs_files_and_no_symlinked_outsiders(
    run_factory, settings, tmp_path
):
    import io
    import tarfile

    run = run_factory(mode="local", command=["true"])
    folder = storage.run_output_path(run)
    (folder / "checkpoints" / "10").mkdir(parents=True)
    (folder / "checkpoints" / "10" / "commit_success.txt").write_text("ok")
    (folder / "notes.txt").write_text("hello")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (folder / "leak.txt").symlink_to(secret)
    data = b"".join(storage.run_output_archive(run))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = sorted(archive.getnames())
    base = folder.name
    assert names == [f"{base}/checkpoints/10/commit_success.txt", f"{base}/notes.txt"]
    assert storage.run_checkpoints(run) == [
        {"step": 10, "complete": True, "path": "checkpoints/10"}
    ]


def test_training_children_share_the_hosts_compilation_cache_unless_it_is_off(settings):
    settings.COMPILE_CACHE_DIR = "/srv/tunixrt/compile-cache"
    env = training.launcher_environment()
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/srv/tunixrt/compile-cache"
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    settings.COMPILE_CACHE_DIR = ""
    assert not any(k.startswith("JAX_") for k in training.launcher_environment())
