"""Retention's orphan sweep of the bucket (moto's S3 server on loopback, as in
tests/test_objectstore.py): a runs/<uuid> prefix no run owns is removed after the grace the
local sweep uses; what a run owns, holds or sits in, and what a pending FolderDeletion names,
is never touched."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from runs import services
from runs.models import FolderDeletion, TunixRun
from runs.services.retention import ORPHAN_GRACE

from .test_objectstore import BUCKET, bucket_keys, object_store, s3_server  # noqa: F401

pytestmark = pytest.mark.django_db


def put(client, key: str, body: bytes = b"0123456789") -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_only_prefixes_no_run_owns_are_swept_after_the_grace(
    object_store,  # noqa: F811 - the fixture imported above
    run_factory,
):
    live = run_factory()  # a pending run: never pruned, its prefix never swept
    by_id = run_factory()  # its prefix is found by its id even with another folder recorded
    chosen = run_factory()  # a run that chose runs/<uuid>/sub (before runs/<id> was the rule)
    holder, deleting, orphan = (uuid.uuid4() for _ in range(3))
    TunixRun.objects.filter(id=by_id.id).update(output_dir=f"elsewhere/{by_id.id}")
    TunixRun.objects.filter(id=chosen.id).update(output_dir=f"runs/{holder}/sub")
    keys = {
        f"artifacts/runs/{live.id}/checkpoints/6/commit_success.txt",
        f"artifacts/runs/{by_id.id}/tunix_config.json",
        f"artifacts/runs/{holder}/sub/train.jsonl",
        f"artifacts/runs/{deleting}/train.jsonl",
        "artifacts/runs/not-a-run-id/notes.txt",
        f"artifacts/other/{orphan}/x.bin",
    }
    for key in keys:
        put(object_store, key)
    put(object_store, f"artifacts/runs/{orphan}/checkpoints/6/state", b"x" * 100)
    put(object_store, f"artifacts/runs/{orphan}/tunix_config.json", b"x" * 20)
    later = timezone.now() + ORPHAN_GRACE + timedelta(minutes=5)
    # Claimed by a pass that is still at work: the leftover pass leaves it to that one.
    FolderDeletion.objects.create(paths=[f"runs/{deleting}"], claimed_at=later)

    soon = services.runs_prune(older_than_days=1, now=timezone.now() + timedelta(minutes=5))
    assert soon.orphans == 0  # within the grace: a run may be about to own it
    assert len(bucket_keys(object_store, "artifacts/")) == len(keys) + 2

    dry = services.runs_prune(older_than_days=1, now=later, dry_run=True)
    assert (dry.orphans, dry.file_bytes) == (1, 120)
    assert len(bucket_keys(object_store, "artifacts/")) == len(keys) + 2

    done = services.runs_prune(older_than_days=1, now=later)
    assert (done.orphans, done.file_bytes) == (1, 120)
    assert set(bucket_keys(object_store, "artifacts/")) == keys
    assert TunixRun.objects.filter(id__in=[live.id, by_id.id, chosen.id]).count() == 3


def test_without_a_store_the_sweep_lists_nothing(run_factory):
    summary = services.runs_prune(older_than_days=1, now=timezone.now() + timedelta(days=2))
    assert summary.orphans == 0
