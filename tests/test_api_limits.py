"""Queue limits through the API: a clear 429, and no race lets submissions past them."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from runs import services
from runs.models import RunStatus, TunixRun

from .conftest import ApiClient

LOCAL = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": False}


@pytest.mark.django_db
def test_the_per_user_queue_limit_answers_429_saying_the_limit(
    api, dataset, tiny_model_dir, tiny_launcher, settings, other_user
):
    settings.MAX_QUEUED_RUNS_PER_USER = 2
    assert api.post("/api/tunix/run", LOCAL).status_code == 202
    assert api.post("/api/tunix/run", LOCAL).status_code == 202
    refused = api.post("/api/tunix/run", LOCAL)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "You already have 2 queued runs, the most allowed per user; wait for some "
        "to start or cancel them."
    }
    assert TunixRun.objects.count() == 2
    # Dry-runs never queue, so they are not limited; another user still has room.
    assert api.post("/api/tunix/run", {**LOCAL, "dry_run": True}).status_code == 201
    _, token = services.api_token_create(user=other_user)
    assert ApiClient(token).post("/api/tunix/run", LOCAL).status_code == 202
    # A cancelled run frees its place.
    first = TunixRun.objects.filter(owner__username="alice", mode="local").first()
    assert api.post(f"/api/tunix/runs/{first.id}/cancel").status_code == 200
    assert api.post("/api/tunix/run", LOCAL).status_code == 202


@pytest.mark.django_db
def test_the_total_queue_limit_answers_429_saying_the_limit(
    api, dataset, tiny_model_dir, tiny_launcher, settings, other_user
):
    settings.MAX_QUEUED_RUNS_TOTAL = 1
    assert api.post("/api/tunix/run", LOCAL).status_code == 202
    _, token = services.api_token_create(user=other_user)
    refused = ApiClient(token).post("/api/tunix/run", LOCAL)
    assert refused.status_code == 429
    assert refused.json() == {"detail": "The queue is full (1 queued runs); try again later."}
    run = TunixRun.objects.get()
    response = ApiClient(token).post(f"/api/tunix/runs/{run.id}/rerun", {"dry_run": False})
    assert response.status_code == 403
    assert api.post(f"/api/tunix/runs/{run.id}/rerun").status_code == 429
    assert TunixRun.objects.count() == 1


def submit_concurrently(clients: list[ApiClient], body=LOCAL) -> list[int]:
    """Every client posts one run at the same moment, each on its own connection."""
    barrier = threading.Barrier(len(clients))

    def submit(client):
        try:
            barrier.wait(timeout=60)
            return client.post("/api/tunix/run", body).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(submit, clients))


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_submissions_never_exceed_the_per_user_limit(
    user, dataset, tiny_model_dir, tiny_launcher, settings
):
    settings.MAX_QUEUED_RUNS_PER_USER = 5
    clients = [ApiClient(services.api_token_create(user=user)[1]) for _ in range(20)]
    codes = submit_concurrently(clients)
    assert sorted(codes) == [202] * 5 + [429] * 15
    assert TunixRun.objects.filter(owner=user, status=RunStatus.PENDING).count() == 5


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_submissions_never_exceed_the_total_limit(
    django_user_model, dataset, tiny_model_dir, tiny_launcher, settings
):
    settings.MAX_QUEUED_RUNS_TOTAL = 7
    users = [django_user_model.objects.create_user(f"u{i}") for i in range(4)]
    clients = [ApiClient(services.api_token_create(user=users[i % 4])[1]) for i in range(20)]
    codes = submit_concurrently(clients)
    assert sorted(codes) == [202] * 7 + [429] * 13
    assert TunixRun.objects.filter(status=RunStatus.PENDING).count() == 7
