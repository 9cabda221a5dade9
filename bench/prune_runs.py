"""Retention at scale: prune 100,000 finished runs holding 1,000,000 log chunks on PostgreSQL.

Targets: under 60 s and under 200 MB peak memory for the pruning process.

    .venv/bin/python bench/prune_runs.py                 # 100,000 runs x 10 chunks
    .venv/bin/python bench/prune_runs.py --runs 5000     # a quick smoke run (or BENCH_RUNS=5000)

Without DATABASE_URL a throwaway PostgreSQL is started (.ci/throwaway-postgres). With it, a
scratch database is created on that server and dropped afterwards: the bench never prunes
an existing database. The data is generated in SQL; every run also gets a folder with one
file, as finished runs have. The prune itself is the real command, `manage.py prune_runs`,
in its own process: its wall time and peak RSS (from wait4) are what is measured.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import admin_sql, with_database

REPO = Path(__file__).resolve().parent.parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.getenv("BENCH_RUNS", "100000")))
    parser.add_argument(
        "--chunks-per-run", type=int, default=int(os.getenv("BENCH_CHUNKS_PER_RUN", "10"))
    )
    parser.add_argument("--metrics-per-run", type=int, default=5)
    parser.add_argument("--chunk-bytes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--kept", type=int, default=1000, help="Recent and pinned runs that must survive."
    )
    parser.add_argument("--no-files", action="store_true", help="Skip the run folders.")
    return parser.parse_args()


def generate(args, env) -> None:
    """Runs, chunks and metrics through SQL in this process (Django set up from `env`)."""
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixrt.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from runs.models import TunixRun

    owner = get_user_model().objects.create_user("bench")
    now = timezone.now()
    template = TunixRun.objects.create(
        owner=owner,
        status="completed",
        mode="local",
        dataset_key="sample-v1",
        model_id="local:tiny-llama3",
        model_family="llama3",
        output_dir="runs/template",
        learning_rate=1e-4,
        num_epochs=1,
        batch_size=4,
        max_seq_length=512,
        max_steps=100,
        lora_rank=8,
        lora_alpha=16.0,
        seed=0,
        eval_every_n_steps=50,
        timeout_seconds=3600,
        config={"training": {"max_steps": 100}, "model": {"id": "local:tiny-llama3"}},
        command=["python", "-m", "runs.launcher", "config.json"],
        message="Completed.",
        finished_at=now,
    )
    # Every column copied from the template except the ones each row sets, so the bench
    # keeps working when columns are added.
    own = {
        "id": "s.uid",
        "output_dir": "'runs/' || s.uid::text",
        "finished_at": "now() - interval '400 days' + s.g * interval '1 second'",
        "created_at": "now() - interval '401 days' + s.g * interval '1 second'",
        "started_at": "now() - interval '400 days' + s.g * interval '1 second' - interval '1 hour'",
        "log_bytes": str(args.chunks_per_run * args.chunk_bytes),
        "pinned": "false",
    }
    columns = [f.column for f in TunixRun._meta.concrete_fields]
    select = ", ".join(own.get(c, f"t.{connection.ops.quote_name(c)}") for c in columns)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO runs_tunixrun ({names}) SELECT {select} FROM runs_tunixrun t, "  # noqa: S608
            "(SELECT gen_random_uuid() AS uid, g FROM generate_series(1, %s) g) s "
            "WHERE t.id = %s",
            [args.runs, template.id],
        )
        cur.execute("DELETE FROM runs_tunixrun WHERE id = %s", [template.id])
        # Runs retention must keep: half recent, half pinned (old).
        cur.execute(
            "UPDATE runs_tunixrun SET finished_at = now() WHERE id IN "
            "(SELECT id FROM runs_tunixrun ORDER BY id LIMIT %s)",
            [args.kept // 2],
        )
        cur.execute(
            "UPDATE runs_tunixrun SET pinned = true WHERE id IN (SELECT id FROM runs_tunixrun "
            "WHERE finished_at < now() - interval '1 day' ORDER BY id LIMIT %s)",
            [args.kept - args.kept // 2],
        )
        cur.execute(
            "INSERT INTO runs_logchunk (run_id, seq, stream, text, created_at) "
            "SELECT r.id, s, 'stdout', repeat('x', %s - 1) || chr(10), now() "
            "FROM runs_tunixrun r, generate_series(1, %s) s",
            [args.chunk_bytes, args.chunks_per_run],
        )
        cur.execute(
            "INSERT INTO runs_metric (run_id, name, step, value, created_at) "
            "SELECT r.id, 'train/loss', s, 1.0 / s, now() "
            "FROM runs_tunixrun r, generate_series(1, %s) s",
            [args.metrics_per_run],
        )
        cur.execute("SELECT id FROM runs_tunixrun")
        ids = [row[0] for row in cur.fetchall()]
    connection.close()
    if not args.no_files:
        root = Path(env["TUNIXRT_ARTIFACTS_DIR"]) / "runs"
        payload = b"c" * 1024
        for run_id in ids:
            folder = root / str(run_id)
            folder.mkdir(parents=True)
            (folder / "metrics.jsonl").write_bytes(payload)
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def count(env, sql: str) -> int:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        return conn.execute(sql).fetchone()[0]


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunixrt-bench-prune-"))
    # Its own folder: as root, the server runs as `postgres`, which cannot enter `work`.
    pg_dir = Path(tempfile.mkdtemp(prefix="tunixrt-bench-pg-"))
    server_url = os.getenv("DATABASE_URL")
    started_pg = False
    db_name = f"tunixrt_bench_{uuid.uuid4().hex[:8]}"
    try:
        if not server_url:
            server_url = subprocess.run(
                [str(REPO / ".ci" / "throwaway-postgres"), "start", str(pg_dir)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            started_pg = True
        admin_sql(server_url, f'CREATE DATABASE "{db_name}"')
        env = {
            **os.environ,
            "DATABASE_URL": with_database(server_url, db_name),
            "TUNIXRT_DATA_DIR": str(work / "data"),
            "TUNIXRT_ARTIFACTS_DIR": str(work / "data" / "artifacts"),
            "DJANGO_SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "TUNIXRT_LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO,
            env=env,
            check=True,
        )
        t0 = time.monotonic()
        generate(args, env)
        total_runs = args.runs
        total_chunks = count(env, "SELECT count(*) FROM runs_logchunk")
        print(
            f"generated {total_runs:,} runs, {total_chunks:,} log chunks, "
            f"{args.runs * args.metrics_per_run:,} metrics"
            f"{'' if args.no_files else f', {total_runs:,} run folders'} "
            f"in {time.monotonic() - t0:.1f} s"
        )

        start = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "prune_runs",
                "--older-than",
                "30",
                "--batch-size",
                str(args.batch_size),
                "--json",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            print(f"prune_runs failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
        peak_mb = usage.ru_maxrss / 1024  # kilobytes on Linux

        import json

        summary = json.loads(out)
        left_runs = count(env, "SELECT count(*) FROM runs_tunixrun")
        left_chunks = count(env, "SELECT count(*) FROM runs_logchunk")
        root = Path(env["TUNIXRT_ARTIFACTS_DIR"]) / "runs"
        left_folders = sum(1 for _ in root.iterdir()) if root.is_dir() else 0
        expected_left = min(args.kept, args.runs)
        ok = (
            summary["runs"] == args.runs - expected_left
            and left_runs == expected_left
            and left_chunks == expected_left * args.chunks_per_run
            and (args.no_files or left_folders == expected_left)
        )
        print(
            f"pruned {summary['runs']:,} runs, {summary['log_chunks']:,} log chunks, "
            f"{summary['metrics']:,} metrics, freed {summary['bytes_freed'] / 2**20:.1f} MiB; "
            f"kept {left_runs:,} runs ({left_chunks:,} chunks, {left_folders:,} folders)"
        )
        print(
            f"prune_runs --batch-size {args.batch_size}: {elapsed:.1f} s wall "
            f"(target < 60 s), peak RSS {peak_mb:.0f} MB (target < 200 MB)"
        )
        print(
            f"throughput: {summary['runs'] / elapsed:,.0f} runs/s, "
            f"{summary['log_chunks'] / elapsed:,.0f} chunks/s"
        )
        if not ok:
            print("MISMATCH: the wrong runs were pruned", file=sys.stderr)
            return 1
        return 0
    finally:
        try:
            if server_url and not started_pg:
                admin_sql(server_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        finally:
            if started_pg:
                subprocess.run(
                    [str(REPO / ".ci" / "throwaway-postgres"), "stop", str(pg_dir)], check=False
                )
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
