"""gs:// artifacts against a GCS JSON API on loopback: `gcp-storage-emulator` (a dev dependency,
pure Python), which gcsfs reaches through its own STORAGE_EMULATOR_HOST (anonymous, as against
any emulator). The same Store code as for s3://: listing, streamed reads, staging, removal and
retention's sweep, which reads gcsfs's `updated` times."""

import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from runs import objectstore, protocol, publishing, services, storage
from runs.errors import NotFound
from runs.services.retention import ORPHAN_GRACE

from .conftest import wait_for

BUCKET = "tunixrt-gcs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("gcs") / "gcs.log", "wb")  # noqa: SIM115
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    proc = subprocess.Popen(
        [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up():
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, timeout=60, message="the GCS emulator to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def gcs(gcs_server, settings, monkeypatch):
    """Artifacts in the emulator's bucket; returns the Store."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    settings.ARTIFACTS_URL = f"gs://{BUCKET}/artifacts"
    store = objectstore.artifacts()
    if not store.fs.exists(BUCKET):
        store.fs.mkdir(BUCKET)
    yield store
    store.remove("")
    objectstore._store.cache_clear()  # the next test's filesystem reads its own environment


def test_a_folder_is_listed_read_staged_and_removed(gcs, tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints" / "6" / "state").mkdir(parents=True)
    (folder / "checkpoints" / "6" / "state" / "data").write_bytes(b"weights" * 100)
    (folder / "checkpoints" / "6" / protocol.CHECKPOINT_COMPLETE_MARKER).write_text("ok")
    (folder / "tunix_config.json").write_text("{}")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        gcs.put(path, f"runs/abc/{path.relative_to(folder).as_posix()}")

    assert objectstore.run_files("runs/abc") == [
        ("checkpoints/6/commit_success.txt", 2),
        ("checkpoints/6/state/data", 700),
        ("tunix_config.json", 2),
    ]
    assert gcs.folders("runs") == ["abc"]
    assert [c["step"] for c in objectstore.run_checkpoints("runs/abc") if c["complete"]] == [6]
    with gcs.open("runs/abc/checkpoints/6/state/data") as handle:
        assert handle.read() == b"weights" * 100
    size, newest = gcs.usage("runs/abc")
    assert size == 704 and abs(newest - timezone.now().timestamp()) < 300
    target = tmp_path / "staged"
    assert publishing.stage_parent_checkpoint("runs/abc", target) == 6
    assert (target / "6" / "state" / "data").read_bytes() == b"weights" * 100
    with pytest.raises(NotFound):
        gcs.open("runs/abc/../../other")

    assert storage.stored_folder_remove("runs/abc") == 704
    assert objectstore.run_files("runs/abc") == []


@pytest.mark.django_db
def test_retention_sweeps_an_orphaned_prefix_in_the_bucket(gcs, tmp_path, run_factory):
    run = run_factory()
    orphan = uuid.uuid4()
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 10)
    gcs.put(source, f"runs/{orphan}/f.bin")
    gcs.put(source, f"runs/{run.id}/f.bin")
    later = timezone.now() + ORPHAN_GRACE + timedelta(minutes=5)
    summary = services.runs_prune(older_than_days=1, now=later)
    assert (summary.orphans, summary.file_bytes) == (1, 10)
    assert gcs.folders("runs") == [str(run.id)]
