"""What reads a trained run's checkpoint, with artifacts in an object store (moto's S3 server on
loopback, as in tests/test_objectstore.py): an evaluation, an export and a playground prompt on
a worker host that never had the run's folder get the one step they load from the bucket, and
an export's model folder is published with its job's folder."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from runs import protocol, services, storage
from runs.models import EvaluationRow, PlaygroundPrompt, RunStatus

from .conftest import REPO, SAMPLE, wait_for
from .test_objectstore import (  # noqa: F401 - fixtures
    BUCKET,
    TRAIN,
    bucket_keys,
    local_files,
    object_store,
    s3_server,
)


def put(client, key: str, body: bytes = b"x") -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


@pytest.mark.parametrize("method", ["sft", "grpo"])
@pytest.mark.django_db
def test_only_the_newest_complete_step_is_staged_and_then_removed(
    object_store,  # noqa: F811 - the fixture imported above
    settings,
    run_factory,
    method,
):
    run = run_factory()
    under = protocol.checkpoint_folder(method)
    run.method = method
    base = f"artifacts/{run.output_dir}/{under}"
    for step in (6, 12):
        put(object_store, f"{base}/{step}/state/data", f"step {step}".encode())
        put(object_store, f"{base}/{step}/{protocol.CHECKPOINT_COMPLETE_MARKER}")
    put(object_store, f"{base}/18/state/data", b"step 18, still writing")  # not complete
    staging = Path(settings.ARTIFACTS_DIR) / "staging" / "prompt-1"
    with storage.run_checkpoint_staged(run, "prompt-1") as staged:
        folder = Path(staged["checkpoint_dir"])
        assert staged["step"] == 12 and folder.is_relative_to(staging)
        assert folder.parts[-1] == ("actor" if method == "grpo" else "checkpoints")
        assert local_files(folder) == ["12/commit_success.txt", "12/state/data"]
        assert (folder / "12/state/data").read_bytes() == b"step 12"
    assert not staging.exists()


@pytest.mark.django_db
def test_nothing_is_staged_without_a_store(run_factory):
    run = run_factory()
    with storage.run_checkpoint_staged(run, "prompt-2") as staged:
        assert staged is None


def object_text(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.tunix
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_evaluation_export_and_playground_read_the_checkpoint_from_the_bucket(
    object_store,  # noqa: F811 - the fixture imported above
    settings,
    tmp_path,
    user,
    start_cluster,
    run_factory,
):
    from .test_tunix_e2e import finished, log_text

    target = Path(settings.MODELS_DIR) / "tiny-llama3"
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(target), "--data", str(SAMPLE)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    worker_artifacts = tmp_path / "worker-artifacts"
    start_cluster(
        workers=1,
        TUNIXRT_ARTIFACTS_DIR=worker_artifacts,  # the worker shares no folder with the web
        TUNIXRT_DATASETS_DIR=tmp_path / "worker-data",
        TUNIXRT_ARTIFACTS_URL=settings.ARTIFACTS_URL,
        TUNIXRT_DATASETS_URL=settings.DATASETS_URL,
        TUNIXRT_S3_ENDPOINT_URL=settings.S3_ENDPOINT_URL,
        TUNIXRT_QUEUE_POLL_SECONDS="0.05",
    )
    run = finished(run_factory(mode="local", model_id="local:tiny-llama3", **TRAIN).id)
    assert run.status == RunStatus.COMPLETED, run.message
    # Published and removed from the worker, never on the web host: no host has the folder.
    wait_for(lambda: local_files(worker_artifacts) == [], timeout=30, message="scratch to empty")
    assert not (Path(settings.ARTIFACTS_DIR) / run.output_dir).exists()
    assert storage.run_latest_checkpoint(run) == 12

    evaluation = finished(services.evaluation_create(run=run, owner=user).id, timeout=400)
    assert evaluation.status == RunStatus.COMPLETED, log_text(evaluation)[-3000:]
    events = evaluation.environment.get("events", [])
    assert [e["step"] for e in events if e["event"] == "summary"] == [12]  # the step it loaded
    wait_for(
        lambda: EvaluationRow.objects.filter(evaluation=evaluation).exists(),
        timeout=30,
        message="the evaluation rows, read back from the bucket",
    )
    rows = f"artifacts/{evaluation.output_dir}/evaluation_rows.jsonl"
    assert EvaluationRow.objects.filter(evaluation=evaluation).count() == len(
        object_text(object_store, rows).splitlines()
    )

    export = services.export_create(run=run, owner=user, name="tiny-from-bucket")
    export = finished(export.id, timeout=300)
    assert export.status == RunStatus.COMPLETED, log_text(export)[-3000:]
    prefix = f"artifacts/{export.output_dir}/model/"
    keys = {key.removeprefix(prefix) for key in bucket_keys(object_store, prefix)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= keys, keys
    listed = {row["path"] for row in storage.run_output_files(export)}
    assert "model/model.safetensors" in listed
    client = Client()
    client.force_login(user)
    download = client.get(f"/runs/{export.id}/files/model/config.json")
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert body == object_text(object_store, prefix + "config.json")
    assert json.load(io.BytesIO(body))["model_type"] == "llama"

    # The playground's server has not loaded the run: the worker stages the step for it.
    prompt = services.prompt_submit(run=run, owner=user, prompt="What is 2 + 3?")
    prompt = wait_for(
        lambda: PlaygroundPrompt.objects.exclude(status="pending").filter(id=prompt.id).first(),
        timeout=300,
        interval=0.5,
        message="the prompt's answer",
    )
    assert prompt.status == "done", prompt.error
    assert prompt.tuned_output and prompt.base_output

    # Staging folders are gone; deleting the run deletes its jobs' objects too.
    staging = worker_artifacts / "staging"
    wait_for(lambda: local_files(staging) == [], timeout=30, message="staging to empty")
    assert not (worker_artifacts / "runs").exists() or local_files(worker_artifacts / "runs") == []
    services.run_delete(run=run)
    assert bucket_keys(object_store, "artifacts/") == []


@pytest.mark.django_db
def test_a_store_that_is_away_fails_the_job_s_preparation_and_leaves_no_staging(
    settings, monkeypatch, run_factory
):
    from .test_objectstore import free_port

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    source, job = run_factory(), run_factory()
    settings.ARTIFACTS_URL = f"s3://{BUCKET}/artifacts"
    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job.source = source
    job.config = {**job.config, "source": {"checkpoint_dir": "/elsewhere/checkpoints"}}
    with pytest.raises(OSError, match="object store"):
        storage.run_localized(job)
    assert not (Path(settings.ARTIFACTS_DIR) / "staging" / str(job.id)).exists()
