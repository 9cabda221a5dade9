"""EXPLAIN ANALYZE of every query the run list issues, on the 100,000-run bench database.

For each filter the list offers (as a user and as staff; first page, a page after a cursor,
and the capped count), it captures the SQL the selectors really run and prints PostgreSQL's
plan with its timing. A plan that reads the whole table ("Seq Scan on runs_tunixrun") or
sorts it is marked: every list query should be an index scan that stops after a page.

Usage: python bench/explain_runs.py [--database NAME --keep] [--verbose]
(the database options are those of bench/api_latency.py; see bench/_bench_data.py)
"""

import argparse
import re

from _bench_data import BenchDatabase, add_arguments

FILTERS = [
    {},
    {"status": "completed"},
    {"status": "running"},
    {"status": "timeout"},
    {"mode": "dry-run"},
    {"dataset_key": "set3-v1"},
    {"model_id": "org4/llama-3-4b"},
    {"dataset_key": "set3-v1", "status": "failed"},
    {"q": "sweep 12"},
]


def captured(run):
    """The SQL statements (with parameters inlined) that `run()` executes."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        run()
    return [q["sql"] for q in queries.captured_queries]


def explain(sql: str) -> tuple[float, list[str]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        lines = [row[0] for row in cursor.fetchall()]
    times = [re.search(r"Execution Time: ([\d.]+)", line) for line in lines]
    return next(float(t.group(1)) for t in times if t), lines


def kind_of(sql: str) -> str:
    if "COUNT(*)" in sql:
        return "count"
    return "rows" if "final_loss" in sql else "exists"


def report(who, filters, runs, verbose) -> float:
    """Print the plan summary of each query of a first page and a page after a cursor;
    the slowest execution time."""
    from runs import selectors

    first = selectors.runs_page(runs, page_size=50)
    steps = [("first", {})]
    if first.next_cursor:
        steps.append(("cursor", {"cursor": first.next_cursor}))
    label = ",".join(f"{k}={v}" for k, v in filters.items()) or "(none)"
    slowest = 0.0
    for step, extra in steps:
        for sql in captured(lambda extra=extra: selectors.runs_page(runs, page_size=50, **extra)):
            ms, lines = explain(sql)
            slowest = max(slowest, ms)
            bad = [
                line.strip()
                for line in lines
                if "Seq Scan on runs_tunixrun" in line or re.search(r"Sort  \(", line)
            ]
            node = lines[0].split("  (")[0].strip()
            mark = "  <-- " + "; ".join(bad) if bad else ""
            query = f"{step} {kind_of(sql)}"
            print(f"{who:<6} {label:<42} {query:<13} {ms:7.2f}  {node}{mark}")
            if verbose or (bad and ms > 2):
                print("\n".join("        " + line for line in lines))
    return slowest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="print every plan")
    args = parser.parse_args()
    with BenchDatabase(args) as data:
        from django.contrib.auth import get_user_model

        from runs import selectors

        user_id, staff_id = data.facts["users"][1], data.facts["staff"]
        users = get_user_model().objects.in_bulk([user_id, staff_id])
        worst = 0.0
        print(f"{'who':<6} {'filter':<42} {'query':<13} {'ms':>7}  plan")
        for who, user in (("user", users[user_id]), ("staff", users[staff_id])):
            for filters in FILTERS:
                runs = selectors.runs_filter(selectors.runs_visible_to(user), **filters)
                slowest = report(who, filters, runs, args.verbose)
                if "q" not in filters:
                    worst = max(worst, slowest)
        print(f"\nslowest list query without text search: {worst:.2f} ms")


if __name__ == "__main__":
    main()
