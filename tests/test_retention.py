"""Retention: which runs go, that their rows and files go together, and that passes that
die, repeat or overlap leave nothing half-deleted."""

import json
import os
import pty
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

from runs import services, storage, tasks
from runs.datasets import services as dataset_services
from runs.errors import Conflict, InvalidInput
from runs.models import EvaluationRow, FolderDeletion, LogChunk, Metric, RunStatus, TunixRun
from runs.services import retention

from .conftest import REPO, database_env

DAY = timedelta(days=1)


def make_run(
    run_factory, *, finished=None, status="completed", pinned=False, files=True, chunks=3, metrics=2
):
    """A run as the worker leaves it: rows, log chunks, metrics and a folder with files."""
    run = run_factory()
    LogChunk.objects.bulk_create(
        LogChunk(run=run, seq=i + 1, stream="stdout", text=f"line {i}\n" * 10)
        for i in range(chunks)
    )
    Metric.objects.bulk_create(
        Metric(run=run, name="train/loss", step=i + 1, value=1.0 / (i + 1)) for i in range(metrics)
    )
    TunixRun.objects.filter(id=run.id).update(
        status=status, finished_at=finished, pinned=pinned, log_bytes=chunks * 70
    )
    if files:
        folder = storage.run_output_path(run)
        (folder / "checkpoints" / "1").mkdir(parents=True)
        (folder / "checkpoints" / "1" / "weights.bin").write_bytes(b"w" * 1000)
        (folder / "config.json").write_bytes(b"{}" * 12)
    run.refresh_from_db()
    return run


def exists(run) -> bool:
    return TunixRun.objects.filter(id=run.id).exists()


def folder(run) -> Path:
    return storage.run_output_path(run)


@pytest.mark.django_db
def test_runs_finished_more_than_n_days_ago_go_and_the_boundary_day_stays(run_factory):
    now = timezone.now()
    cutoff = now - 30 * DAY
    long_ago = make_run(run_factory, finished=now - 400 * DAY)
    just_over = make_run(run_factory, finished=cutoff - timedelta(microseconds=1))
    exactly = make_run(run_factory, finished=cutoff)
    just_under = make_run(run_factory, finished=cutoff + timedelta(seconds=1))
    recent = make_run(run_factory, finished=now - DAY, status=RunStatus.FAILED)

    summary = services.runs_prune(older_than_days=30, now=now)

    assert not exists(long_ago) and not exists(just_over)
    assert exists(exactly) and exists(just_under) and exists(recent)
    for gone in (long_ago, just_over):
        assert not folder(gone).exists()
        assert not LogChunk.objects.filter(run_id=gone.id).exists()
        assert not Metric.objects.filter(run_id=gone.id).exists()
    for kept in (exactly, just_under, recent):
        assert (folder(kept) / "checkpoints" / "1" / "weights.bin").is_file()
        assert LogChunk.objects.filter(run_id=kept.id).count() == 3
    assert (summary.runs, summary.log_chunks, summary.metrics) == (2, 6, 4)
    assert summary.file_bytes == 2 * 1024
    assert summary.log_bytes == 2 * 210
    assert summary.bytes_freed == 2 * 1024 + 2 * 210
    assert not FolderDeletion.objects.exists()
    assert "Deleted 2 runs" in str(summary)


@pytest.mark.django_db
def test_pinned_and_active_runs_are_never_pruned(run_factory):
    old = timezone.now() - 365 * DAY
    pinned = make_run(run_factory, finished=old, pinned=True)
    # Active runs have no finished_at; one that somehow has one is still never touched.
    pending = make_run(run_factory, finished=None, status=RunStatus.PENDING)
    running = make_run(run_factory, finished=old, status=RunStatus.RUNNING)
    unfinished = make_run(run_factory, finished=None, status=RunStatus.FAILED)
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED):
        make_run(run_factory, finished=old, status=status)

    summary = services.runs_prune(older_than_days=1)

    assert summary.runs == 4
    assert set(TunixRun.objects.values_list("id", flat=True)) == {
        pinned.id,
        pending.id,
        running.id,
        unfinished.id,
    }
    for kept in (pinned, pending, running, unfinished):
        assert folder(kept).is_dir() and LogChunk.objects.filter(run_id=kept.id).count() == 3


@pytest.mark.django_db
def test_unpinning_makes_a_run_prunable_again(run_factory):
    run = make_run(run_factory, finished=timezone.now() - 90 * DAY)
    services.run_set_pinned(run=run, pinned=True)
    assert services.runs_prune(older_than_days=30).runs == 0
    services.run_set_pinned(run=run, pinned=False)
    assert services.runs_prune(older_than_days=30).runs == 1
    assert not exists(run)


@pytest.mark.django_db
def test_a_pruned_parent_leaves_its_continued_runs_in_place_unlinked(run_factory):
    parent = make_run(run_factory, finished=timezone.now() - 60 * DAY)
    child = make_run(run_factory, finished=timezone.now())
    TunixRun.objects.filter(id=child.id).update(parent=parent)
    assert services.runs_prune(older_than_days=30).runs == 1
    child.refresh_from_db()
    assert child.parent_id is None and not exists(parent)


def make_job(run_factory, source, *, kind="evaluate", status="completed", finished=None):
    """An evaluation or export of `source`, as the worker leaves it, with evaluation rows."""
    job = make_run(run_factory, finished=finished or timezone.now(), status=status)
    TunixRun.objects.filter(id=job.id).update(kind=kind, source=source)
    EvaluationRow.objects.bulk_create(
        EvaluationRow(
            evaluation=job, index=i, prompt="p", reference="r", base_output="b",
            tuned_output="t", base_score=0.0, tuned_score=1.0, change="better",
        )
        for i in range(3)
    )  # fmt: skip
    return job


@pytest.mark.django_db
def test_a_pruned_run_takes_its_evaluations_and_exports_with_their_rows_and_folders(run_factory):
    source = make_run(run_factory, finished=timezone.now() - 60 * DAY)
    evaluation = make_job(run_factory, source)
    export = make_job(run_factory, source, kind="export")
    TunixRun.objects.filter(id=export.id).update(pinned=True)  # a job goes with its run
    other = make_run(run_factory, finished=timezone.now() - 60 * DAY)

    summary = services.runs_prune(older_than_days=30, batch_size=1)

    assert TunixRun.objects.count() == 0
    assert (summary.runs, summary.log_chunks, summary.metrics) == (4, 12, 8)
    assert summary.file_bytes == 4 * 1024 and summary.log_bytes == 4 * 210
    for gone in (source, evaluation, export, other):
        assert not folder(gone).exists()
    assert not EvaluationRow.objects.exists() and not LogChunk.objects.exists()
    assert not FolderDeletion.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING])
def test_a_run_that_an_active_evaluation_reads_is_kept(run_factory, status):
    source = make_run(run_factory, finished=timezone.now() - 60 * DAY)
    job = make_job(run_factory, source, status=status)
    TunixRun.objects.filter(id=job.id).update(finished_at=None)
    assert services.runs_prune(older_than_days=30).runs == 0
    assert exists(source) and exists(job) and folder(source).is_dir()
    assert EvaluationRow.objects.count() == 3


@pytest.mark.django_db
def test_an_evaluation_created_after_the_batch_was_read_keeps_its_run(run_factory, monkeypatch):
    source = make_run(run_factory, finished=timezone.now() - 60 * DAY)
    job = make_job(run_factory, source, status=RunStatus.PENDING)
    real, calls = retention.prunable, []

    def blind_to_the_new_job(cutoff):
        # The first selection read the runs just before the job was committed.
        calls.append(cutoff)
        if len(calls) > 2:
            return real(cutoff)
        return TunixRun.objects.filter(finished_at__lt=cutoff, status="completed")

    monkeypatch.setattr(retention, "prunable", blind_to_the_new_job)
    summary = services.runs_prune(older_than_days=30)
    assert summary.runs == 0 and len(calls) == 3  # the count, the try refused, the retry
    assert exists(source) and exists(job) and folder(source).is_dir()


@pytest.mark.django_db
def test_runs_go_through_the_orm_when_something_listens_for_their_deletion(run_factory):
    from django.db.models.signals import post_delete

    seen = []
    post_delete.connect(
        lambda sender, instance, **kwargs: seen.append(instance.id),
        sender=TunixRun,
        weak=False,
        dispatch_uid="test-prune-listener",
    )
    try:
        parent = make_run(run_factory, finished=timezone.now() - 60 * DAY)
        child = make_run(run_factory, finished=timezone.now())
        TunixRun.objects.filter(id=child.id).update(parent=parent)
        summary = services.runs_prune(older_than_days=30)
    finally:
        post_delete.disconnect(sender=TunixRun, dispatch_uid="test-prune-listener")
    assert seen == [parent.id]
    assert (summary.runs, summary.log_chunks, summary.metrics) == (1, 3, 2)
    child.refresh_from_db()
    assert child.parent_id is None and not folder(parent).exists()


@pytest.mark.django_db
def test_a_dry_run_counts_what_would_go_and_changes_nothing(run_factory):
    old = timezone.now() - 60 * DAY
    runs = [make_run(run_factory, finished=old) for _ in range(3)]
    make_run(run_factory, finished=timezone.now())

    summary = services.runs_prune(older_than_days=30, dry_run=True)

    assert (summary.runs, summary.log_chunks, summary.metrics) == (3, 9, 6)
    assert summary.file_bytes == 3 * 1024
    assert str(summary).startswith("Would delete 3 runs")
    assert TunixRun.objects.count() == 4 and LogChunk.objects.count() == 12
    assert all(folder(run).is_dir() for run in runs)


@pytest.mark.django_db
def test_pruning_twice_deletes_nothing_the_second_time(run_factory):
    old = timezone.now() - 60 * DAY
    for _ in range(3):
        make_run(run_factory, finished=old)
    keep = make_run(run_factory, finished=timezone.now())
    assert services.runs_prune(older_than_days=30).runs == 3
    again = services.runs_prune(older_than_days=30)
    assert (again.runs, again.log_chunks, again.file_bytes, again.orphans) == (0, 0, 0, 0)
    assert list(TunixRun.objects.values_list("id", flat=True)) == [keep.id]


@pytest.mark.django_db
def test_runs_go_in_batches_oldest_first_with_progress(run_factory):
    now = timezone.now()
    runs = [make_run(run_factory, finished=now - (40 + i) * DAY, files=False) for i in range(5)]
    calls = []
    summary = services.runs_prune(
        older_than_days=30, batch_size=2, progress=lambda done, total: calls.append((done, total))
    )
    assert summary.runs == 5 and not any(exists(run) for run in runs)
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]


@pytest.mark.django_db
def test_bad_arguments_are_refused_and_delete_nothing(run_factory):
    make_run(run_factory, finished=timezone.now() - 60 * DAY)
    with pytest.raises(InvalidInput):
        services.runs_prune(older_than_days=0)
    with pytest.raises(InvalidInput):
        services.runs_prune(older_than_days=30, batch_size=0)
    assert TunixRun.objects.count() == 1


@pytest.mark.django_db
def test_a_pass_that_died_after_its_commit_is_finished_by_a_later_pass(run_factory):
    now = timezone.now()
    run = make_run(run_factory, finished=now - 60 * DAY)
    summary = retention.PruneSummary(cutoff=now - 30 * DAY)
    # Step 1 only, as if the process died right after the rows were committed.
    retention.delete_batch(
        cutoff=summary.cutoff, after=None, batch_size=10, summary=summary, now=now
    )
    assert not exists(run) and folder(run).is_dir()
    assert FolderDeletion.objects.get().paths == [run.output_dir]

    # While the dead pass's claim is fresh another pass leaves it alone...
    assert services.runs_prune(older_than_days=30).leftovers == 0
    assert folder(run).is_dir()
    # ...and takes it over once the claim has expired.
    FolderDeletion.objects.update(claimed_at=now - retention.CLAIM_LEASE - timedelta(minutes=1))
    later = services.runs_prune(older_than_days=30)
    assert later.leftovers == 1 and later.file_bytes == 1024
    assert not folder(run).exists() and not FolderDeletion.objects.exists()


@pytest.mark.django_db
def test_a_leftover_record_never_removes_a_folder_that_a_run_uses_again(run_factory):
    run = make_run(run_factory, finished=timezone.now())
    FolderDeletion.objects.create(paths=[run.output_dir], claimed_at=None)
    summary = services.runs_prune(older_than_days=30)
    assert summary.leftovers == 1 and summary.file_bytes == 0
    assert folder(run).is_dir() and not FolderDeletion.objects.exists()


@pytest.mark.django_db
def test_orphaned_run_folders_are_removed_and_nothing_else(run_factory, settings, tmp_path):
    old = time.time() - 2 * 3600
    artifacts = Path(settings.ARTIFACTS_DIR)
    orphan = make_run(run_factory, finished=timezone.now())
    fresh_orphan = make_run(run_factory, finished=timezone.now())
    alive = make_run(run_factory, finished=timezone.now())
    # Rows deleted without their files (a shell, or Django's plain delete).
    TunixRun.objects.filter(id__in=[orphan.id, fresh_orphan.id]).delete()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    link = artifacts / "runs" / "00000000-0000-4000-8000-000000000001"
    link.symlink_to(outside, target_is_directory=True)
    (artifacts / "runs" / "notes").mkdir()
    (artifacts / "runs" / "00000000-0000-4000-8000-000000000002").write_text("a file")
    for path in (folder(orphan), folder(alive), link, artifacts / "runs" / "notes"):
        os.utime(path, (old, old), follow_symlinks=False)

    dry = services.runs_prune(older_than_days=30, dry_run=True)
    assert dry.orphans == 1 and folder(orphan).is_dir()
    summary = services.runs_prune(older_than_days=30)

    assert summary.orphans == 1 and summary.file_bytes == 1024
    assert not folder(orphan).exists()
    assert folder(fresh_orphan).is_dir()  # too recent to be sure
    assert folder(alive).is_dir()
    assert link.is_symlink() and (outside / "keep.txt").read_text() == "not ours"
    assert (artifacts / "runs" / "notes").is_dir()
    assert (artifacts / "runs" / "00000000-0000-4000-8000-000000000002").is_file()


@pytest.mark.django_db
def test_a_stored_folder_outside_the_artifacts_root_is_never_touched(run_factory, tmp_path):
    run = make_run(run_factory, finished=timezone.now() - 60 * DAY, files=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    TunixRun.objects.filter(id=run.id).update(output_dir="../outside")
    summary = services.runs_prune(older_than_days=30)
    assert summary.runs == 1 and summary.file_bytes == 0
    assert (outside / "keep.txt").read_text() == "not ours"


@pytest.mark.django_db
def test_deleting_one_run_removes_its_rows_and_folder(run_factory):
    run = make_run(run_factory, finished=timezone.now())
    assert services.run_delete(run=run) == 1024
    assert not exists(run) and not folder(run).exists()
    assert not LogChunk.objects.exists() and not FolderDeletion.objects.exists()


@pytest.mark.django_db
def test_a_dataset_is_deleted_with_its_file_only_when_no_run_uses_it(
    run_factory, dataset, staff_user, django_capture_on_commit_callbacks
):
    run = make_run(run_factory, finished=timezone.now())
    # A local run (a finished dry-run would not hold the dataset back).
    TunixRun.objects.filter(id=run.id).update(mode="local")
    path = storage.dataset_path(dataset)
    with pytest.raises(Conflict, match="used by 1 run"):
        dataset_services.dataset_delete(dataset=dataset, user=staff_user)
    assert path.is_file()
    services.run_delete(run=run)
    with django_capture_on_commit_callbacks(execute=True):  # the file goes after the commit
        dataset_services.dataset_delete(dataset=dataset, user=staff_user)
    assert not path.exists() and not type(dataset).objects.exists()


@pytest.mark.django_db
def test_the_daily_task_prunes_with_the_retention_setting(run_factory, settings):
    from django_q.tasks import async_task, result

    now = timezone.now()
    old = make_run(run_factory, finished=now - 11 * DAY)
    young = make_run(run_factory, finished=now - 9 * DAY)
    settings.RETENTION_DAYS = 0
    assert "off" in tasks.prune_runs()
    assert exists(old)
    settings.RETENTION_DAYS = 10
    # Through django-q2 itself (sync mode runs the task inline and records its result).
    task_id = async_task("runs.tasks.prune_runs", sync=True)
    assert result(task_id).startswith("Deleted 1 runs")
    assert not exists(old) and exists(young)


@pytest.mark.django_db
def test_the_retention_schedule_exists_once_after_migrating_twice():
    call_command("migrate", verbosity=0)
    schedule = Schedule.objects.get(name="tunixrt-retention")
    moved = timezone.now() + 5 * DAY
    Schedule.objects.filter(pk=schedule.pk).update(next_run=moved)
    call_command("migrate", verbosity=0)
    schedules = Schedule.objects.filter(func="runs.tasks.prune_runs")
    assert schedules.count() == 1
    again = schedules.get()
    assert (again.pk, again.schedule_type, again.repeats) == (schedule.pk, Schedule.DAILY, -1)
    assert again.next_run == moved  # re-running the hook never moves the next pass


@pytest.mark.django_db
def test_the_command_prints_a_summary_and_refuses_bad_ages(run_factory, settings):
    make_run(run_factory, finished=timezone.now() - 60 * DAY)
    out = StringIO()
    call_command("prune_runs", "--older-than", "30", "--dry-run", stdout=out)
    assert "Would delete 1 runs" in out.getvalue() and "\r" not in out.getvalue()
    out = StringIO()
    call_command("prune_runs", "--json", stdout=out)  # TUNIXRT_RETENTION_DAYS (30)
    assert json.loads(out.getvalue())["runs"] == 1
    with pytest.raises(CommandError, match="at least 1"):
        call_command("prune_runs", "--older-than", "0")
    settings.RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="Retention is off"):
        call_command("prune_runs")


def prune_process(settings, *args, stdout=subprocess.PIPE):
    """A real `manage.py prune_runs` against the test database and this test's folders."""
    env = {
        **os.environ,
        **database_env(),
        "TUNIXRT_ARTIFACTS_DIR": str(settings.ARTIFACTS_DIR),
        "TUNIXRT_DATASETS_DIR": str(settings.DATASETS_DIR),
        "TUNIXRT_MODELS_DIR": str(settings.MODELS_DIR),
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "prune_runs", *args],
        cwd=REPO,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def test_the_command_draws_a_progress_bar_on_a_terminal(transactional_db, run_factory, settings):
    for _ in range(3):
        make_run(run_factory, finished=timezone.now() - 60 * DAY, files=False)
    primary, secondary = pty.openpty()
    proc = prune_process(settings, "--older-than", "30", "--batch-size", "1", stdout=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(primary)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    text = output.decode()
    assert "\r[" in text and "3/3 runs 100%" in text
    assert "Deleted 3 runs" in text
    assert TunixRun.objects.count() == 0


def test_two_passes_at_once_delete_each_run_exactly_once(transactional_db, run_factory, settings):
    old = timezone.now() - 60 * DAY
    doomed = [make_run(run_factory, finished=old, chunks=2) for _ in range(60)]
    kept = [make_run(run_factory, finished=timezone.now()) for _ in range(3)]
    kept.append(make_run(run_factory, finished=old, pinned=True))
    # One run per transaction, so the two passes interleave batch by batch.
    args = ("--older-than", "30", "--batch-size", "1", "--json")
    procs = [prune_process(settings, *args) for _ in range(2)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    summaries = [json.loads(out) for out, _ in outputs]
    assert sum(s["runs"] for s in summaries) == 60
    assert sum(s["log_chunks"] for s in summaries) == 120
    assert sum(s["file_bytes"] for s in summaries) == 60 * 1024
    assert set(TunixRun.objects.values_list("id", flat=True)) == {run.id for run in kept}
    assert not any(folder(run).exists() for run in doomed)
    assert all(folder(run).is_dir() for run in kept)
    assert LogChunk.objects.count() == 3 * len(kept)
    assert not FolderDeletion.objects.exists()


def test_a_folder_is_removed_in_one_walk_without_following_symlinks(tmp_path):
    from runs.services.folder_removal import remove_folder

    target = tmp_path / "run"
    (target / "checkpoints" / "1" / "deep").mkdir(parents=True)
    (target / "checkpoints" / "1" / "weights.bin").write_bytes(b"w" * 1000)
    (target / "checkpoints" / "1" / "deep" / "state").write_bytes(b"s" * 20)
    (target / "config.json").write_bytes(b"c" * 4)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"k" * 100)
    (target / "link").symlink_to(outside, target_is_directory=True)
    (target / "checkpoints" / "file-link").symlink_to(outside / "keep.txt")

    assert remove_folder(target) == (1024, True)
    assert not os.path.lexists(target)
    assert (outside / "keep.txt").read_bytes() == b"k" * 100
    assert remove_folder(target) == (0, True)  # already gone
    link = tmp_path / "a-link"
    link.symlink_to(outside, target_is_directory=True)
    assert remove_folder(link) == (0, False)  # never followed
    assert (outside / "keep.txt").is_file()
