"""Registry reads side by side with MLflow: the same runs in both, the same five operations
with the same keep-alive client, alternating between the two servers; prints p50/p95 of
each and the ratio (MLflow's p50 / tunix-rt's).

The data: 10,000 runs (bench/_bench_data.py: 100 users, 90 days, every status), each with a
train/loss series of 100 steps and an eval/loss point every 10 steps, loaded into tunix-rt's
PostgreSQL database. The same runs are exported (name, owner, status, times, the
hyperparameters as params, dataset/model/mode as tags, every metric point) and loaded into a
second database on the same PostgreSQL server with MLflow's own classes, in-process:
bench/_mlflow_load.py, run with MLflow's Python, has MLflow's store (SqlAlchemyStore) make
the schema and the experiment and writes the rows its create_run, log_batch and
update_run_info write, into the tables of MLflow's ORM models (~2.5 minutes for 10,000).

MLflow lives in a virtual environment of its own (its dependencies are not ours), made once
from the `bench` extra in pyproject.toml and reused: ~/.cache/tunixrt-bench/mlflow-venv
(--mlflow-venv to move it). It needs the package registry the first time.

The servers: tunix-rt as `make serve` starts it (gunicorn, gthread, keep-alive), `mlflow
server --workers 4` (uvicorn, connections kept alive 75 s as gunicorn keeps them, without
the job runner MLflow starts beside it: tunix-rt's side is gunicorn without its worker); 4
worker processes each. The client: one kept-alive connection to each, TCP_NODELAY and
TCP_QUICKACK on (bench/_http.py), so neither server's Nagle or delayed-ACK behaviour is
measured. Every request is first sent once to each server untimed (caches and PostgreSQL's
pages warm on both sides); then each operation is measured in --rounds blocks per server,
tunix-rt then MLflow, tunix-rt, ..., so a change in the machine's load falls on both.
tunix-rt answers as staff (every run visible), as MLflow shows every run.

Usage: python bench/mlflow_side_by_side.py [--runs 10000] [--samples 1200] [--rounds 6]
       [--keep] [--database NAME]          (--database reuses both loaded databases)
A smoke run: python bench/mlflow_side_by_side.py --quick
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import psycopg
from _bench_data import REPO, BenchDatabase, add_arguments
from _common import admin_sql, with_database
from _http import (
    KeepAliveClient,
    free_port,
    start_process,
    start_server,
    stop_server,
    summary,
    timings,
)
from api_latency import credentials

VENV = Path.home() / ".cache" / "tunixrt-bench" / "mlflow-venv"
# tunix-rt's statuses in MLflow's words (the filters below compare like with like).
STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "running": "RUNNING",
    "pending": "SCHEDULED",
    "cancelled": "KILLED",
    "timeout": "KILLED",
}
FILTERS = ("completed", "failed", "running")
SERIES_RUNS = 200  # get and metric history cycle through this many runs


def mlflow_python(venv: Path) -> Path:
    """MLflow's interpreter, with the `bench` extra installed (made here once)."""
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["bench"]
    python = venv / "bin" / "python"
    version = next(r.split("==")[1] for r in wanted if r.startswith("mlflow=="))
    check = [str(python), "-c", "import mlflow, psycopg2; print(mlflow.__version__)"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return python
    print(f"Installing {', '.join(wanted)} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    return python


def export_runs(path: Path) -> list[str]:
    """Every run of the bench database as MLflow loader lines (oldest first); its ids."""
    from runs.hyperparameters import HYPERPARAMETERS
    from runs.models import Metric, TunixRun

    fields = ["id", "name", "status", "mode", "dataset_key", "model_id", "created_at"]
    rows = list(
        TunixRun.objects.order_by("created_at").values(*fields, "owner__username", *HYPERPARAMETERS)
    )
    with open(path, "w") as out:
        for first in range(0, len(rows), 1000):
            batch = rows[first : first + 1000]
            series = defaultdict(list)
            points = Metric.objects.filter(run_id__in=[r["id"] for r in batch])
            for run_id, name, step, value in points.values_list("run_id", "name", "step", "value"):
                series[run_id].append((name, step, value))
            for row in batch:
                start = int(row["created_at"].timestamp() * 1000)
                line = {
                    "name": row["name"],
                    "user": row["owner__username"],
                    "status": STATUS[row["status"]],
                    "start": start,
                    "end": start + 600_000 if STATUS[row["status"]] != "RUNNING" else None,
                    "tags": {k: row[k] for k in ("mode", "dataset_key", "model_id")},
                    "params": {k: str(row[k]) for k in HYPERPARAMETERS},
                    "metrics": [[n, s, v, start + 1000 * s] for n, s, v in series[row["id"]]],
                }
                out.write(json.dumps(line) + "\n")
    return [str(row["id"]) for row in rows]


class MlflowSide:
    """MLflow's database (on the bench's PostgreSQL server), loaded with the exported runs,
    and its server for the length of a `with` block."""

    def __init__(self, data, python: Path, workers: int, folder: Path):
        self.data, self.python, self.workers, self.folder = data, python, workers, folder
        self.name = f"{data.name}_mlflow"
        self.uri = with_database(data.server, self.name).replace(
            "postgres://", "postgresql+psycopg2://"
        )
        self.ids_file = Path(tempfile.gettempdir()) / f"{self.name}.json"
        self.proc = None

    def load(self):
        """{"experiment", "runs", "tunix"}: MLflow's ids of the runs, with tunix-rt's."""
        if self.data.args.database and self.ids_file.exists():
            return json.loads(self.ids_file.read_text())
        lines = self.folder / "runs.jsonl"
        tunix_ids = export_runs(lines)
        admin_sql(self.data.server, f"CREATE DATABASE {self.name}")
        loader = [str(self.python), str(REPO / "bench" / "_mlflow_load.py")]
        args = [self.uri, str(self.folder / "artifacts"), str(lines), str(self.ids_file)]
        subprocess.run([*loader, *args], check=True, env=self._env())
        lines.unlink()
        # As tunix-rt's tables after their load: fresh statistics for the planner.
        with psycopg.connect(with_database(self.data.server, self.name), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        loaded = {**json.loads(self.ids_file.read_text()), "tunix": tunix_ids}
        self.ids_file.write_text(json.dumps(loaded))
        return loaded

    def _env(self) -> dict:
        return {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            # The web server alone, as tunix-rt's side is gunicorn without its worker: no job
            # runner (huey consumers for scorers and periodic tasks) beside it.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

    def start(self) -> int:
        port = free_port()
        argv = [str(self.python.parent / "mlflow"), "server", "--backend-store-uri", self.uri]
        argv += ["--default-artifact-root", str(self.folder / "artifacts")]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers)]
        # Connections kept alive as long as tunix-rt's gunicorn keeps them (75 s): uvicorn's
        # default, 5 s, is shorter than one block of the other server.
        argv += ["--uvicorn-opts", "--timeout-keep-alive 75"]
        self.proc, _ = start_process(
            argv,
            self._env(),
            port=port,
            health="/health",
            log=self.folder / "mlflow.log",
            name="mlflow server",
        )
        return port

    def version(self) -> str:
        check = [str(self.python), "-c", "import mlflow; print(mlflow.__version__)"]
        return subprocess.run(check, capture_output=True, text=True).stdout.strip()

    def close(self):
        if self.proc is not None:
            stop_server(self.proc)
        if not self.data.args.keep:
            admin_sql(self.data.server, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            self.ids_file.unlink(missing_ok=True)


def operations(loaded):
    """(label, tunix-rt's requests, MLflow's requests, goal ratio) of the five operations."""
    step = max(1, len(loaded["runs"]) // SERIES_RUNS)
    picks = range(0, len(loaded["runs"]), step)
    ours = [loaded["tunix"][i] for i in picks]
    theirs = [loaded["runs"][i] for i in picks]
    runs = "/api/tunix/runs?page_size=50"

    def search(where=""):
        body = {
            "experiment_ids": [loaded["experiment"]],
            "max_results": 50,
            "order_by": ["attributes.start_time DESC"],
            "filter": where,
        }
        return ("POST", "/api/2.0/mlflow/runs/search", json.dumps(body).encode())

    history = "/api/2.0/mlflow/metrics/get-history?metric_key=train%2Floss&run_id="
    return [
        ("list newest 50", [runs], [search()], 10),
        (
            "list 50 with a status filter",
            [f"{runs}&status={s}" for s in FILTERS],
            [search(f"attributes.status = '{STATUS[s]}'") for s in FILTERS],
            10,
        ),
        (
            "get one run",
            [f"/api/tunix/runs/{i}" for i in ours],
            [f"/api/2.0/mlflow/runs/get?run_id={quote(i)}" for i in theirs],
            10,
        ),
        (
            "metric history, 100 points",
            [f"/api/tunix/runs/{i}/metrics" for i in ours],
            [f"{history}{quote(i)}" for i in theirs],
            10,
        ),
        ("health", ["/api/health"], ["/health"], None),
    ]


def compare(clients, headers, ops, samples: int, rounds: int):
    """Print each operation's p50/p95/size on both servers, measured in alternating blocks."""
    print(
        f"{'operation':<30} {'tunix-rt p50':>12} {'p95':>6} {'KB':>5}"
        f" {'MLflow p50':>11} {'p95':>6} {'KB':>5} {'ratio':>6} {'goal':>5}"
    )
    for _, ours, theirs, _ in ops:  # every request once on each server, untimed
        for side, requests in (("tunix-rt", ours), ("MLflow", theirs)):
            timings(clients[side], requests, 0, headers[side], warmup=len(requests))
    for label, ours, theirs, goal in ops:
        measured = {side: ([], []) for side in clients}
        for _ in range(rounds):
            for side, requests in (("tunix-rt", ours), ("MLflow", theirs)):
                times, sizes = timings(clients[side], requests, samples // rounds, headers[side])
                measured[side][0].extend(times)
                measured[side][1].extend(sizes)
        a50, a95, a_size = summary(*measured["tunix-rt"])
        b50, b95, b_size = summary(*measured["MLflow"])
        print(
            f"{label:<30} {a50:12.2f} {a95:6.1f} {a_size / 1024:5.1f}"
            f" {b50:11.2f} {b95:6.1f} {b_size / 1024:5.1f} {b50 / a50:5.1f}x"
            f" {f'>={goal}x' if goal else '':>5}",
            flush=True,
        )


def measure_both(args, data, side: MlflowSide, folder: Path) -> None:
    from django.db import connection

    _, headers = credentials(data.facts)
    version = connection.pg_version // 10000
    started = time.perf_counter()
    loaded = side.load()
    print(f"  export and MLflow load in {time.perf_counter() - started:.0f} s", flush=True)
    connection.close()
    env = data.server_env(args.workers)
    proc, port = start_server("gunicorn", env, log=folder / "gunicorn.log")
    try:
        clients = {"tunix-rt": KeepAliveClient(port), "MLflow": KeepAliveClient(side.start())}
        print(
            f"\n{len(loaded['runs'])} runs, PostgreSQL {version}, {os.cpu_count()} cores;"
            f" tunix-rt gunicorn gthread x{args.workers}, MLflow {side.version()} uvicorn"
            f" x{args.workers}; {args.samples} requests a cell in {args.rounds} alternating"
            " blocks, one kept-alive connection to each; times in ms\n"
        )
        compare(
            clients,
            {"tunix-rt": headers["staff"], "MLflow": {"Content-Type": "application/json"}},
            operations(loaded),
            args.samples,
            args.rounds,
        )
        print(f"\nreconnects: { {name: c.reconnects for name, c in clients.items()} }")
    finally:
        stop_server(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.set_defaults(runs=10_000, chunks=0, points=100)
    parser.add_argument("--samples", type=int, default=1200, help="requests per cell")
    parser.add_argument("--rounds", type=int, default=6, help="alternating blocks per cell")
    parser.add_argument("--workers", type=int, default=4, help="worker processes of each server")
    parser.add_argument("--mlflow-venv", type=Path, default=VENV)
    parser.add_argument("--quick", action="store_true", help="1,000 runs, 120 requests a cell")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.samples, args.rounds = 1000, 120, 2
    args.series_runs = args.runs  # every run has its loss series
    python = mlflow_python(args.mlflow_venv)
    folder = Path(tempfile.mkdtemp(prefix="tunixrt-bench-mlflow-"))
    with BenchDatabase(args) as data:
        side = MlflowSide(data, python, args.workers, folder)
        try:
            measure_both(args, data, side, folder)
        finally:
            side.close()


if __name__ == "__main__":
    sys.exit(main())
