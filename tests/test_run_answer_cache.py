"""Finished runs' answers come from the cache, and never outlive a change or a delete."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs import services
from runs.models import TunixRun

pytestmark = pytest.mark.django_db


def run_queries(api, path):
    """(answer, number of queries on the runs table) of one GET."""
    with CaptureQueriesContext(connection) as queries:
        response = api.get(path)
    return response, sum('"runs_tunixrun"' in q["sql"] for q in queries.captured_queries)


def test_a_finished_run_is_answered_from_the_cache_after_one_light_query(api, run_factory):
    run = run_factory(name="cached")  # a dry-run: finished when created
    first, misses = run_queries(api, f"/api/tunix/runs/{run.id}")
    second, hits = run_queries(api, f"/api/tunix/runs/{run.id}")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and second.json()["config"] == run.config
    assert (misses, hits) == (2, 1)


def test_an_active_run_is_read_fresh_every_time(api, run_factory):
    run = run_factory(mode="local", command=["true"])
    assert api.get(f"/api/tunix/runs/{run.id}").json()["status"] == "pending"
    TunixRun.objects.filter(id=run.id).update(status="running", phase="training")
    assert api.get(f"/api/tunix/runs/{run.id}").json()["phase"] == "training"


def test_a_cached_run_shows_a_pin_and_its_parent_deleted_at_once(api, run_factory):
    parent, child = run_factory(name="parent"), run_factory(name="child")
    TunixRun.objects.filter(id=child.id).update(parent=parent)
    assert api.get(f"/api/tunix/runs/{child.id}").json()["pinned"] is False
    services.run_set_pinned(run=child, pinned=True)
    assert api.get(f"/api/tunix/runs/{child.id}").json()["pinned"] is True
    assert api.get(f"/api/tunix/runs/{child.id}").json()["parent_id"] == str(parent.id)
    assert api.delete(f"/api/tunix/runs/{parent.id}").status_code == 200
    assert api.get(f"/api/tunix/runs/{child.id}").json()["parent_id"] is None


def test_a_deleted_run_is_gone_from_the_api_at_once(api, run_factory, other_user):
    from .conftest import ApiClient

    run = run_factory()
    assert api.get(f"/api/tunix/runs/{run.id}").status_code == 200
    _, token = services.api_token_create(user=other_user)
    assert ApiClient(token).get(f"/api/tunix/runs/{run.id}").status_code == 403
    assert api.delete(f"/api/tunix/runs/{run.id}").status_code == 200
    assert api.get(f"/api/tunix/runs/{run.id}").status_code == 404
    from django.core.cache import cache

    assert cache.get(f"tunixrt:run-answer:{run.id}") is None
