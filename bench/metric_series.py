"""The run page of a run with 1,000,000 steps: how long the page, its poll and the metrics API
take when every step stored a train/loss (plus an eval/loss every 1,000 steps).

The points are stored as the supervisor stores them (runs/metric_buckets.py: raw rows and
chart buckets in one transaction, 20,000 points a batch; the rate is printed), so the page
reads one level of buckets from an index, on its first read as on later ones. Prints the
medians of --repeat first reads (Django's cache cleared before each), later reads, polls
that find a new point (the chart redrawn) and GET .../metrics. With --without-buckets the
run's rows are written directly, as before buckets existed, and the reads group the raw rows
(runs/selectors/metrics.py's fallback).

Usage: python bench/metric_series.py [--steps N] [--repeat N] [--without-buckets]
(SQLite in a throwaway folder by default; DATABASE_URL for PostgreSQL)
"""

import argparse
import math
import statistics
import time

from _common import setup_django


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def load_run(steps: int, *, buckets: bool):
    """A running local run with `steps` train/loss points and an eval/loss every 1,000."""
    from _common import REPO, bench_user
    from django.db import connection, transaction
    from django.utils import timezone

    from runs.datasets import services as dataset_services
    from runs.metric_buckets import metrics_store
    from runs.models import Metric, RunStatus, TunixRun
    from runs.services import run_create

    user = bench_user()
    with open(REPO / "runs/sample_data/reasoning-sample.jsonl", "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1", owner=user)
    run = run_create(owner=user, dataset_key="sample-v1", model_id="google/gemma-3-270m-it")
    TunixRun.objects.filter(id=run.id).update(mode="local", status=RunStatus.RUNNING)
    run_id = Metric._meta.get_field("run").get_db_prep_value(run.pk, connection)
    table = connection.ops.quote_name(Metric._meta.db_table)
    columns = "(run_id, name, step, value, created_at) VALUES (%s, %s, %s, %s, %s)"
    sql = f"INSERT INTO {table} {columns}"  # noqa: S608 - our table name

    now = timezone.now()
    started = time.perf_counter()
    batch = 20_000
    for start in range(1, steps + 1, batch):
        points = [
            ("train/loss", s, 2.0 * math.exp(-s / steps * 3) + 0.05 * math.sin(s))
            for s in range(start, min(start + batch, steps + 1))
        ]
        points += [("eval/loss", p[1], 1.0) for p in points if p[1] % 1000 == 0]
        if buckets:
            metrics_store(run.id, points)
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, [(run_id, *p, now) for p in points])
    elapsed = time.perf_counter() - started
    how = "with their buckets" if buckets else "raw rows only"
    print(
        f"stored {steps:,} steps ({how}) in {elapsed:.0f} s: "
        f"{steps * 1.001 / elapsed:,.0f} points/s",
        flush=True,
    )
    return user, TunixRun.objects.get(id=run.id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--without-buckets", action="store_true")
    args = parser.parse_args()
    setup_django(DJANGO_ALLOWED_HOSTS="testserver")

    from django.core.cache import cache
    from django.test import Client

    from runs import selectors
    from runs.metric_buckets import metrics_store
    from runs.models import Metric

    buckets = not args.without_buckets
    user, run = load_run(args.steps, buckets=buckets)
    client = Client()
    client.force_login(user)
    page = f"/runs/{run.id}/"

    def get(url, **headers):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.status_code

    def first_read():
        cache.clear()  # nothing remembered from an earlier read
        return timed(lambda: get(page))

    # A first read without buckets groups every row (seconds): fewer of them.
    first = [first_read() for _ in range(args.repeat if buckets else min(3, args.repeat))]
    later = [timed(lambda: get(page)) for _ in range(args.repeat)]
    polls = []
    for i in range(args.repeat):
        step = args.steps + 1 + i
        if buckets:
            metrics_store(run.id, [("train/loss", step, 0.1)])
        else:
            Metric.objects.create(run=run, name="train/loss", step=step, value=0.1)
        version = selectors.run_metric_version(run) - 1  # the page saw the step before
        poll = f"{page}?after=0&m={version}&s=running"
        polls.append(timed(lambda url=poll: get(url, **{"HX-Request": "true"})))
    api = [timed(lambda: get(f"/api/tunix/runs/{run.id}/metrics")) for _ in range(args.repeat)]
    points = {k: len(v) for k, v in selectors.run_metric_series(run).items()}
    print(f"series points drawn from: {points}")
    print(f"run page, first read (median of {len(first)}): {statistics.median(first):7.1f} ms")
    print(f"run page, later reads (median):    {statistics.median(later):7.1f} ms")
    print(f"poll with a new point (median):    {statistics.median(polls):7.1f} ms (chart redrawn)")
    print(f"GET .../metrics (median):          {statistics.median(api):7.1f} ms")


if __name__ == "__main__":
    main()
