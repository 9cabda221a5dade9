"""The operators' admin: pages render, the detail is read-only and escaped, and every action
goes through the services (so files go with rows and active runs are refused)."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from runs import services, storage
from runs.models import Dataset, LogChunk, Metric, RunStatus, TunixRun

from .conftest import py

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/runs/tunixrun/"


def change_url(run):
    return reverse("admin:runs_tunixrun_change", args=[run.id])


def finished_run(run_factory, *, status=RunStatus.COMPLETED, log="hello\n", **kwargs):
    run = run_factory(**kwargs)
    TunixRun.objects.filter(id=run.id).update(status=status)
    LogChunk.objects.create(run=run, seq=1, stream="stdout", text=log)
    Metric.objects.bulk_create(
        Metric(run=run, name="train/loss", step=step, value=value)
        for step, value in ((1, 2.5), (2, 1.25), (3, 0.75))
    )
    folder = storage.run_output_path(run)
    folder.mkdir(parents=True)
    (folder / "result.txt").write_text("x" * 100)
    run.refresh_from_db()
    return run


def pending_run(run_factory):
    # A local run with a real small command: queued after commit, which a test never does.
    return run_factory(mode="local", command=py("print('hi')"))


def act(client, action, runs, **extra):
    data = {"action": action, "_selected_action": [str(run.id) for run in runs], **extra}
    return client.post(CHANGELIST, data, follow=True)


def test_the_run_list_shows_columns_filters_search_and_dates(admin_client, run_factory):
    done = finished_run(run_factory, name="first")
    failed = finished_run(run_factory, status=RunStatus.FAILED)
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    for text in ("first", str(done.id)[:8], str(failed.id)[:8], "sample-v1", "local:tiny-llama3"):
        assert text in page
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', page)
    assert headers == [
        "title",
        "status",
        "run_model",
        "run_dataset",
        "created",
        "duration",
    ]
    for column in ("Run", "Status", "Model", "Dataset", "Created", "Duration"):
        assert f">{column}</a>" in page
    assert "By status" in page and "By mode" in page and "By created at" in page

    only_failed = admin_client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    assert str(failed.id)[:8] in only_failed and str(done.id)[:8] not in only_failed
    by_id = admin_client.get(CHANGELIST, {"q": str(done.id)[:8]}).content.decode()
    assert "1 result" in by_id and str(done.id)[:8] in by_id
    by_whole_id = admin_client.get(CHANGELIST, {"q": str(failed.id)}).content.decode()
    assert "1 result" in by_whole_id and str(failed.id)[:8] in by_whole_id
    TunixRun.objects.filter(id=failed.id).update(message="Worker lost: no heartbeat since 9:00")
    by_message = admin_client.get(CHANGELIST, {"q": "heartbeat"}).content.decode()
    assert "1 result" in by_message and str(failed.id)[:8] in by_message
    year = timezone.localtime(done.created_at).year
    assert admin_client.get(CHANGELIST, {"created_at__year": year}).status_code == 200
    start = timezone.now()
    TunixRun.objects.filter(id=done.id).update(
        started_at=start, finished_at=start + timedelta(hours=2)
    )
    TunixRun.objects.filter(id=failed.id).update(
        started_at=start, finished_at=start + timedelta(seconds=9)
    )
    shortest_first = admin_client.get(CHANGELIST, {"o": "6"}).content.decode()  # Duration
    assert "2h 00m 00s" in shortest_first and "9s" in shortest_first
    assert shortest_first.index(str(failed.id)[:8]) < shortest_first.index(str(done.id)[:8])
    longest_first = admin_client.get(CHANGELIST, {"o": "-6"}).content.decode()
    assert longest_first.index(str(done.id)[:8]) < longest_first.index(str(failed.id)[:8])


def test_the_run_detail_is_read_only_and_escapes_the_log(admin_client, run_factory):
    run = finished_run(run_factory, log="step 1\n<script>alert('owned')</script>\n")
    response = admin_client.get(change_url(run))
    assert response.status_code == 200
    page = response.content.decode()
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
    assert "<script>alert(" not in page
    assert f'href="{reverse("runs:detail", args=[run.id])}"' in page
    assert "&quot;max_steps&quot;" in page  # the config, as escaped JSON
    assert "runs.launcher" in page  # the command
    assert "train/loss" in page and "0.75" in page and "2.5" in page  # metric summary
    assert 'name="_save"' not in page
    # Saving is refused even when posted by hand: it would overwrite the worker's writes.
    assert admin_client.post(change_url(run), {"status": "failed"}).status_code == 403
    assert TunixRun.objects.get(id=run.id).status == RunStatus.COMPLETED


def test_the_detail_shows_the_head_and_tail_of_a_long_log(admin_client, run_factory):
    run = finished_run(run_factory, log="")
    LogChunk.objects.bulk_create(
        LogChunk(run=run, seq=seq, stream="stdout", text=f"chunk-{seq:04d} " + "." * 200 + "\n")
        for seq in range(2, 1002)
    )
    page = admin_client.get(change_url(run)).content.decode()
    assert "chunk-0002" in page and "chunk-1001" in page
    assert "chunk-0500" not in page
    assert "not shown" in page


def test_cancel_action_cancels_active_runs_and_explains_the_rest(admin_client, run_factory):
    waiting = pending_run(run_factory)
    done = finished_run(run_factory, name="done-run")
    response = act(admin_client, "cancel_runs", [waiting, done])
    assert response.status_code == 200
    page = response.content.decode()
    # Messages name each run: its name, or its short id when it has none.
    assert f"Cancel requested for {str(waiting.id)[:8]}." in page
    assert "&quot;done-run&quot;: " in page and "nothing to cancel" in page
    assert TunixRun.objects.get(id=waiting.id).status == RunStatus.CANCELLED
    assert TunixRun.objects.get(id=done.id).status == RunStatus.COMPLETED


def test_run_again_action_creates_a_new_run_from_the_same_inputs(admin_client, run_factory):
    run = finished_run(run_factory, learning_rate=0.002, name="lr-probe")
    response = act(admin_client, "run_again", [run])
    new = TunixRun.objects.exclude(id=run.id).get()
    assert f'Run &quot;lr-probe&quot; again as <a href="{change_url(new)}">' in (
        response.content.decode()
    )
    assert new.learning_rate == 0.002 and new.output_dir != run.output_dir
    assert new.owner.username == "admin"


def test_pin_and_unpin_actions(admin_client, run_factory):
    runs = [finished_run(run_factory, name=name) for name in ("keep", "")]
    response = act(admin_client, "pin_runs", runs)
    assert TunixRun.objects.filter(pinned=True).count() == 2
    page = response.content.decode()
    pinned = re.search(r"Pinned ([^<]*)\.<", page).group(1).split(", ")
    assert sorted(pinned) == sorted(["&quot;keep&quot;", str(runs[1].id)[:8]])
    act(admin_client, "unpin_runs", runs[:1])
    assert list(TunixRun.objects.filter(pinned=True).values_list("id", flat=True)) == [runs[1].id]


def test_actions_work_from_the_detail_page(admin_client, run_factory):
    run = finished_run(run_factory)
    response = admin_client.post(
        change_url(run), {"CHANGE_FORM-action": "pin_runs", "_selected_action": str(run.id)}
    )
    assert response.status_code == 302
    assert TunixRun.objects.get(id=run.id).pinned
    assert "Pin (never pruned)" in admin_client.get(change_url(run)).content.decode()


def test_delete_with_artifacts_asks_first_then_removes_rows_and_files(admin_client, run_factory):
    done = finished_run(run_factory)
    waiting = pending_run(run_factory)
    folder = storage.run_output_path(done)

    confirm = act(admin_client, "delete_with_artifacts", [done, waiting])
    page = confirm.content.decode()
    assert confirm.status_code == 200 and "Yes, delete them" in page
    assert str(done.id) in page and "still active" in page
    assert TunixRun.objects.count() == 2 and folder.is_dir()

    response = act(admin_client, "delete_with_artifacts", [done, waiting], post="yes")
    message = f"Deleted {str(done.id)[:8]} and freed 100 bytes of files."
    assert message in response.content.decode()
    assert not TunixRun.objects.filter(id=done.id).exists() and not folder.exists()
    assert not LogChunk.objects.filter(run_id=done.id).exists()
    assert TunixRun.objects.filter(id=waiting.id, status=RunStatus.PENDING).exists()


def test_django_bulk_delete_is_replaced_by_the_one_that_removes_files(admin_client, run_factory):
    run = finished_run(run_factory)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "delete_selected" not in page and "delete_with_artifacts" in page
    act(admin_client, "delete_selected", [run], post="yes")
    assert TunixRun.objects.filter(id=run.id).exists()


def test_the_delete_page_uses_the_service_and_refuses_active_runs(admin_client, run_factory):
    run = finished_run(run_factory)
    folder = storage.run_output_path(run)
    url = reverse("admin:runs_tunixrun_delete", args=[run.id])
    page = admin_client.get(url).content.decode()
    assert "1 log chunks" in page and "3 metrics" in page and run.output_dir in page
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not TunixRun.objects.filter(id=run.id).exists() and not folder.exists()

    waiting = pending_run(run_factory)
    url = reverse("admin:runs_tunixrun_delete", args=[waiting.id])
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert TunixRun.objects.filter(id=waiting.id).exists()


def test_staff_who_may_only_view_see_runs_but_cannot_act(client, staff_user, run_factory):
    staff_user.user_permissions.add(Permission.objects.get(codename="view_tunixrun"))
    run = pending_run(run_factory)
    client.force_login(staff_user)
    page = client.get(CHANGELIST).content.decode()
    assert str(run.id)[:8] in page and "cancel_runs" not in page
    assert client.get(change_url(run)).status_code == 200
    act(client, "cancel_runs", [run])
    assert TunixRun.objects.get(id=run.id).status == RunStatus.PENDING


def test_dataset_admin_lists_shows_and_protects_datasets_in_use(
    admin_client, run_factory, dataset, django_capture_on_commit_callbacks
):
    run = finished_run(run_factory)
    page = admin_client.get("/admin/runs/dataset/").content.decode()
    assert "sample-v1" in page and "?dataset__id__exact=" in page
    url = reverse("admin:runs_dataset_change", args=[dataset.pk])
    detail = admin_client.get(url).content.decode()
    assert 'name="description"' in detail and 'name="sha256"' not in detail
    assert admin_client.post(url, {"description": "edited"}).status_code == 302
    dataset.refresh_from_db()
    assert dataset.description == "edited" and dataset.sha256

    delete_url = reverse("admin:runs_dataset_delete", args=[dataset.pk])
    refused = admin_client.get(delete_url).content.decode()
    assert "protected" in refused and str(run.id) in refused
    admin_client.post(delete_url, {"post": "yes"})
    assert Dataset.objects.filter(pk=dataset.pk).exists()

    path = storage.dataset_path(dataset)
    services.run_delete(run=run)
    with django_capture_on_commit_callbacks(execute=True):  # the file goes after the commit
        assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not Dataset.objects.filter(pk=dataset.pk).exists() and not path.exists()


def test_the_queue_and_schedule_pages_of_django_q2_render(admin_client):
    services.schedules_ensure()
    page = admin_client.get("/admin/django_q/schedule/").content.decode()
    assert "tunixrt-retention" in page and "tunixrt-reaper" in page
    for path in ("/admin/django_q/success/", "/admin/django_q/failure/", "/admin/django_q/ormq/"):
        assert admin_client.get(path).status_code == 200
