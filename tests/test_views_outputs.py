import io
import tarfile

import pytest

from runs import services, storage
from runs.models import RunStatus, TunixRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_local_run(run_factory):
    run = run_factory(mode="local", command=["true"], max_steps=10)
    services.run_claim(run_id=run.id)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    folder = storage.run_output_path(run)
    for step, complete in ((5, True), (10, True), (12, False)):
        (folder / "checkpoints" / str(step)).mkdir(parents=True)
        if complete:
            (folder / "checkpoints" / str(step) / "commit_success.txt").write_text("ok")
    (folder / "train.jsonl").write_text("{}\n")
    run.refresh_from_db()
    return run


def test_run_page_offers_the_outputs_archive_and_continue_from_the_latest_complete_step(
    client, user, finished_local_run
):
    client.force_login(user)
    page = client.get(f"/runs/{finished_local_run.id}/").content.decode()
    assert "Download all (.tar.gz)" in page
    assert "Continue from step 10" in page
    response = client.get(f"/runs/{finished_local_run.id}/outputs.tar.gz")
    assert response["Content-Type"] == "application/gzip"
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = archive.getnames()
    assert any(name.endswith("checkpoints/10/commit_success.txt") for name in names)


def test_continue_training_creates_a_linked_run_from_the_checkpoint(
    client, user, finished_local_run, tiny_launcher
):
    client.force_login(user)
    response = client.post(f"/runs/{finished_local_run.id}/continue/", {"max_steps": "20"})
    child = TunixRun.objects.exclude(id=finished_local_run.id).get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{child.id}/"
    assert child.parent_id == finished_local_run.id
    assert child.resume_from_step == 10 and child.max_steps == 20
    assert child.config["resume"]["checkpoint_dir"].endswith(
        f"{finished_local_run.output_dir}/checkpoints"
    )


def test_continue_to_a_step_not_past_the_checkpoint_is_refused_with_a_message(
    client, user, finished_local_run, tiny_launcher
):
    client.force_login(user)
    response = client.post(
        f"/runs/{finished_local_run.id}/continue/", {"max_steps": "10"}, follow=True
    )
    assert "must be greater than the checkpoint" in response.content.decode()
    assert TunixRun.objects.count() == 1


def test_someone_elses_outputs_archive_is_forbidden(client, other_user, finished_local_run):
    client.force_login(other_user)
    assert client.get(f"/runs/{finished_local_run.id}/outputs.tar.gz").status_code == 403
