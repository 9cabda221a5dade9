"""A dry-run does not re-read its dataset every time (datasets are immutable, so the check is
remembered by dataset and hash), and dry-runs count towards a per-user rate limit (429)."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from runs import services
from runs.datasets import services as dataset_services
from runs.datasets import validation
from runs.models import RunStatus, TunixRun

from .conftest import ApiClient

pytestmark = pytest.mark.django_db

DRY = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": True}


@pytest.fixture
def file_reads(monkeypatch):
    """How many times a stored dataset file is validated (a spy: the real validation runs)."""
    calls = []
    real = validation.validate_stream

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "validate_stream", counting)
    return calls


def test_a_second_dry_run_on_the_same_dataset_does_not_read_its_file_again(
    run_factory, dataset, file_reads
):
    first = run_factory()
    second = run_factory(learning_rate=1e-3)
    assert first.status == second.status == RunStatus.COMPLETED
    assert "240 valid rows" in second.message
    assert len(file_reads) == 1


def test_a_file_changed_on_disk_is_read_again_and_refused(run_factory, dataset, settings):
    assert run_factory().status == RunStatus.COMPLETED
    path = settings.DATASETS_DIR / dataset.file_path
    path.write_bytes(path.read_bytes().replace(b"a", b"b", 1))  # same size, new content
    run = run_factory()
    assert run.status == RunStatus.FAILED
    assert "changed since it was imported" in run.message


def test_deleting_a_dataset_forgets_its_check(
    dataset, staff_user, file_reads, django_capture_on_commit_callbacks
):
    first = dataset_services.dataset_check(dataset)
    assert dataset_services.dataset_check(dataset) == first and first.ok
    assert len(file_reads) == 1
    remembered = cache.get(f"tunixrt:dataset-check-key:{dataset.pk}")
    assert cache.get(remembered) == first
    with django_capture_on_commit_callbacks(execute=True):
        dataset_services.dataset_delete(dataset=dataset, user=staff_user)
    assert cache.get(remembered) is None


def test_dry_runs_past_the_per_minute_limit_answer_429_saying_the_limit(
    api, dataset, tiny_model_dir, settings, other_user
):
    settings.DRY_RUNS_PER_MINUTE = 3
    for _ in range(3):
        assert api.post("/api/tunix/run", DRY).status_code == 201
    refused = api.post("/api/tunix/run", DRY)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "You created 3 dry-runs in the last minute, the most allowed per user "
        "(TUNIXRT_DRY_RUNS_PER_MINUTE); wait a minute and try again."
    }
    assert TunixRun.objects.count() == 3
    run = TunixRun.objects.first()
    assert api.post(f"/api/tunix/runs/{run.id}/rerun").status_code == 429  # also via rerun
    # Another user has their own allowance; a minute later the first user has theirs again.
    _, token = services.api_token_create(user=other_user)
    other = ApiClient(token)
    assert other.post("/api/tunix/run", DRY).status_code == 201
    TunixRun.objects.update(created_at=timezone.now() - timedelta(seconds=61))
    assert api.post("/api/tunix/run", DRY).status_code == 201
