"""The JSON API beyond creating and listing runs: logs, metrics, outputs, cancel, rerun,
resume, delete, and the rules every endpoint shares (auth, ownership, the error shape)."""

import json
import math
import os
from urllib.parse import urlencode

import pytest
from django.test import Client
from django_q.models import OrmQ

from runs import services
from runs.models import LogChunk, Metric, RunStatus, TunixRun

from .conftest import ApiClient, py

pytestmark = pytest.mark.django_db

MISSING = "00000000-0000-0000-0000-000000000000"


def finished(run, status=RunStatus.COMPLETED, exit_code=0):
    """Take a local run through the service's own transitions to a final state."""
    assert services.run_claim(run_id=run.id)
    assert services.run_finish(run_id=run.id, status=status, exit_code=exit_code)
    run.refresh_from_db()
    return run


def add_logs(run, *texts, stream="stdout"):
    start = LogChunk.objects.filter(run=run).count()
    for offset, text in enumerate(texts, start=1):
        LogChunk.objects.create(run=run, seq=start + offset, stream=stream, text=text)


def output_folder(run, settings):
    folder = settings.ARTIFACTS_DIR / run.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def staff_api(staff_user):
    _, token = services.api_token_create(user=staff_user)
    return ApiClient(token)


@pytest.fixture
def other_api(other_user):
    _, token = services.api_token_create(user=other_user)
    return ApiClient(token)


@pytest.fixture
def local_run(run_factory):
    """A pending local run that executes a small real program (never started here)."""
    return run_factory(mode="local", command=py("print('hi')"))


# --- authentication and ownership, for every endpoint -------------------------------------

RUN_ENDPOINTS = [
    ("get", "/api/tunix/runs/{id}"),
    ("get", "/api/tunix/runs/{id}/logs"),
    ("get", "/api/tunix/runs/{id}/logs.txt"),
    ("get", "/api/tunix/runs/{id}/metrics"),
    ("get", "/api/tunix/runs/{id}/outputs"),
    ("get", "/api/tunix/runs/{id}/outputs/train.jsonl"),
    ("post", "/api/tunix/runs/{id}/cancel"),
    ("post", "/api/tunix/runs/{id}/rerun"),
    ("post", "/api/tunix/runs/{id}/resume"),
    ("delete", "/api/tunix/runs/{id}"),
]


@pytest.mark.parametrize("method,path", RUN_ENDPOINTS)
def test_every_run_endpoint_answers_401_without_credentials(anon_api, run_factory, method, path):
    run = run_factory()
    kwargs = {"data": {"max_steps": 50}} if path.endswith("/resume") else {}
    response = getattr(anon_api, method)(path.format(id=run.id), **kwargs)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication required."}
    assert TunixRun.objects.count() == 1


@pytest.mark.parametrize("method,path", RUN_ENDPOINTS)
def test_every_run_endpoint_answers_403_for_someone_elses_run(
    api, run_factory, other_user, method, path
):
    theirs = run_factory(owner=other_user)
    kwargs = {"data": {"max_steps": 50}} if path.endswith("/resume") else {}
    response = getattr(api, method)(path.format(id=theirs.id), **kwargs)
    assert response.status_code == 403
    assert response.json() == {"detail": "This run belongs to another user."}
    assert TunixRun.objects.count() == 1


@pytest.mark.parametrize("method,path", RUN_ENDPOINTS)
@pytest.mark.parametrize("run_id", [MISSING, "not-a-uuid"])
def test_every_run_endpoint_answers_404_for_no_such_run(api, db, method, path, run_id):
    kwargs = {"data": {"max_steps": 50}} if path.endswith("/resume") else {}
    response = getattr(api, method)(path.format(id=run_id), **kwargs)
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}
    assert response.json()["detail"].startswith("No such run")


def test_staff_see_and_act_on_everyones_runs(staff_api, run_factory, other_user):
    theirs = run_factory(owner=other_user, mode="local", command=py("print(1)"))
    assert staff_api.get(f"/api/tunix/runs/{theirs.id}/logs").status_code == 200
    assert staff_api.get("/api/tunix/runs").json()["count"] == 1
    response = staff_api.post(f"/api/tunix/runs/{theirs.id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert staff_api.delete(f"/api/tunix/runs/{theirs.id}").status_code == 200


def test_a_users_list_shows_only_their_own_runs(api, other_api, run_factory, other_user):
    mine = run_factory()
    run_factory(owner=other_user)
    data = api.get("/api/tunix/runs").json()
    assert [r["id"] for r in data["items"]] == [str(mine.id)]
    assert data["count"] == 1
    assert other_api.get("/api/tunix/runs").json()["count"] == 1


def test_session_auth_works_for_reads_and_needs_csrf_for_changes(user, local_run):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.get(f"/api/tunix/runs/{local_run.id}/logs").status_code == 200
    refused = browser.post(f"/api/tunix/runs/{local_run.id}/cancel")
    assert refused.status_code == 403
    assert "detail" in refused.json()
    local_run.refresh_from_db()
    assert local_run.status == RunStatus.PENDING
    browser.get("/accounts/login/")  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(
        f"/api/tunix/runs/{local_run.id}/cancel", headers={"X-CSRFToken": token}
    )
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "cancelled"


# --- the one error shape ------------------------------------------------------------------


def test_an_unknown_api_path_answers_404_in_the_error_shape(api):
    response = api.get("/api/tunix/nothing-here")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not Found"}


def test_a_method_a_path_does_not_take_answers_405_in_the_error_shape(api):
    response = api.client.put("/api/tunix/runs", headers=api.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert "GET" in response["Allow"]


def test_schema_errors_name_each_field_with_its_path(api, dataset):
    response = api.post("/api/tunix/run", {"model_id": "x/llama-3", "learning_rate": 2})
    assert response.status_code == 422
    body = response.json()
    assert set(body["fields"]) == {"dataset_key", "learning_rate"}
    assert ["body", "payload", "learning_rate"] in [e["loc"] for e in body["detail"]]
    assert all(set(e) == {"loc", "msg", "type"} for e in body["detail"])
    response = api.get("/api/tunix/runs?page=0&page_size=9999")
    assert set(response.json()["fields"]) == {"page", "page_size"}


def test_a_body_over_the_size_limit_answers_413_and_stores_nothing(api, dataset, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    huge = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "name": "x" * 2**21}
    response = api.post("/api/tunix/run", huge)
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large."}
    assert TunixRun.objects.count() == 0
    assert OrmQ.objects.count() == 0


# --- logs ---------------------------------------------------------------------------------


def test_logs_after_a_cursor_return_only_newer_chunks_and_the_next_cursor(api, local_run):
    add_logs(local_run, "one\n", "two\n", "three\n")
    first = api.get(f"/api/tunix/runs/{local_run.id}/logs").json()
    assert [c["text"] for c in first["chunks"]] == ["one\n", "two\n", "three\n"]
    assert first["next_after"] == 3
    assert first["final"] is False and first["has_more"] is False
    assert first["status"] == "pending"
    add_logs(local_run, "four\n", stream="stderr")
    second = api.get(f"/api/tunix/runs/{local_run.id}/logs?after=3").json()
    assert second["chunks"] == [{"seq": 4, "stream": "stderr", "text": "four\n"}]
    assert second["next_after"] == 4
    third = api.get(f"/api/tunix/runs/{local_run.id}/logs?after=4").json()
    assert third["chunks"] == [] and third["next_after"] == 4


def test_logs_are_paged_with_has_more_and_report_when_the_run_is_final(api, local_run):
    add_logs(local_run, *[f"line {i}\n" for i in range(5)])
    page = api.get(f"/api/tunix/runs/{local_run.id}/logs?limit=2").json()
    assert [c["seq"] for c in page["chunks"]] == [1, 2] and page["has_more"] is True
    finished(local_run)
    rest = api.get(f"/api/tunix/runs/{local_run.id}/logs?after=2&limit=10").json()
    assert [c["seq"] for c in rest["chunks"]] == [3, 4, 5]
    assert rest["has_more"] is False and rest["final"] is True
    assert rest["status"] == "completed"


def test_logs_refuse_a_negative_cursor(api, local_run):
    response = api.get(f"/api/tunix/runs/{local_run.id}/logs?after=-1")
    assert response.status_code == 422
    assert "after" in response.json()["fields"]


def test_the_whole_log_downloads_as_plain_text(api, local_run):
    add_logs(local_run, "alpha\n", "<b>beta</b>\n")
    add_logs(local_run, "[tunix-rt] note\n", stream="system")
    response = api.get(f"/api/tunix/runs/{local_run.id}/logs.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert b"".join(response.streaming_content) == b"alpha\n<b>beta</b>\n[tunix-rt] note\n"


# --- metrics ------------------------------------------------------------------------------


def test_metrics_are_series_by_name_ordered_by_step(api, local_run):
    Metric.objects.bulk_create(
        [
            Metric(run=local_run, name="train/loss", step=2, value=2.5),
            Metric(run=local_run, name="train/loss", step=1, value=3.0),
            Metric(run=local_run, name="eval/loss", step=2, value=2.75),
            Metric(run=local_run, name="train/grad_norm", step=1, value=math.inf),
        ]
    )
    data = api.get(f"/api/tunix/runs/{local_run.id}/metrics").json()
    assert data["series"] == {
        "eval/loss": [{"step": 2, "value": 2.75}],
        "train/grad_norm": [{"step": 1, "value": None}],
        "train/loss": [{"step": 1, "value": 3.0}, {"step": 2, "value": 2.5}],
    }
    assert data["run_id"] == str(local_run.id)


def test_a_run_without_metrics_has_no_series(api, run_factory):
    run = run_factory()
    assert api.get(f"/api/tunix/runs/{run.id}/metrics").json()["series"] == {}


# --- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_pending_run_ends_it_cancelled(api, local_run):
    response = api.post(f"/api/tunix/runs/{local_run.id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    local_run.refresh_from_db()
    assert local_run.status == RunStatus.CANCELLED and local_run.finished_at


def test_cancel_of_a_running_run_records_the_request(api, local_run):
    services.run_claim(run_id=local_run.id)
    response = api.post(f"/api/tunix/runs/{local_run.id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "running"  # the supervisor finishes it
    local_run.refresh_from_db()
    assert local_run.cancel_requested_at is not None


@pytest.mark.parametrize("status", ["completed", "failed", "timeout", "cancelled"])
def test_cancel_of_a_final_run_is_409(api, local_run, status):
    finished(local_run, status=status)
    response = api.post(f"/api/tunix/runs/{local_run.id}/cancel")
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"The run is already {status}; there is nothing to cancel."
    }
    local_run.refresh_from_db()
    assert local_run.status == status


def test_cancel_of_a_dry_run_is_409(api, run_factory):
    run = run_factory()
    assert api.post(f"/api/tunix/runs/{run.id}/cancel").status_code == 409


# --- rerun --------------------------------------------------------------------------------


def test_rerun_makes_a_new_run_from_the_same_inputs(api, run_factory):
    original = run_factory(max_steps=12, learning_rate=1e-3, name="first")
    response = api.post(f"/api/tunix/runs/{original.id}/rerun")
    assert response.status_code == 201
    new = response.json()
    assert new["id"] != str(original.id)
    assert new["output_dir"] != original.output_dir
    for field in ("dataset_key", "model_id", "mode", "name", "max_steps", "learning_rate"):
        assert new[field] == getattr(original, field)
    assert new["config"]["training"] == {
        **original.config["training"],
        "max_steps": 12,
    }


def test_rerun_applies_the_changes_given(api, run_factory):
    original = run_factory(max_steps=12)
    response = api.post(
        f"/api/tunix/runs/{original.id}/rerun", {"max_steps": 40, "batch_size": 8, "name": "b"}
    )
    assert response.status_code == 201
    new = response.json()
    assert (new["max_steps"], new["batch_size"], new["name"]) == (40, 8, "b")
    assert new["config"]["training"]["max_steps"] == 40
    assert new["learning_rate"] == original.learning_rate


def test_rerun_with_an_invalid_change_is_422_and_stores_nothing(api, run_factory):
    original = run_factory()
    response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"batch_size": 0})
    assert response.status_code == 422
    assert "batch_size" in response.json()["fields"]
    response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"model_id": "--help"})
    assert response.status_code == 422
    response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"model_id": "evil/llama3;ls"})
    assert response.status_code == 422
    assert TunixRun.objects.count() == 1


def test_rerun_of_a_custom_command_run_keeps_its_command_and_queues_it(api, local_run):
    finished(local_run, status=RunStatus.FAILED, exit_code=1)
    response = api.post(f"/api/tunix/runs/{local_run.id}/rerun", {"name": "again"})
    assert response.status_code == 202
    new = TunixRun.objects.get(id=response.json()["id"])
    assert new.status == RunStatus.PENDING
    assert new.command == local_run.command
    assert new.mode == "local"


def test_rerun_of_a_dry_run_as_a_local_run_is_queued(api, run_factory, tiny_launcher):
    original = run_factory()
    response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"dry_run": False})
    assert response.status_code == 202
    new = response.json()
    assert new["status"] == "pending" and new["mode"] == "local"
    assert new["command"][1:3] == ["-m", tiny_launcher]


def test_rerun_of_a_dry_run_as_local_without_tunix_is_501(
    api, run_factory, settings, python_without_tunix
):
    original = run_factory()
    settings.TUNIX_PYTHON = python_without_tunix
    response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"dry_run": False})
    assert response.status_code == 501
    assert TunixRun.objects.count() == 1


# --- resume -------------------------------------------------------------------------------


def with_checkpoint(run, settings, step, complete=True):
    folder = output_folder(run, settings) / "checkpoints" / str(step)
    folder.mkdir(parents=True)
    if complete:
        (folder / "commit_success.txt").write_text("ok")


def test_resume_queues_a_child_run_from_the_latest_complete_checkpoint(
    api, run_factory, settings, tiny_launcher
):
    parent = finished(run_factory(mode="local", command=py("0"), max_steps=20))
    with_checkpoint(parent, settings, 10)
    with_checkpoint(parent, settings, 20, complete=False)
    response = api.post(f"/api/tunix/runs/{parent.id}/resume", {"max_steps": 40})
    assert response.status_code == 202
    child = TunixRun.objects.get(id=response.json()["id"])
    assert response.json()["parent_id"] == str(parent.id)
    assert child.status == RunStatus.PENDING and child.max_steps == 40
    assert child.resume_from_step == 10
    assert child.config["resume"]["checkpoint_dir"].endswith(f"{parent.output_dir}/checkpoints")


def test_resume_without_a_complete_checkpoint_is_409(api, run_factory, settings, tiny_launcher):
    parent = finished(run_factory(mode="local", command=py("0")))
    response = api.post(f"/api/tunix/runs/{parent.id}/resume", {"max_steps": 40})
    assert response.status_code == 409
    assert "no complete checkpoint" in response.json()["detail"]
    with_checkpoint(parent, settings, 5, complete=False)
    assert api.post(f"/api/tunix/runs/{parent.id}/resume", {"max_steps": 40}).status_code == 409
    assert TunixRun.objects.count() == 1


def test_resume_of_an_active_run_is_409(api, local_run):
    response = api.post(f"/api/tunix/runs/{local_run.id}/resume", {"max_steps": 40})
    assert response.status_code == 409
    assert response.json() == {"detail": "Only a finished run can be continued."}


def test_resume_to_a_step_not_past_the_checkpoint_is_422(api, run_factory, settings, tiny_launcher):
    parent = finished(run_factory(mode="local", command=py("0")))
    with_checkpoint(parent, settings, 10)
    response = api.post(f"/api/tunix/runs/{parent.id}/resume", {"max_steps": 10})
    assert response.status_code == 422
    assert response.json()["fields"] == {"max_steps": "Must be greater than 10."}
    assert api.post(f"/api/tunix/runs/{parent.id}/resume", {}).status_code == 422
    assert TunixRun.objects.count() == 1


# --- delete -------------------------------------------------------------------------------


def test_delete_removes_the_run_its_logs_metrics_and_folder(api, local_run, settings):
    add_logs(local_run, "x\n")
    Metric.objects.create(run=local_run, name="train/loss", step=1, value=1.0)
    folder = output_folder(local_run, settings)
    (folder / "weights.bin").write_bytes(b"0" * 1000)
    finished(local_run)
    response = api.delete(f"/api/tunix/runs/{local_run.id}")
    assert response.status_code == 200
    assert response.json() == {"id": str(local_run.id), "freed_bytes": 1000}
    assert not TunixRun.objects.filter(id=local_run.id).exists()
    assert not LogChunk.objects.exists() and not Metric.objects.exists()
    assert not folder.exists()
    assert api.get(f"/api/tunix/runs/{local_run.id}").status_code == 404


@pytest.mark.parametrize("claim", [False, True], ids=["pending", "running"])
def test_delete_of_an_active_run_is_409_and_keeps_everything(api, local_run, settings, claim):
    if claim:
        services.run_claim(run_id=local_run.id)
    add_logs(local_run, "x\n")
    folder = output_folder(local_run, settings)
    response = api.delete(f"/api/tunix/runs/{local_run.id}")
    assert response.status_code == 409
    assert "cancel it before deleting it" in response.json()["detail"]
    assert TunixRun.objects.filter(id=local_run.id).exists()
    assert LogChunk.objects.count() == 1 and folder.exists()


# --- outputs ------------------------------------------------------------------------------


def test_outputs_are_listed_and_one_file_downloads(api, local_run, settings):
    folder = output_folder(local_run, settings)
    (folder / "checkpoints" / "5").mkdir(parents=True)
    (folder / "checkpoints" / "5" / "_CHECKPOINT_METADATA").write_text("{}")
    (folder / "metrics.html").write_text("<script>alert(1)</script>")
    data = api.get(f"/api/tunix/runs/{local_run.id}/outputs").json()
    assert data["files"] == [
        {"path": "checkpoints/5/_CHECKPOINT_METADATA", "size": 2},
        {"path": "metrics.html", "size": 25},
    ]
    assert data["truncated"] is False
    response = api.get(f"/api/tunix/runs/{local_run.id}/outputs/metrics.html")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"<script>alert(1)</script>"
    # Never rendered by the browser: an opaque type, as an attachment.
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    nested = api.get(f"/api/tunix/runs/{local_run.id}/outputs/checkpoints/5/_CHECKPOINT_METADATA")
    assert nested.status_code == 200


def test_a_run_without_a_folder_lists_no_outputs(api, run_factory):
    run = run_factory()
    assert api.get(f"/api/tunix/runs/{run.id}/outputs").json()["files"] == []


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "checkpoints/../../secret.txt",
        ".hidden",
        "link-out/secret.txt",
        "link-file",
        "nothing-here.txt",
        "a%00b",
    ],
)
def test_downloads_are_confined_to_the_runs_folder(api, local_run, settings, tmp_path, path):
    folder = output_folder(local_run, settings)
    (folder / ".hidden").write_text("hidden")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (settings.ARTIFACTS_DIR / "runs" / "secret.txt").write_text("another run's secret")
    os.symlink(outside, folder / "link-out")
    os.symlink(outside / "secret.txt", folder / "link-file")
    response = api.get(f"/api/tunix/runs/{local_run.id}/outputs/{path}")
    assert response.status_code == 404
    assert response.json() == {"detail": "No such file in this run's outputs."} or (
        response.json() == {"detail": "Not Found"}
    )
    listed = [f["path"] for f in api.get(f"/api/tunix/runs/{local_run.id}/outputs").json()["files"]]
    assert "link-file" not in listed and not any(p.startswith("link-out") for p in listed)


def test_run_detail_is_json_with_the_documented_fields(api, run_factory):
    run = run_factory()
    data = api.get(f"/api/tunix/runs/{run.id}").json()
    schema = api.get("/api/openapi.json").json()["components"]["schemas"]["RunDetailOut"]
    assert set(data) == set(schema["properties"])
    json.dumps(data)  # plain JSON, nothing that needs a custom encoder


def test_the_interactive_docs_work_offline_from_the_packages_own_files(anon_api):
    import re

    page = anon_api.get("/api/docs")
    assert page.status_code == 200
    html = page.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and not [s for s in sources if "//" in s], sources
    for source in sources:
        response = anon_api.client.get(source)
        assert response.status_code == 200, source


def test_every_operation_is_documented_with_a_summary_and_its_errors(anon_api):
    schema = anon_api.get("/api/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            codes = set(operation["responses"])
            if path not in ("/api/health", "/api/ready"):
                assert "401" in codes, where
            if "{run_id}" in path:
                assert {"403", "404"} <= codes, where
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= codes, where
            for code, response in operation["responses"].items():
                if code != "204":  # No Content has, by definition, no body
                    assert response.get("content"), (where, code)


def test_run_list_searches_names_models_datasets_messages_and_ids(api, run_factory):
    named = run_factory(name="Sweep lr=1e-4")
    failed = run_factory(dataset_key="ghost-v1")
    other = run_factory(name="baseline")

    def found(q):
        page = api.get(f"/api/tunix/runs?{urlencode({'q': q})}").json()
        return {r["id"] for r in page["items"]}

    assert found("sweep LR") == {str(named.id)}
    assert found("ghost") == {str(failed.id)}  # its dataset key and its failure message
    assert found("Unknown dataset") == {str(failed.id)}
    assert found(str(other.id)) == {str(other.id)}
    assert found("tiny-llama3") == {str(named.id), str(failed.id), str(other.id)}
    assert found("nothing like this") == set()
