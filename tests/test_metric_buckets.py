"""The chart buckets kept as metrics are stored (runs/metric_buckets.py): every level of them
equals a grouping of the raw rows computed by brute force, whatever the order and repeats of
the points; the supervisor keeps them; the run page reads them (and still draws a run whose
metrics were stored before them); deleting a run deletes them."""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import selectors, services, supervisor
from runs.metric_buckets import (
    LOWEST_LEVEL,
    MAX_STEP,
    TOP_LEVEL,
    metric_buckets_rebuild,
    metrics_store,
)
from runs.models import Metric, MetricBucket, RunStatus, TunixRun
from tests.test_metric_downsampling import spiky
from tests.test_run_page import running_run

pytestmark = pytest.mark.django_db

FIELDS = (
    "first_step",
    "first_value",
    "last_step",
    "last_value",
    "low_step",
    "low_value",
    "high_step",
    "high_value",
)


def brute_force(run) -> dict:
    """{(level, name, bucket): (first, last, lowest, highest as (step, value))} of the raw
    rows, a tie in value going to the earlier step."""
    rows = list(Metric.objects.filter(run=run).values_list("name", "step", "value"))
    groups: dict = {}
    for level in range(LOWEST_LEVEL, TOP_LEVEL + 1):
        for name, step, value in rows:
            groups.setdefault((level, name, step >> level), []).append((step, value))
    return {
        key: (
            *min(points),
            *max(points),
            *min(points, key=lambda p: (p[1], p[0])),
            *max(points, key=lambda p: (p[1], -p[0])),
        )
        for key, points in groups.items()
    }


def stored(run) -> dict:
    return {
        (row[0], row[1], row[2]): tuple(row[3:])
        for row in MetricBucket.objects.filter(run=run).values_list(
            "level", "name", "bucket", *FIELDS
        )
    }


def test_the_buckets_of_random_batches_equal_a_brute_force_grouping_of_the_rows(run_factory):
    run = run_factory()
    rng = random.Random(13)
    sent: dict = {}
    for batch_number in range(12):
        batch = []
        for _ in range(rng.randrange(1, 400)):
            name = rng.choice(["train/loss", "eval/loss", "train/grad_norm"])
            # Mostly forward, some far back, some repeated (with another value), some huge.
            step = rng.choice(
                [
                    batch_number * 300 + rng.randrange(300),
                    rng.randrange(batch_number * 300 + 1),
                    rng.randrange(2**20, 2**22),
                    MAX_STEP - rng.randrange(3),
                ]
            )
            # Few distinct values, so that ties in the lowest and highest are common.
            value = rng.choice([rng.uniform(-5, 5), float(rng.randrange(-2, 3))])
            batch.append((name, step, value))
        new = {(n, s) for n, s, _ in batch if (n, s) not in sent}
        for name, step, value in batch:
            sent.setdefault((name, step), value)  # the first value of a step is kept
        assert metrics_store(run.id, batch) == len(new)
    rows = dict(
        ((n, s), v)
        for n, s, v in Metric.objects.filter(run=run).values_list("name", "step", "value")
    )
    assert rows == sent
    expected = brute_force(run)
    assert stored(run) == expected
    # The whole series is in the top level's bucket 0.
    assert {k for k in expected if k[0] == TOP_LEVEL} == {
        (TOP_LEVEL, name, 0) for name in {n for n, _ in sent}
    }


def test_storing_a_batch_again_changes_nothing(run_factory):
    run = run_factory()
    batch = [("train/loss", step, spiky(step)) for step in range(1, 3_000)]
    assert metrics_store(run.id, batch) == len(batch)
    before = stored(run)
    assert metrics_store(run.id, batch) == 0
    assert metrics_store(run.id, [("train/loss", 7, 1e9)]) == 0  # step 7 keeps its value
    assert stored(run) == before == brute_force(run)


def test_a_rebuild_gives_what_storing_gave_and_leaves_non_finite_values_out(run_factory):
    run = run_factory()
    metrics_store(run.id, [("train/loss", step, spiky(step)) for step in range(1, 20_001)])
    kept = stored(run)
    assert metric_buckets_rebuild(run.id) == 20_000
    assert stored(run) == kept
    other = run_factory()
    Metric.objects.bulk_create(
        Metric(run=other, name="train/loss", step=s, value=float("inf") if s == 5 else 1.0 / s)
        for s in range(1, 101)
    )
    metric_buckets_rebuild(other.id)
    top = MetricBucket.objects.get(run=other, level=TOP_LEVEL)
    assert (top.high_step, top.high_value) == (1, 1.0)  # step 5 left out


def test_the_supervisor_keeps_the_buckets_of_what_the_child_reports(run_factory, monkeypatch):
    # Stored every 500 points as well as on each tick: buckets merged across many batches,
    # and a child faster than the tick does not overflow the outage buffer (1,000 here).
    monkeypatch.setattr(supervisor, "METRIC_FLUSH_COUNT", 500)
    monkeypatch.setattr(supervisor, "MAX_BUFFERED_METRICS", 1_000)
    code = (
        "import json, sys\n"
        "for step in range(1, 3001):\n"
        "    print(json.dumps({'event': 'metric', 'name': 'train/loss', 'step': step,\n"
        "                      'value': 50.0 if step == 1234 else 1.0 / step}))\n"
        "    if step % 100 == 0:\n"
        "        print(json.dumps({'event': 'metric', 'name': 'eval/loss', 'step': step,\n"
        "                          'value': 2.0 / step}))\n"
        # A step past the top level's range, which PostgreSQL's integer cannot hold either.
        f"print(json.dumps({{'event': 'metric', 'name': 'train/loss', 'step': {MAX_STEP + 1},"
        " 'value': 1.0}))\n"
    )
    run = run_factory(mode="local", command=[sys.executable, "-c", code])
    assert services.run_claim(run_id=run.id)
    cwd, env = services.run_prepare(run=run)
    outcome = supervisor.Supervisor(run, cwd=cwd, env_extra=env).execute()
    assert outcome.status == RunStatus.COMPLETED, outcome
    assert Metric.objects.filter(run=run).count() == 3_030
    assert stored(run) == brute_force(run)
    series = selectors.run_metric_series(run, points=200)["train/loss"]
    assert (1234, 50.0) in series and series[-1] == (3000, 1.0 / 3000)


def test_the_run_page_reads_buckets_and_no_grouping_of_raw_rows(client, user, run_factory):
    client.force_login(user)
    run = running_run(run_factory)
    metrics_store(run.id, [("train/loss", step, spiky(step)) for step in range(1, 30_001)])
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/runs/{run.id}/")
    assert response.status_code == 200 and "loss-chart" in response.content.decode()
    on_metrics = [q["sql"] for q in queries.captured_queries if '"runs_metric"' in q["sql"]]
    assert on_metrics and not any("GROUP BY" in sql for sql in on_metrics)
    series = selectors.run_metric_series(run)["train/loss"]
    assert len(series) <= selectors.SERIES_POINTS
    # The extremes at their own steps, not placed between the ends of their bucket.
    assert (6_789, 50.0) in series and (7_001, -3.0) in series
    assert series[0] == (1, spiky(1)) and series[-1] == (30_000, spiky(30_000))
    steps = [step for step, _ in series]
    assert steps == sorted(set(steps))


def test_a_run_stored_before_the_buckets_still_renders_and_reads_them_once_rebuilt(
    client, user, run_factory
):
    client.force_login(user)
    run = running_run(run_factory)
    Metric.objects.bulk_create(
        (Metric(run=run, name="train/loss", step=s, value=spiky(s)) for s in range(1, 30_001)),
        batch_size=5000,
    )
    assert not MetricBucket.objects.filter(run=run).exists()
    response = client.get(f"/runs/{run.id}/")
    assert response.status_code == 200 and "loss-chart" in response.content.decode()
    grouped = selectors.run_metric_series(run)["train/loss"]  # from the raw rows
    assert 50.0 in [v for _, v in grouped] and len(grouped) <= selectors.SERIES_POINTS
    # A point written around the store later on: the buckets no longer reach the end.
    metric_buckets_rebuild(run.id)
    Metric.objects.create(run=run, name="train/loss", step=30_001, value=0.5)
    assert selectors.run_metric_series(run)["train/loss"][-1] == (30_001, 0.5)
    metric_buckets_rebuild(run.id)
    with CaptureQueriesContext(connection) as queries:
        rebuilt = selectors.run_metric_series(run)["train/loss"]
    assert not any("GROUP BY" in q["sql"] for q in queries.captured_queries)
    assert (6_789, 50.0) in rebuilt and rebuilt[-1] == (30_001, 0.5)


def test_deleting_a_run_deletes_its_buckets(api, run_factory):
    run = run_factory()
    metrics_store(run.id, [("train/loss", step, 1.0 / step) for step in range(1, 200)])
    assert MetricBucket.objects.filter(run=run).exists()
    assert api.delete(f"/api/tunix/runs/{run.id}").status_code in (200, 204)
    assert not MetricBucket.objects.filter(run_id=run.id).exists()


def test_pruning_a_run_deletes_its_buckets(run_factory):
    now = timezone.now()
    old, recent = run_factory(), run_factory()
    for run in (old, recent):
        metrics_store(run.id, [("train/loss", step, 1.0 / step) for step in range(1, 200)])
    TunixRun.objects.filter(id=old.id).update(
        status=RunStatus.COMPLETED, finished_at=now - timedelta(days=400)
    )
    TunixRun.objects.filter(id=recent.id).update(status=RunStatus.COMPLETED, finished_at=now)
    services.runs_prune(older_than_days=30, now=now)
    assert not MetricBucket.objects.filter(run_id=old.id).exists()
    assert stored(recent) == brute_force(recent)


def test_a_metric_event_past_the_largest_step_is_not_stored(run_factory, tmp_path):
    run = run_factory(mode="local", command=[sys.executable, "-c", "pass"])
    watcher = supervisor.Supervisor(run, cwd=tmp_path)
    for step in (MAX_STEP, MAX_STEP + 1, -1):
        line = json.dumps({"event": "metric", "name": "x", "step": step, "value": 1.0})
        watcher._line("stdout", line.encode())
    assert [step for _, step, _ in watcher.metrics] == [MAX_STEP]
