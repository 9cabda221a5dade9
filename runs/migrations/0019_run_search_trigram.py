# Written by hand: indexes for the run list's text search (`q`) on PostgreSQL only.

"""Trigram indexes (pg_trgm) for the run list's text search.

`selectors.runs_filter(q=...)` matches `name`, `model_id`, `dataset_key` and `message` with
icontains, which Django writes on PostgreSQL as `UPPER("col"::text) LIKE UPPER('%q%')`. A
B-tree cannot serve a pattern with a leading wildcard, so without these the search reads the
whole table. Each index is on exactly that expression, with `gin_trgm_ops`, so the planner
combines them (BitmapOr) for the four-column OR.

Nothing here is model state (the model has no such index, so `makemigrations` never sees
them): on SQLite the migration does nothing. pg_trgm ships with PostgreSQL and is a trusted
extension (13+), so the database owner can create it; where it cannot be created the
migration says so and goes on without the indexes (the search still works, by a full scan).
"""

import sys

from django.db import migrations, transaction
from django.db.utils import DatabaseError

INDEXES = {
    "run_name_trgm": "name",
    "run_model_trgm": "model_id",
    "run_dataset_trgm": "dataset_key",
    "run_message_trgm": "message",
}


def _has_trigrams(schema_editor) -> bool:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone():
            return True
    try:
        with transaction.atomic(using=connection.alias):  # a savepoint: a refusal is undone
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        sys.stderr.write(
            f"\nThe pg_trgm extension could not be created ({exc}); the run list's text "
            "search works without its indexes, by a full scan. To add them later: "
            "CREATE EXTENSION pg_trgm (as a superuser), then `manage.py migrate runs 0018` "
            "and `manage.py migrate`.\n"
        )
        return False
    return True


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql" or not _has_trigrams(schema_editor):
        return
    for name, column in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON runs_tunixrun "
            f"USING gin ((UPPER({column}::text)) gin_trgm_ops)"
        )


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0018_metric_buckets_pending_index"),
    ]

    operations = [
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]
