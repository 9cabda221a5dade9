"""Reads of a run's metric series, downsampled.

A long run stores one row per step and metric (a million for a run of a million steps); the
run page, compare and the API read at most `points` points a series instead. A series whose
step range fits is read as it is. A longer one is cut into buckets of equal step width (a
power of two, aligned on multiples of it so a bucket stays the same bucket as the run
grows), and each bucket gives its first and last point and its lowest and highest: a spike
survives, which every-k-th-point sampling would drop.

The buckets are kept as metrics are stored (runs/metric_buckets.py): a read takes the few
hundred MetricBucket rows of one level from an index, first read or not, with the exact
step of each extreme. A series whose buckets do not cover it (metrics stored before
buckets existed or written around metrics_store, or a width below the lowest level kept)
is grouped from its raw rows instead: one GROUP BY over the metric index (run, name, step).
Metrics are written in step order and never changed, so a bucket of that grouping that
lies wholly before the newest step is final: it is remembered (Django's cache, keyed by
run, metric and width), and a later read asks the database only for the buckets from the
newest one on.
"""

from __future__ import annotations

import math

from django.core.cache import cache
from django.db import connection
from django.db.models import F, Max, Min, Value

from ..metric_buckets import AGGREGATE_FIELDS, LOWEST_LEVEL, TOP_LEVEL
from ..models import Metric, MetricBucket, TunixRun

# Points a series gives at most unless asked otherwise: more than a chart's width in pixels.
SERIES_POINTS = 2000
# Each bucket gives up to four points (first, min, max, last).
POINTS_PER_BUCKET = 4
_CACHE_SECONDS = 24 * 3600
# Steps per `IN (...)` query (SQLite's bound on parameters is far above it).
_IN_BATCH = 500


def run_metric_names(run: TunixRun) -> list[str]:
    """The metric names of a run, sorted, read by skipping along the (run, name, step) index
    (a loose index scan written as a recursive query): a few index probes per name, however
    many rows each name has, where SELECT DISTINCT would read every row."""
    table = connection.ops.quote_name(Metric._meta.db_table)
    run_id = Metric._meta.get_field("run").get_db_prep_value(run.pk, connection)
    # The table name is ours (quoted), the run id a parameter.
    sql = (
        f"WITH RECURSIVE names(name) AS ("  # noqa: S608
        f" SELECT MIN(name) FROM {table} WHERE run_id = %s"
        f" UNION ALL"
        f" SELECT (SELECT MIN(m.name) FROM {table} m WHERE m.run_id = %s AND m.name > names.name)"
        f" FROM names WHERE names.name IS NOT NULL"
        f") SELECT name FROM names WHERE name IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [run_id, run_id])
        return [row[0] for row in cursor.fetchall()]


def _extent(run: TunixRun, name: str) -> tuple[int, int]:
    """(first step, last step) of one series: two index probes."""
    rows = Metric.objects.filter(run=run, name=name).values_list("step", flat=True)
    return rows.order_by("step").first(), rows.order_by("-step").first()


def run_metric_tail(run: TunixRun, name: str, count: int) -> list[tuple[int, float]]:
    """The last `count` points of one series as stored (not downsampled), oldest first."""
    rows = Metric.objects.filter(run=run, name=name).order_by("-step")
    return list(reversed(rows.values_list("step", "value")[:count]))


def run_metric_version(run: TunixRun) -> int:
    """A number that grows whenever a series of the run gets a point (the sum over its
    series of last step + 1): the run page redraws its charts when it changes. Index probes
    only, where COUNT(*) would read every row."""
    return sum(_extent(run, name)[1] + 1 for name in run_metric_names(run))


def run_metric_series(
    run: TunixRun, *, points: int = SERIES_POINTS
) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} ordered by step, at most about `points` points a series.

    A series whose step range fits in `points` is read whole. A longer one gives, per
    bucket of steps, its first and last point and its minimum and maximum, at their own
    steps when the stored buckets cover the series; grouped from raw rows, the minimum and
    maximum are placed between the first and last step of their bucket (in the order the
    trend suggests), since their exact step is not read."""
    points = max(POINTS_PER_BUCKET, int(points))
    series: dict[str, list[tuple[int, float]]] = {}
    # (first step, last step) of each series by its top bucket: one index range.
    tops = {
        name: (first, last)
        for name, first, last in MetricBucket.objects.filter(
            run=run, level=TOP_LEVEL, bucket=0
        ).values_list("name", "first_step", "last_step")
    }
    for name in run_metric_names(run):
        first, last = _extent(run, name)
        if first is None:
            continue
        top = tops.get(name)
        # The buckets cover the series when they start where it starts and reach at least
        # as far (a store may have committed since the extent was read).
        covered = top is not None and top[0] == first and top[1] >= last
        if covered:
            last = top[1]
        if last - first + 1 <= points:
            rows = Metric.objects.filter(run=run, name=name).order_by("step")
            series[name] = list(rows.values_list("step", "value"))
            continue
        level = bucket_width(first, last, points).bit_length() - 1
        if covered and level >= LOWEST_LEVEL:
            series[name] = _stored_buckets(run, name, level)
        else:
            series[name] = _bucketed(run, name, first, last, points)
    return series


def _stored_buckets(run: TunixRun, name: str, level: int) -> list[tuple[int, float]]:
    """The points of one level's buckets of a series: per bucket its first point, its lowest
    and highest where they are not an end, and its last point, ordered by step."""
    rows = (
        MetricBucket.objects.filter(run=run, level=level, name=name)
        .order_by("bucket")
        .values_list(*AGGREGATE_FIELDS)
    )
    series = []
    add = series.append
    for first, first_value, last, last_value, low, low_value, high, high_value in rows:
        inner_low, inner_high = first < low < last, first < high < last and high != low
        add((first, first_value))
        if inner_low and inner_high and high < low:
            add((high, high_value))
            add((low, low_value))
        else:
            if inner_low:
                add((low, low_value))
            if inner_high:
                add((high, high_value))
        if last != first:
            add((last, last_value))
    return series


def bucket_width(first: int, last: int, points: int) -> int:
    """The smallest power of two that cuts [first, last] into buckets giving at most
    `points` points (buckets are aligned on multiples of the width, so one more may start
    before `first`)."""
    buckets = max(1, points // POINTS_PER_BUCKET - 1)
    return 1 << max(0, math.ceil(math.log2((last - first + 1) / buckets)))


def _bucketed(run: TunixRun, name: str, first: int, last: int, points: int) -> list:
    width = bucket_width(first, last, points)
    newest = last // width  # the bucket that may still grow
    key = f"tunixrt:metric-buckets:{run.pk}:{name}:{width}"
    cached = cache.get(key)
    done, through = (cached["points"], cached["through"]) if cached else ([], 0)
    fresh = _read_buckets(run, name, width, start_bucket=through)
    final = [p for bucket, pts in fresh if bucket < newest for p in pts]
    if final:
        cache.set(key, {"points": done + final, "through": newest}, timeout=_CACHE_SECONDS)
    return done + [p for _, pts in fresh for p in pts]


def _read_buckets(run: TunixRun, name: str, width: int, *, start_bucket: int) -> list:
    """[(bucket, [(step, value), ...]), ...] for the buckets from `start_bucket` on: one
    GROUP BY for their extremes, then the first and last values by step."""
    rows = list(
        Metric.objects.filter(run=run, name=name, step__gte=start_bucket * width)
        .annotate(bucket=F("step") / Value(width))
        .values("bucket")
        .annotate(first=Min("step"), last=Max("step"), low=Min("value"), high=Max("value"))
        .order_by("bucket")
    )
    steps = [row["first"] for row in rows] + [row["last"] for row in rows]
    values = {}
    for start in range(0, len(steps), _IN_BATCH):
        batch = Metric.objects.filter(run=run, name=name, step__in=steps[start : start + _IN_BATCH])
        values.update(batch.values_list("step", "value"))
    return [(row["bucket"], _bucket_points(row, values)) for row in rows]


def _bucket_points(row: dict, values: dict) -> list[tuple[int, float]]:
    first, last = row["first"], row["last"]
    first_value, last_value = values[first], values[last]
    if first == last:
        return [(first, first_value)]
    low, high = row["low"], row["high"]
    ends = [v for v in (first_value, last_value) if v is not None and math.isfinite(v)]
    if low is None or high is None or not ends:  # only non-finite values (stored as NULL)
        return [(first, first_value), (last, last_value)]
    middle = []
    # Only the extremes the end points do not already show.
    if low < min(ends):
        middle.append(low)
    if high > max(ends):
        middle.append(high)
    if len(ends) == 2 and first_value > last_value:  # falling: the maximum more likely came first
        middle.sort(reverse=True)
    else:
        middle.sort()
    span = last - first
    placed = [
        (first + span * (i + 1) // (len(middle) + 1), value) for i, value in enumerate(middle)
    ]
    return [(first, first_value), *placed, (last, last_value)]
