"""Two non-staff users cannot reach each other's run files: no run's folder contains another's,
and every file operation (list, download, tar, delete, retention, orphan sweep) stays inside
the run's own folder. Runs recorded before folders were fixed to runs/<id> may have chosen
overlapping folders; they are made here by updating output_dir directly."""

import io
import os
import tarfile
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from runs import services, storage
from runs.models import RunStatus, TunixRun

from .conftest import ApiClient

pytestmark = pytest.mark.django_db

BODY = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3"}


@pytest.fixture
def bob_api(other_user):
    return ApiClient(services.api_token_create(user=other_user)[1])


@pytest.mark.parametrize(
    "chosen", ["team", "runs", "team/x", ".", "..", "./team", "team/..", "runs/../team", ""]
)
def test_the_api_refuses_to_let_a_user_choose_a_folder(api, dataset, tiny_model_dir, chosen):
    response = api.post("/api/tunix/run", {**BODY, "output_dir": chosen})
    assert response.status_code == 422, response.content
    assert TunixRun.objects.count() == 0


def test_two_users_runs_get_disjoint_folders(api, bob_api, dataset, tiny_model_dir):
    mine = api.post("/api/tunix/run", BODY).json()
    theirs = bob_api.post("/api/tunix/run", BODY).json()
    assert mine["output_dir"] == f"runs/{mine['id']}"
    assert theirs["output_dir"] == f"runs/{theirs['id']}"
    assert not theirs["output_dir"].startswith(mine["output_dir"] + "/")
    assert not mine["output_dir"].startswith(theirs["output_dir"] + "/")


def finished(run_factory, owner, folder: str | None = None) -> TunixRun:
    run = run_factory(owner=owner)
    if folder is not None:
        TunixRun.objects.filter(id=run.id).update(output_dir=folder)
    run.refresh_from_db()
    storage.run_output_path(run).mkdir(parents=True, exist_ok=True)
    (storage.run_output_path(run) / "own.txt").write_text(f"file of {owner.username}")
    return run


def tar_names(run) -> list[str]:
    data = b"".join(storage.run_output_archive(run))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return archive.getnames()


# (alice's folder, bob's folder): alice's contains bob's, spelled in several ways.
NESTINGS = [
    ("team", "team/bob"),
    ("runs", None),  # bob's run is a standard runs/<id>
    ("team", "team/deeper/bob"),
]


@pytest.mark.parametrize("outer, inner", NESTINGS)
def test_a_folder_holding_another_users_folder_never_reaches_its_files(
    user, other_user, run_factory, api, outer, inner
):
    bob = finished(run_factory, other_user, inner)
    alice = finished(run_factory, user, outer)
    bob_rel = os.path.relpath(storage.run_output_path(bob), storage.run_output_path(alice))
    listed = [f["path"] for f in api.get(f"/api/tunix/runs/{alice.id}/outputs").json()["files"]]
    assert listed == ["own.txt"]
    response = api.get(f"/api/tunix/runs/{alice.id}/outputs/{bob_rel}/own.txt")
    assert response.status_code == 404
    assert [n.rsplit("/", 1)[-1] for n in tar_names(alice)] == ["own.txt"]
    # Deleting alice's run removes her file and leaves bob's folder whole.
    services.run_delete(run=alice)
    assert (storage.run_output_path(bob) / "own.txt").read_text() == "file of bob"
    assert not (storage.run_output_path(bob).parent / "own.txt").exists() or inner is None


@pytest.mark.parametrize("outer, inner", NESTINGS)
def test_retention_of_a_folder_holding_another_users_folder_keeps_it(
    user, other_user, run_factory, outer, inner
):
    bob = finished(run_factory, other_user, inner)
    alice = finished(run_factory, user, outer)
    TunixRun.objects.filter(id=alice.id).update(finished_at=timezone.now() - timedelta(days=40))
    summary = services.runs_prune(older_than_days=30)
    assert summary.runs == 1 and not TunixRun.objects.filter(id=alice.id).exists()
    assert (storage.run_output_path(bob) / "own.txt").read_text() == "file of bob"


def test_the_inner_run_sees_only_its_own_folder(user, other_user, run_factory, api):
    finished(run_factory, other_user, "team")
    alice = finished(run_factory, user, "team/alice")
    listed = [f["path"] for f in api.get(f"/api/tunix/runs/{alice.id}/outputs").json()["files"]]
    assert listed == ["own.txt"]
    assert api.get(f"/api/tunix/runs/{alice.id}/outputs/../own.txt").status_code == 404
    assert api.get(f"/api/tunix/runs/{alice.id}/outputs/%2E%2E/own.txt").status_code == 404


def test_the_orphan_sweep_never_deletes_a_folder_that_holds_a_live_runs_folder(
    user, run_factory, settings
):
    prefix = f"runs/{uuid.uuid4()}"
    live = finished(run_factory, user, f"{prefix}/sub")
    old = (timezone.now() - timedelta(days=2)).timestamp()
    os.utime(settings.ARTIFACTS_DIR / prefix, (old, old))
    summary = services.runs_prune(older_than_days=30)
    assert summary.orphans == 0
    assert (storage.run_output_path(live) / "own.txt").exists()


def test_hard_links_and_symlinks_out_of_the_folder_are_not_served(user, run_factory, api, tmp_path):
    run = finished(run_factory, user)
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    folder = storage.run_output_path(run)
    os.link(secret, folder / "linked.txt")
    (folder / "pointer.txt").symlink_to(secret)
    listed = [f["path"] for f in api.get(f"/api/tunix/runs/{run.id}/outputs").json()["files"]]
    assert listed == ["own.txt"]
    for name in ("linked.txt", "pointer.txt"):
        assert api.get(f"/api/tunix/runs/{run.id}/outputs/{name}").status_code == 404
    assert [n.rsplit("/", 1)[-1] for n in tar_names(run)] == ["own.txt"]


def test_a_run_with_an_active_continuation_is_not_deleted(user, run_factory, api):
    parent = run_factory(mode="local", command=["true"])
    services.run_claim(run_id=parent.id)
    services.run_finish(run_id=parent.id, status=RunStatus.COMPLETED, exit_code=0)
    child = run_factory(mode="local", command=["true"])
    TunixRun.objects.filter(id=child.id).update(parent=parent)
    response = api.delete(f"/api/tunix/runs/{parent.id}")
    assert response.status_code == 409
    assert str(child.id) in response.json()["detail"]
    TunixRun.objects.filter(id=parent.id).update(finished_at=timezone.now() - timedelta(days=40))
    assert services.runs_prune(older_than_days=30).runs == 0
    services.run_cancel(run=child)
    assert api.delete(f"/api/tunix/runs/{parent.id}").status_code == 200


# --- datasets ---------------------------------------------------------------------------


@pytest.fixture
def bobs_dataset(other_user):
    from .conftest import import_dataset

    return import_dataset(name="bobdata", owner=other_user)


def test_another_users_private_dataset_is_invisible_and_unusable(
    api, bob_api, bobs_dataset, tiny_model_dir
):
    keys = [d["key"] for d in api.get("/api/datasets").json()["items"]]
    assert "bobdata-v1" not in keys
    for path in ("", "/preview", "/export"):
        assert api.get(f"/api/datasets/bobdata-v1{path}").status_code == 404
    assert api.delete("/api/datasets/bobdata-v1").status_code == 404
    response = api.post("/api/tunix/run", {**BODY, "dataset_key": "bobdata-v1"})
    assert response.json()["status"] == "failed" and "Unknown dataset" in response.json()["message"]
    # Bob shares it: now alice sees it and trains on it, but cannot unshare or delete it.
    assert bob_api.get("/api/datasets/bobdata-v1").json()["shared"] is False
    response = bob_api._call("patch", "/api/datasets/bobdata-v1", {"shared": True})
    assert response.status_code == 200 and response.json()["shared"] is True
    assert "bobdata-v1" in [d["key"] for d in api.get("/api/datasets").json()["items"]]
    response = api.post("/api/tunix/run", {**BODY, "dataset_key": "bobdata-v1"})
    assert response.json()["status"] == "completed"
    assert api._call("patch", "/api/datasets/bobdata-v1", {"shared": False}).status_code == 403
    assert api.delete("/api/datasets/bobdata-v1").status_code == 403
    assert bob_api._call("patch", "/api/datasets/bobdata-v1", {"shared": 1}).status_code == 422


def test_staff_see_every_dataset(client, staff_user, bobs_dataset):
    client.force_login(staff_user)
    assert b"bobdata-v1" in client.get("/datasets/").content


def test_the_pages_hide_another_users_private_dataset(client, user, bobs_dataset, dataset):
    client.force_login(user)
    assert b"bobdata-v1" not in client.get("/datasets/").content
    assert client.get("/datasets/bobdata-v1/").status_code == 404
    assert b"bobdata-v1" not in client.get("/runs/new/").content


def test_a_finished_dry_run_does_not_block_a_dataset_delete(bob_api, bobs_dataset, tiny_model_dir):
    run = bob_api.post("/api/tunix/run", {**BODY, "dataset_key": "bobdata-v1"}).json()
    assert run["status"] == "completed"
    assert bob_api.delete("/api/datasets/bobdata-v1").status_code == 204
    assert TunixRun.objects.get(id=run["id"]).dataset_key == "bobdata-v1"


# --- smaller holes ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["status", "q", "dataset", "model", "mode"])
def test_a_nul_in_a_run_list_filter_is_not_a_server_error(client, user, field):
    client.force_login(user)
    assert client.get("/", {field: "x\x00y"}).status_code == 200


def test_only_staff_may_refresh_the_tunix_probe(api, staff_user):
    assert api.get("/api/tunix/status?refresh=true").status_code == 403
    assert api.get("/api/tunix/status").status_code == 200
    staff = ApiClient(services.api_token_create(user=staff_user)[1])
    assert staff.get("/api/tunix/status?refresh=true").status_code == 200


def test_a_file_download_from_the_pages_is_opaque(client, user, run_factory):
    run = finished(run_factory, user)
    (storage.run_output_path(run) / "page.html").write_text("<script>alert(1)</script>")
    client.force_login(user)
    response = client.get(f"/runs/{run.id}/files/page.html")
    assert response["Content-Type"] == "application/octet-stream"
    assert "attachment" in response["Content-Disposition"]


def test_password_reset_pages_are_off_without_a_mail_server(client):
    assert client.get("/accounts/password_reset/").status_code == 404
    assert client.get("/accounts/login/").status_code == 200
