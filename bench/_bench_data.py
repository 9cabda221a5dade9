"""The large benchmark database shared by bench/api_latency.py and bench/explain_runs.py:
100,000 runs (100 users, spread over 90 days, every status), 1,000,000 log chunks (half on
500 long runs, half spread over the rest) and train/eval loss series on the long runs, in a
PostgreSQL database of its own.

A throwaway server is started (.ci/throwaway-postgres) unless DATABASE_URL points at one.
`--database NAME` reuses a database a previous `--keep` left loaded (minutes saved).
"""

import json
import os
import random
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


def load(n_runs: int, n_chunks: int, rng: random.Random, *, points=200, series_runs=None):
    """Bulk-load runs, log chunks and metrics: a train/loss series of `points` steps (and an
    eval/loss point every 10 steps) on the first `series_runs` runs (default: the long runs).
    Returns (users, staff, long run ids, all run ids, chunks per long run)."""
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
    for run_id in ids[:series_runs] if series_runs else long_runs:
        for step in range(1, points + 1):
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


def add_arguments(parser) -> None:
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=200, help="train/loss steps per series")
    parser.add_argument(
        "--series-runs", type=int, help=f"runs with a loss series (default: {LONG_RUNS})"
    )
    parser.add_argument("--database", help="reuse this loaded database (from --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")


class BenchDatabase:
    """A loaded database for the length of a `with` block: (url, facts about the data).
    Facts (users, long runs, chunks per long run) are kept in the database's folder file so
    that a reused database answers the same as a fresh one."""

    def __init__(self, args):
        self.args = args
        self.server, self.throwaway = server_url()
        self.name = args.database or f"tunixrt_bench_{uuid.uuid4().hex[:8]}"
        self.url = with_database(self.server, self.name)
        self.facts_file = Path(tempfile.gettempdir()) / f"{self.name}.json"

    def __enter__(self):
        if not self.args.database:
            admin_sql(self.server, f"CREATE DATABASE {self.name}")
        setup_django(self.url)
        if self.args.database:
            self.facts = json.loads(self.facts_file.read_text())
        else:
            rng = random.Random(7)
            print(f"Loading {self.args.runs} runs and {self.args.chunks} log chunks", flush=True)
            users, staff, long_runs, _, per_long = load(
                self.args.runs,
                self.args.chunks,
                rng,
                points=self.args.points,
                series_runs=self.args.series_runs,
            )
            self.facts = {
                "users": [u.id for u in users],
                "staff": staff.id,
                "long_runs": [str(i) for i in long_runs],
                "per_long": per_long,
            }
            self.facts_file.write_text(json.dumps(self.facts))
        return self

    def server_env(self, workers: int) -> dict:
        """The environment of the production server (start_server("gunicorn", ...))."""
        return {
            "DATABASE_URL": self.url,
            "TUNIXRT_DATA_DIR": os.environ["TUNIXRT_DATA_DIR"],
            "TUNIXRT_WEB_WORKERS": str(workers),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_DEBUG": "0",
            "TUNIXRT_LOG_LEVEL": "WARNING",
        }

    def __exit__(self, *exc):
        from django.db import connections

        connections.close_all()
        if not self.args.keep:
            admin_sql(self.server, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            self.facts_file.unlink(missing_ok=True)
        else:
            print(f"kept: --database {self.name} (DATABASE_URL={self.server})")
        if self.throwaway is not None and not self.args.keep:
            subprocess.run([str(REPO / ".ci" / "throwaway-postgres"), "stop", str(self.throwaway)])
