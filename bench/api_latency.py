"""API latency on a large PostgreSQL database.

Loads 100,000 runs (100 users, spread over 90 days, every status) and 1,000,000 log chunks
(half on 500 long runs, half spread over the rest), plus train/eval loss series on the long
runs, then times requests through the whole Django stack (middleware, bearer token, query,
serialisation; no network) and prints p50/p95 of:

- run list page 1 with a filter (a user's runs by status; staff's view of everyone's),
- run detail,
- logs after a cursor (a follower near the end of a long log; and a full 500-chunk page),
- metrics of one run.

Targets: each p50 under 20 ms on a 2-core machine.

Usage: python bench/api_latency.py [--runs 100000] [--chunks 1000000] [--samples 300]
A quick smoke: python bench/api_latency.py --runs 2000 --chunks 20000 --samples 30

PostgreSQL: a throwaway server is started (.ci/throwaway-postgres) unless DATABASE_URL
points at one; either way the data goes into a new database that is dropped at the end.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import admin_sql, with_database

REPO = Path(__file__).resolve().parent.parent
USERS = 100
LONG_RUNS = 500
BATCH = 5000


def server_url() -> tuple[str, Path | None]:
    """A PostgreSQL server URL, and the folder of a throwaway server we started (or None)."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], None
    folder = Path(tempfile.mkdtemp(prefix="tunixrt-bench-pg-"))
    done = subprocess.run(
        [str(REPO / ".ci" / "throwaway-postgres"), "start", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"no PostgreSQL: set DATABASE_URL ({done.stderr.strip()})")
    return done.stdout.strip(), folder


def setup_django(database_url: str) -> None:
    data = Path(tempfile.mkdtemp(prefix="tunixrt-bench-"))
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "TUNIXRT_DATA_DIR": str(data),
            "DJANGO_SETTINGS_MODULE": "tunixrt.settings",
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost",
            "DJANGO_DEBUG": "0",
            "TUNIXRT_LOG_LEVEL": "WARNING",
        }
    )
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def load(n_runs: int, n_chunks: int, rng: random.Random):
    """Bulk-load runs, log chunks and metrics; returns (users, long run ids, all run ids)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from runs.datasets import services as dataset_services
    from runs.models import LogChunk, Metric, TunixRun
    from runs.services import run_create

    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"user{i}") for i in range(USERS)
    )
    staff = get_user_model().objects.create(username="staff", is_staff=True)
    with open(REPO / "runs/sample_data/reasoning-sample.jsonl", "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    models = Path(os.environ["TUNIXRT_DATA_DIR"]) / "models" / "bench-llama"
    models.mkdir(parents=True)
    (models / "config.json").write_text('{"model_type": "llama"}')
    # One real dry-run gives every bulk-loaded run a realistic config and command.
    template = run_create(owner=users[0], dataset_key="sample-v1", model_id="local:bench-llama")
    fields = {
        f.attname: getattr(template, f.attname)
        for f in TunixRun._meta.concrete_fields
        if f.attname not in ("id", "owner_id", "output_dir", "created_at")
    }
    statuses = ["completed"] * 70 + ["failed"] * 15 + ["cancelled"] * 6 + ["timeout"] * 2
    statuses += ["running"] * 4 + ["pending"] * 3
    datasets = [f"set{i}-v1" for i in range(20)]
    model_ids = [f"org{i}/llama-3-{i}b" for i in range(10)]
    started = time.perf_counter()
    ids = []
    for start in range(0, n_runs - 1, BATCH):
        batch = []
        for _ in range(start, min(start + BATCH, n_runs - 1)):
            run_id = uuid.uuid4()
            ids.append(run_id)
            batch.append(
                TunixRun(
                    **{
                        **fields,
                        "id": run_id,
                        "owner_id": users[len(ids) % USERS].id,
                        "output_dir": f"runs/{run_id}",
                        "status": rng.choice(statuses),
                        "mode": "local" if rng.random() < 0.8 else "dry-run",
                        "dataset_key": rng.choice(datasets),
                        "model_id": rng.choice(model_ids),
                        "name": f"sweep {len(ids) % 997}",
                    }
                )
            )
        TunixRun.objects.bulk_create(batch)
    ids.append(template.id)
    with connection.cursor() as cursor:
        # created_at is auto_now_add, so it is spread here: 90 days of history.
        cursor.execute(
            "UPDATE runs_tunixrun SET created_at = now() - random() * interval '90 days'"
        )
    print(f"  {n_runs} runs in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    long_runs = ids[:LONG_RUNS] if n_runs > LONG_RUNS else ids[: max(1, n_runs // 10)]
    per_long = (n_chunks // 2) // len(long_runs)
    rest = ids[len(long_runs) :] or ids
    line = "step {i}: loss=1.2345 grad_norm=0.5678 lr=3.0e-04 tokens/s=1234.5 " + "x" * 60 + "\n"
    written = 0

    def chunks():
        for run_id in long_runs:
            for seq in range(1, per_long + 1):
                yield LogChunk(run_id=run_id, seq=seq, stream="stdout", text=line)
        remaining = n_chunks - per_long * len(long_runs)
        per_rest, extra = divmod(remaining, len(rest))
        for index, run_id in enumerate(rest):
            for seq in range(1, per_rest + (1 if index < extra else 0) + 1):
                yield LogChunk(run_id=run_id, seq=seq, stream="stderr", text=line)

    batch = []
    for chunk in chunks():
        batch.append(chunk)
        if len(batch) == BATCH * 4:
            LogChunk.objects.bulk_create(batch)
            written += len(batch)
            batch = []
    LogChunk.objects.bulk_create(batch)
    written += len(batch)
    print(f"  {written} log chunks in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    metrics = []
    for run_id in long_runs:
        for step in range(1, 201):
            metrics.append(Metric(run_id=run_id, name="train/loss", step=step, value=4.0 / step))
            if step % 10 == 0:
                metrics.append(Metric(run_id=run_id, name="eval/loss", step=step, value=4.2 / step))
        if len(metrics) >= BATCH * 4:
            Metric.objects.bulk_create(metrics)
            metrics = []
    Metric.objects.bulk_create(metrics)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"  metrics and VACUUM ANALYZE in {time.perf_counter() - started:.0f} s", flush=True)
    return users, staff, long_runs, ids, per_long


def measure(client, headers, paths, samples: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds of GETs cycling through `paths`, after a warm-up."""
    for path in paths[:20]:
        assert client.get(path, headers=headers).status_code == 200, path
    times = []
    for i in range(samples):
        path = paths[i % len(paths)]
        begin = time.perf_counter()
        response = client.get(path, headers=headers)
        if response.streaming:
            b"".join(response.streaming_content)
        times.append((time.perf_counter() - begin) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    cuts = statistics.quantiles(times, n=20, method="inclusive")
    return statistics.median(times), cuts[18]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=300, help="requests per query")
    args = parser.parse_args()
    rng = random.Random(7)

    url, throwaway = server_url()
    name = f"tunixrt_bench_{uuid.uuid4().hex[:8]}"
    admin_sql(url, f"CREATE DATABASE {name}")
    try:
        setup_django(with_database(url, name))
        from django.db import connection
        from django.test import Client

        from runs.services import api_token_create

        print(f"Loading {args.runs} runs and {args.chunks} log chunks into PostgreSQL", flush=True)
        users, staff, long_runs, ids, per_long = load(args.runs, args.chunks, rng)
        client = Client()

        def auth(user):
            return {"Authorization": f"Bearer {api_token_create(user=user)[1]}"}

        from runs.models import TunixRun

        user = users[1]
        mine = [str(i) for i in TunixRun.objects.filter(owner=user).values_list("id", flat=True)]
        long_ids = set(long_runs)
        mine_long = [i for i in mine if uuid.UUID(i) in long_ids] or mine[:1]
        user_headers, staff_headers = auth(user), auth(staff)
        rng.shuffle(mine)
        tail = max(0, per_long - 5)
        queries = [
            (
                "run list page 1, user's runs, status=completed",
                user_headers,
                ["/api/tunix/runs?status=completed", "/api/tunix/runs?status=failed"],
            ),
            (
                "run list page 1, staff (all runs), status=running",
                staff_headers,
                ["/api/tunix/runs?status=running", "/api/tunix/runs?dataset_key=set3-v1"],
            ),
            ("run detail", user_headers, [f"/api/tunix/runs/{i}" for i in mine[:200]]),
            (
                "logs after a cursor (follower: last 5 chunks)",
                user_headers,
                [f"/api/tunix/runs/{i}/logs?after={tail}" for i in mine_long],
            ),
            (
                "logs after a cursor (a full page: 500 chunks)",
                user_headers,
                [f"/api/tunix/runs/{i}/logs?after={per_long // 3}" for i in mine_long],
            ),
            (
                "metrics of one run",
                user_headers,
                [f"/api/tunix/runs/{i}/metrics" for i in mine_long],
            ),
        ]
        print(
            f"\n{connection.vendor} {connection.pg_version // 10000}, {os.cpu_count()} cores; "
            f"{args.samples} requests each, through the Django stack (no network)\n"
        )
        print(f"{'query':<52} {'p50 ms':>8} {'p95 ms':>8}")
        for label, headers, paths in queries:
            p50, p95 = measure(client, headers, paths, args.samples)
            print(f"{label:<52} {p50:8.1f} {p95:8.1f}", flush=True)
        connection.close()
    finally:
        from django.db import connections

        connections.close_all()
        admin_sql(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if throwaway is not None:
            subprocess.run([str(REPO / ".ci" / "throwaway-postgres"), "stop", str(throwaway)])


if __name__ == "__main__":
    main()
