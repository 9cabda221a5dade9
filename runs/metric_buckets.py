"""Metric points and their buckets, written together, so a chart never groups raw rows.

A long run stores one Metric row per step and series (a million for a million steps). Next
to them, each series keeps MetricBucket rows: for every level k from LOWEST_LEVEL to
TOP_LEVEL, bucket b holds the first, last, lowest and highest point of the steps
[b * 2**k, (b + 1) * 2**k). A chart that wants about P points reads the one level whose
buckets of width 2**k cut the series into at most P / 4 of them (runs/selectors/metrics.py):
a few hundred rows from an index, whatever the length of the run, with every spike kept.

Storing a batch of points is two INSERTs (a statement per 500 rows on SQLite, per 10,000
on PostgreSQL), in one transaction: the points go in with ON CONFLICT DO NOTHING ...
RETURNING, so only the rows that were really new are counted (a repeated step keeps its
first value, as the raw table does); those are folded into buckets in Python (the lowest
level from the points, each level above from the one below: about 1/8 of a row per point in
all), and the buckets are upserted with the merge written in SQL (earlier first, later
last, lower low, higher high; a tie goes to the earlier step). No row is read before it is
written, and merging is idempotent, so a retried batch cannot count a point twice. The ON
CONFLICT clauses are the part that SQLite (3.35+, for RETURNING) and PostgreSQL share; only
where the rows come from differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from .models import Metric, MetricBucket

# Bucket widths 16 .. 2**31 steps. A series shorter than a chart's points is read whole and
# a level below 16 would only serve series of up to ~16 x (points / 4) steps, which the
# reader groups from raw rows cheaply; skipping levels 0-3 halves what ingest writes.
LOWEST_LEVEL = 4
TOP_LEVEL = 31
# The largest step stored (PositiveIntegerField on PostgreSQL is a 32-bit integer): the top
# level's bucket 0 then holds the whole series.
MAX_STEP = 2**TOP_LEVEL - 1
_REBUILD_CHUNK = 50_000

AGGREGATE_FIELDS = (
    "first_step",
    "first_value",
    "last_step",
    "last_value",
    "low_step",
    "low_value",
    "high_step",
    "high_value",
)


def buckets_of(points: Iterable[tuple[int, float]]) -> dict[tuple[int, int], list]:
    """{(level, bucket): [first_step, first_value, last_step, last_value, low_step,
    low_value, high_step, high_value]} of one series' points (step, value), in any order,
    for every level."""
    level: dict[int, list] = {}
    for step, value in points:
        key = step >> LOWEST_LEVEL
        agg = level.get(key)
        if agg is None:
            level[key] = [step, value, step, value, step, value, step, value]
            continue
        if step < agg[0]:
            agg[0], agg[1] = step, value
        if step > agg[2]:
            agg[2], agg[3] = step, value
        if value < agg[5] or (value == agg[5] and step < agg[4]):
            agg[4], agg[5] = step, value
        if value > agg[7] or (value == agg[7] and step < agg[6]):
            agg[6], agg[7] = step, value
    out = {(LOWEST_LEVEL, key): agg for key, agg in level.items()}
    for k in range(LOWEST_LEVEL + 1, TOP_LEVEL + 1):
        above: dict[int, list] = {}
        for key, agg in level.items():
            merged = above.get(key >> 1)
            if merged is None:
                above[key >> 1] = list(agg)
            else:
                merge(merged, agg)
        level = above
        out.update(((k, key), agg) for key, agg in level.items())
    return out


def merge(agg: list, other: list) -> None:
    """Fold the aggregate `other` into `agg` (the same rule as the upsert's SQL)."""
    if other[0] < agg[0]:
        agg[0], agg[1] = other[0], other[1]
    if other[2] > agg[2]:
        agg[2], agg[3] = other[2], other[3]
    if other[5] < agg[5] or (other[5] == agg[5] and other[4] < agg[4]):
        agg[4], agg[5] = other[4], other[5]
    if other[7] > agg[7] or (other[7] == agg[7] and other[6] < agg[6]):
        agg[6], agg[7] = other[6], other[7]


def metrics_store(run_id: UUID, points: list[tuple[str, int, float]]) -> int:
    """Store a run's metric points (name, step, value) and fold the new ones into their
    buckets, in one transaction. Steps must lie in 0..MAX_STEP and values be finite (the
    supervisor checks both). A (name, step) already stored keeps its value. Returns the
    number of new rows."""
    with transaction.atomic():
        new = _insert_points(run_id, points)
        by_name: dict[str, list[tuple[int, float]]] = {}
        for name, step, value in new:
            by_name.setdefault(name, []).append((step, float(value)))
        _upsert_buckets(
            run_id,
            [
                (level, name, bucket, *agg)
                for name, series in by_name.items()
                for (level, bucket), agg in buckets_of(series).items()
            ],
        )
    return len(new)


def metric_buckets_rebuild(run_id: UUID) -> int:
    """Build a run's buckets again from its Metric rows: for metrics stored before buckets
    existed, or written around metrics_store. Non-finite values (which the supervisor never
    stores) are left out. Returns the number of points read."""
    rows = Metric.objects.filter(run_id=run_id)
    names = sorted(set(rows.values_list("name", flat=True).distinct()))
    read = 0
    with transaction.atomic():
        MetricBucket.objects.filter(run_id=run_id).delete()
        for name in names:
            after = -1
            while True:
                chunk = list(
                    rows.filter(name=name, step__gt=after)
                    .order_by("step")
                    .values_list("step", "value")[:_REBUILD_CHUNK]
                )
                if not chunk:
                    break
                after = chunk[-1][0]
                read += len(chunk)
                finite = [(s, v) for s, v in chunk if v is not None and math.isfinite(v)]
                _upsert_buckets(
                    run_id,
                    [
                        (level, name, bucket, *agg)
                        for (level, bucket), agg in buckets_of(finite).items()
                    ],
                )
    return read


def _quoted(model, *fields: str) -> tuple[str, str]:
    """(quoted table, quoted column list) of `model`."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(model._meta.get_field(f).column) for f in fields)
    return quote(model._meta.db_table), columns


def _execute(
    head: str, tail: str, constants: list, rows: list[tuple], types: tuple[str, ...]
) -> list[tuple]:
    """Run `head <rows> tail` (an INSERT's start and its ON CONFLICT clause) over `rows`, each
    row preceded by `constants`, a statement per batch; the rows the statements return.
    PostgreSQL gets one array per column through unnest: psycopg adapts a list at once,
    where adapting thousands of separate parameters took longer than the insert itself.
    SQLite gets a multi-row VALUES."""
    postgres = connection.vendor == "postgresql"
    size = 10_000 if postgres else 500
    returned = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            if postgres:
                holders = ", ".join(["%s"] * len(constants))
                arrays = ", ".join(f"%s::{kind}[]" for kind in types)
                source = f"SELECT {holders}, u.* FROM unnest({arrays}) AS u"  # noqa: S608
                params = [*constants, *(list(column) for column in zip(*batch, strict=True))]
            else:
                row = f"({', '.join(['%s'] * (len(constants) + len(types)))})"
                source = "VALUES " + ", ".join([row] * len(batch))
                params = [p for values in batch for p in (*constants, *values)]
            cursor.execute(f"{head} {source} {tail}", params)
            if cursor.description is not None:  # RETURNING
                returned.extend(cursor.fetchall())
    return returned


def _insert_points(run_id: UUID, points: list[tuple[str, int, float]]) -> list[tuple]:
    """INSERT the points, skipping those already stored: the (name, step, value) of the
    rows that were new."""
    table, columns = _quoted(Metric, "run", "created_at", "name", "step", "value")
    _, returning = _quoted(Metric, "name", "step", "value")
    constants = [
        Metric._meta.get_field("run").get_db_prep_value(run_id, connection),
        Metric._meta.get_field("created_at").get_db_prep_value(timezone.now(), connection),
    ]
    # Table and columns are ours (quoted); every value is a parameter.
    head = f"INSERT INTO {table} ({columns})"  # noqa: S608
    tail = f"ON CONFLICT DO NOTHING RETURNING {returning}"
    return _execute(head, tail, constants, points, ("text", "integer", "float8"))


# Which end of a bucket a merge takes: (end, the field compared, the operator that wins).
_RULES = (
    ("first", "step", "<"),
    ("last", "step", ">"),
    ("low", "value", "<"),
    ("high", "value", ">"),
)
_BUCKET_TYPES = ("smallint", "text", "integer") + ("integer", "float8") * 4


def _upsert_buckets(run_id: UUID, rows: list[tuple]) -> None:
    """Insert bucket rows (level, name, bucket, *aggregate) of a run, or merge them into
    those already stored."""
    table, columns = _quoted(MetricBucket, "run", "level", "name", "bucket", *AGGREGATE_FIELDS)
    _, key = _quoted(MetricBucket, "run", "level", "name", "bucket")
    quote = connection.ops.quote_name
    sets = []
    for end, by, than in _RULES:
        column = quote(f"{end}_{by}")
        wins = f"excluded.{column} {than} {table}.{column}"
        if by == "value":  # a tie in value goes to the earlier step
            step = quote(f"{end}_step")
            wins = (
                f"({wins} OR (excluded.{column} = {table}.{column} "
                f"AND excluded.{step} < {table}.{step}))"
            )
        for field in (f"{end}_step", f"{end}_value"):
            target = quote(field)
            sets.append(
                f"{target} = CASE WHEN {wins} THEN excluded.{target} ELSE {table}.{target} END"
            )
    run = MetricBucket._meta.get_field("run").get_db_prep_value(run_id, connection)
    # Table and columns are ours (quoted); every value is a parameter.
    head = f"INSERT INTO {table} ({columns})"  # noqa: S608
    tail = f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)}"
    _execute(head, tail, [run], rows, _BUCKET_TYPES)
