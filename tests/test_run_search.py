"""The run list's text search (`q`): any of name, model, dataset and message, whatever the
case, with LIKE's wildcards taken literally; on PostgreSQL served by the trigram indexes of
migration 0019, with the same answers as a full scan."""

import uuid

import pytest
from django.db import connection

from runs import selectors
from runs.models import TunixRun

pytestmark = pytest.mark.django_db

WORDS = ["sweep", "Sweep 12", "SWEEP-120", "lr 3e-4", "qwen3 1.7b", "Llama-3 8B", "100%", "a_b"]
QUERIES = ["sweep", "SWEEP 1", "eep 12", "Sweep-12", "ll", "l", "%", "_", "a_b", "qwen", "zzz"]
TEXT_FIELDS = ("name", "model_id", "dataset_key", "message")
INDEXES = {"run_name_trgm", "run_model_trgm", "run_dataset_trgm", "run_message_trgm"}


@pytest.fixture
def runs(run_factory):
    """2,000 runs with plain text fields and 60 whose fields mix the words above: a search
    that matches a few runs among many, the case the indexes are for."""
    template = run_factory(name="template")
    copies = []
    for n in range(2000):
        plain = [f"plain run {n}", f"org/model-{n % 7}", f"set-{n % 5}", "Completed."]
        fields = {
            name: (WORDS[(n * (k + 3)) % len(WORDS)] if n < 60 and (n + k) % 3 == 0 else text)
            for k, (name, text) in enumerate(zip(TEXT_FIELDS, plain, strict=True))
        }
        run_id = uuid.uuid4()
        copies.append(
            TunixRun(
                **{
                    f.attname: getattr(template, f.attname)
                    for f in TunixRun._meta.concrete_fields
                    if f.attname not in ("id", "output_dir", *TEXT_FIELDS)
                },
                **fields,
                id=run_id,
                output_dir=f"runs/{run_id}",
            )
        )
    TunixRun.objects.bulk_create(copies, batch_size=500)
    return TunixRun.objects.all()


def expected(q: str) -> set:
    return {
        run.id
        for run in TunixRun.objects.all()
        if any(q.upper() in getattr(run, name).upper() for name in TEXT_FIELDS)
    }


def found(q: str) -> set:
    return set(selectors.runs_filter(TunixRun.objects.all(), q=q).values_list("id", flat=True))


def test_the_search_finds_a_run_by_any_text_field_whatever_the_case(runs):
    answered = 0
    for q in QUERIES:
        assert found(q) == expected(q), q
        answered += bool(found(q))
    assert answered >= 8 and not found("zzz") and len(found("plain")) > 1900


def plan_and_ids(q: str, *settings: str) -> tuple[str, set]:
    """The plan and answer of the search under `settings`. Without the kind condition, so
    that only the text can pick the rows (on 2,000 runs the planner would rather read the
    kind's index; bench/explain_runs.py shows the plan of the whole query at 100,000)."""
    queryset = selectors.runs_filter(TunixRun.objects.all(), q=q, kind=None)
    queryset = queryset.values_list("id", flat=True)
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        # The test's transaction outlives a savepoint: SET LOCAL is undone by hand.
        for setting in settings:
            cursor.execute(f"SET LOCAL {setting}")
        try:
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            ids = set(queryset)
        finally:
            for setting in settings:
                cursor.execute(f"SET LOCAL {setting.split('=')[0]} = DEFAULT")
    return plan, ids


def test_on_postgresql_the_trigram_indexes_serve_the_search_with_the_same_answers(runs):
    if connection.vendor != "postgresql":
        pytest.skip("the trigram indexes exist on PostgreSQL only (0019 does nothing on SQLite)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'runs_tunixrun'")
        assert {row[0] for row in cursor.fetchall()} >= INDEXES
        cursor.execute("ANALYZE runs_tunixrun")  # row estimates for the planner
    for q in ("sweep", "SWEEP 1", "eep 12", "qwen", "a_b", "100%", "8b"):
        by_index, with_index = plan_and_ids(q, "enable_seqscan = off", "enable_indexscan = off")
        by_scan, with_scan = plan_and_ids(q, "enable_bitmapscan = off", "enable_indexscan = off")
        assert all(name in by_index for name in INDEXES), by_index
        assert "BitmapOr" in by_index and "Seq Scan on runs_tunixrun" in by_scan
        assert with_index == with_scan == expected(q) == found(q), q
