"""Metric series are downsampled in the database: at most `points` points a series, with the
first, last, lowest and highest point of every bucket kept; the run page, compare and the
API read them so, and the page's poll asks for index probes, not a count of every row."""

from __future__ import annotations

import math

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs import selectors
from runs.models import Metric
from runs.pages import charts
from runs.selectors.metrics import bucket_width
from tests.test_run_page import running_run

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def add_steps(run, name, steps, value=lambda step: 1.0 / step):
    Metric.objects.bulk_create(
        (Metric(run=run, name=name, step=s, value=value(s)) for s in steps), batch_size=5000
    )


def spiky(step: int) -> float:
    if step == 6_789:
        return 50.0  # a loss spike
    if step == 7_001:
        return -3.0  # and a dip
    return 2.0 + math.sin(step / 500)


def test_a_short_series_comes_whole_and_a_long_one_at_most_points_with_spikes_kept(run_factory):
    run = run_factory()
    add_steps(run, "eval/loss", range(10, 201, 10))
    add_steps(run, "train/loss", range(1, 20_001), spiky)
    series = selectors.run_metric_series(run, points=400)
    assert series["eval/loss"] == [(s, 1.0 / s) for s in range(10, 201, 10)]
    train = series["train/loss"]
    assert len(train) <= 400
    steps = [step for step, _ in train]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 20_000
    values = [value for _, value in train]
    assert 50.0 in values and -3.0 in values  # every-k-th sampling would lose both
    assert train[-1] == (20_000, spiky(20_000))
    # The same with the default (2,000 points): still bounded.
    assert len(selectors.run_metric_series(run)["train/loss"]) <= selectors.SERIES_POINTS


def test_the_remembered_buckets_give_what_a_fresh_read_gives_as_a_run_grows(run_factory):
    run = run_factory()
    add_steps(run, "train/loss", range(1, 5_001), spiky)
    first = selectors.run_metric_series(run, points=200)["train/loss"]
    add_steps(run, "train/loss", range(5_001, 5_301), spiky)  # a poll later: same width
    assert bucket_width(1, 5_000, 200) == bucket_width(1, 5_300, 200)
    grown = selectors.run_metric_series(run, points=200)["train/loss"]
    assert grown[-1] == (5_300, spiky(5_300)) and len(grown) > len(first) - 8
    cache.clear()
    assert selectors.run_metric_series(run, points=200)["train/loss"] == grown


def test_a_series_of_non_finite_values_still_reads(run_factory):
    run = run_factory()
    add_steps(run, "train/grad_norm", range(1, 3_001), lambda s: math.inf if s % 2 else 1.0)
    series = selectors.run_metric_series(run, points=100)["train/grad_norm"]
    assert 0 < len(series) <= 100


def test_the_poll_token_changes_when_a_point_arrives_without_counting_rows(run_factory):
    run = run_factory()
    assert selectors.run_metric_version(run) == 0
    add_steps(run, "train/loss", range(1, 101))
    version = selectors.run_metric_version(run)
    add_steps(run, "train/loss", [101])
    assert selectors.run_metric_version(run) > version
    with CaptureQueriesContext(connection) as queries:
        selectors.run_metric_version(run)
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)


def test_the_run_page_and_its_poll_draw_a_long_run_from_downsampled_series(
    client, user, run_factory
):
    client.force_login(user)
    run = running_run(run_factory)
    add_steps(run, "train/loss", range(1, 30_001), spiky)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/runs/{run.id}/")
    assert response.status_code == 200
    # No query hands every row over: the page asks for buckets, a few steps, index probes.
    on_metrics = [q["sql"] for q in queries.captured_queries if '"runs_metric"' in q["sql"]]
    assert on_metrics
    bounded = ("GROUP BY", "LIMIT", " IN (", "RECURSIVE")
    assert all(any(word in sql for word in bounded) for sql in on_metrics), on_metrics
    html = response.content.decode()
    assert "loss-chart" in html
    version = selectors.run_metric_version(run)
    assert f"m={version}" in html
    poll = client.get(f"/runs/{run.id}/?after=0&m={version}&s=running", headers=HTMX)
    assert 'id="loss-chart"' not in poll.content.decode()  # nothing new: no redraw
    add_steps(run, "train/loss", [30_001])
    poll = client.get(f"/runs/{run.id}/?after=0&m={version}&s=running", headers=HTMX)
    assert 'id="loss-chart"' in poll.content.decode()


def test_the_api_downsamples_with_points_and_refuses_a_bound_it_does_not_allow(api, run_factory):
    run = run_factory()
    add_steps(run, "train/loss", range(1, 10_001), spiky)
    data = api.get(f"/api/tunix/runs/{run.id}/metrics?points=100").json()
    train = data["series"]["train/loss"]
    assert len(train) <= 100
    assert 50.0 in [p["value"] for p in train]
    assert len(api.get(f"/api/tunix/runs/{run.id}/metrics").json()["series"]["train/loss"]) <= 2000
    assert api.get(f"/api/tunix/runs/{run.id}/metrics?points=1").status_code == 422
    assert api.get(f"/api/tunix/runs/{run.id}/metrics?points=10000000").status_code == 422
    whole = api.get(f"/api/tunix/runs/{run.id}/metrics?points=10000").json()
    assert len(whole["series"]["train/loss"]) == 10_000


def test_the_chart_keeps_a_spike_when_it_thins_a_series():
    points = [(step, spiky(step)) for step in range(1, 10_001)]
    kept = charts.downsample(points, 400)
    assert len(kept) <= 400 and kept[0] == points[0] and kept[-1] == points[-1]
    assert (6_789, 50.0) in kept and (7_001, -3.0) in kept
