"""Run folders and datasets in an object store, against a real S3 API on loopback.

The server is moto's standalone server (`moto[server]`, a dev dependency): pure Python, no
binary to download, and it speaks the S3 REST API that s3fs (and any S3 client) talks, so
the code under test is the same that talks to a real bucket. The worker gets its own
scratch folders, so nothing reaches the web side through a shared mount."""

import io
import socket
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from runs import objectstore, services, storage
from runs.datasets import services as dataset_services
from runs.errors import NotFound
from runs.models import RunStatus

from .conftest import REPO, SAMPLE, import_dataset, wait_for

BUCKET = "tunixrt-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port, with one empty bucket."""
    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up():
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, timeout=60, message="moto's S3 server to listen")
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def object_store(s3_server, settings, monkeypatch):
    """Artifacts and datasets in the bucket; returns the S3 client and the worker's env."""
    endpoint, client = s3_server
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    settings.ARTIFACTS_URL = f"s3://{BUCKET}/artifacts"
    settings.DATASETS_URL = f"s3://{BUCKET}/datasets"
    settings.S3_ENDPOINT_URL = endpoint
    yield client
    for key in bucket_keys(client):  # the next test starts from an empty bucket
        client.delete_object(Bucket=BUCKET, Key=key)


def bucket_keys(client, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def local_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "relative",
    ["../other", "runs/../../x", "/abs", "a//b", "a\\b", "a/\x00", ".hidden", "a/./b", "x" * 1100],
)
def test_a_key_outside_the_prefix_is_refused(relative, s3_server, object_store):
    store = objectstore.artifacts()
    with pytest.raises(objectstore.UnsafeKey):
        store.key(relative)
    with pytest.raises(NotFound):
        store.open(relative)


@pytest.mark.django_db(transaction=True)
def test_a_dataset_is_uploaded_read_back_from_the_store_and_removed_with_it(
    object_store, settings, user
):
    dataset = import_dataset(owner=user)
    key = f"datasets/{dataset.file_path}"
    assert bucket_keys(object_store) == [key]
    # Another host's empty cache: the file comes from the store.
    local = storage.dataset_path(dataset)
    local.unlink()
    assert dataset_services.dataset_check(dataset).ok
    assert local.is_file()
    dataset_services.dataset_delete(dataset=dataset, user=user)
    assert bucket_keys(object_store) == []


TRAIN = {
    "learning_rate": 0.003,
    "batch_size": 4,
    "max_seq_length": 256,
    "max_steps": 12,
    "eval_every_n_steps": 4,
    "checkpoint_every_n_steps": 6,
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "seed": 7,
}


@pytest.mark.tunix
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_run_checkpoints_into_the_bucket_resumes_from_it_and_leaves_nothing(
    object_store, settings, tmp_path, user, staff_user, start_cluster, run_factory
):
    from .test_tunix_e2e import finished, losses

    target = Path(settings.MODELS_DIR) / "tiny-llama3"
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(target), "--data", str(SAMPLE)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    worker_artifacts, worker_datasets = tmp_path / "worker-artifacts", tmp_path / "worker-data"
    start_cluster(
        workers=1,
        TUNIXRT_ARTIFACTS_DIR=worker_artifacts,  # the worker shares no folder with the web
        TUNIXRT_DATASETS_DIR=worker_datasets,
        TUNIXRT_ARTIFACTS_URL=settings.ARTIFACTS_URL,
        TUNIXRT_DATASETS_URL=settings.DATASETS_URL,
        TUNIXRT_S3_ENDPOINT_URL=settings.S3_ENDPOINT_URL,
        TUNIXRT_EVALUATE_AFTER_RUN=0,
    )
    parent = finished(run_factory(mode="local", model_id="local:tiny-llama3", **TRAIN).id)
    assert parent.status == RunStatus.COMPLETED, parent.message
    assert (worker_datasets / parent.dataset.file_path).is_file()  # read from the store

    # The bucket holds the run's folder; the web process lists and downloads it.
    keys = bucket_keys(object_store, f"artifacts/{parent.output_dir}/")
    assert f"artifacts/{parent.output_dir}/checkpoints/12/commit_success.txt" in keys, keys
    assert f"artifacts/{parent.output_dir}/tunix_config.json" in keys
    assert [c["step"] for c in storage.run_checkpoints(parent) if c["complete"]][0] == 12
    client = Client()
    client.force_login(user)
    page = client.get(f"/runs/{parent.id}/")
    assert page.status_code == 200 and b"tunix_config.json" in page.content
    download = client.get(f"/runs/{parent.id}/files/tunix_config.json")
    assert download.status_code == 200
    assert (
        b"".join(download.streaming_content)
        == object_store.get_object(
            Bucket=BUCKET, Key=f"artifacts/{parent.output_dir}/tunix_config.json"
        )["Body"].read()
    )
    archive = client.get(f"/runs/{parent.id}/checkpoints/12.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive.streaming_content))) as tar:
        names = tar.getnames()
    assert "checkpoint-12/commit_success.txt" in names
    assert client.get(f"/runs/{parent.id}/files/..%2F..%2Fdatasets").status_code == 404

    # Resume reads the parent's step back from the store on a host that has no copy.
    child = services.run_resume(run=parent, owner=user, max_steps=20)
    child = finished(child.id)
    assert child.status == RunStatus.COMPLETED, child.message
    steps = [s for s, _ in losses(child)]
    assert steps and min(steps) > 12 and max(steps) == 20
    assert any(c["complete"] and c["step"] == 20 for c in storage.run_checkpoints(child))

    # Delete removes one run's objects; retention removes the rest; nothing is left.
    services.run_delete(run=child)
    assert bucket_keys(object_store, f"artifacts/{child.output_dir}/") == []
    assert bucket_keys(object_store, f"artifacts/{parent.output_dir}/")
    services.runs_prune(older_than_days=1, now=timezone.now() + timedelta(days=2))
    assert bucket_keys(object_store, "artifacts/") == []
    dataset_services.dataset_delete(dataset=parent.dataset, user=staff_user)
    assert bucket_keys(object_store) == []
    wait_for(lambda: local_files(worker_artifacts) == [], timeout=30, message="scratch to empty")
    assert local_files(Path(settings.ARTIFACTS_DIR)) == []
