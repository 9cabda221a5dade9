"""Load runs into an MLflow tracking database in-process, with MLflow's own classes: its
store (SqlAlchemyStore) creates the schema and the experiment, and each run is written as
the rows that the store's create_run, log_batch and update_run_info write (into the tables
of MLflow's ORM models: the run, its tags, params, metrics and latest metrics), 200 runs a
transaction in 2 processes: ~20 ms a run on the 2-core development machine, where the
store's methods one run at a time took ~110 ms (20 minutes for 10,000 runs). Run with the
Python of MLflow's virtual environment (bench/mlflow_side_by_side.py does), not with
tunix-rt's.

Usage: python _mlflow_load.py DB_URI ARTIFACT_ROOT RUNS.jsonl IDS.json [--jobs 2]

RUNS.jsonl: one run a line, {"name", "user", "status" (an MLflow status), "start", "end"
(milliseconds since the epoch, end null while running), "tags": {}, "params": {},
"metrics": [[key, step, value, timestamp_ms], ...]}. IDS.json gets {"experiment": its id,
"runs": MLflow's run ids in the order of the lines}.
"""

import argparse
import json
import multiprocessing
import time
import uuid

STORE = None
EXPERIMENT = None


def _store(uri, root):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(uri, root)


def _init(uri, root, experiment):
    global STORE, EXPERIMENT
    STORE, EXPERIMENT = _store(uri, root), experiment


def _load(lines):
    """Write the runs of `lines`, in one transaction: the rows create_run, log_batch and
    update_run_info write (the run, its tags, params, metrics and latest metrics)."""
    from mlflow.entities import LifecycleStage, SourceType
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.utils.uri import append_to_uri_path
    from sqlalchemy import insert

    experiment = STORE.get_experiment(EXPERIMENT)
    rows = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    for line in lines:
        run = json.loads(line)
        run_id = uuid.uuid4().hex
        rows[SqlRun].append(
            {
                "name": run["name"],
                "artifact_uri": append_to_uri_path(
                    experiment.artifact_location, run_id, "artifacts"
                ),
                "run_uuid": run_id,
                "experiment_id": int(EXPERIMENT),
                "source_type": SourceType.to_string(SourceType.UNKNOWN),
                "source_name": "",
                "entry_point_name": "",
                "user_id": run["user"],
                "status": run["status"],
                "start_time": run["start"],
                "end_time": run["end"],
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": LifecycleStage.ACTIVE,
            }
        )
        tags = {"mlflow.runName": run["name"], "mlflow.user": run["user"], **run["tags"]}
        rows[SqlTag] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()]
        params = run["params"].items()
        rows[SqlParam] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in params]
        latest = {}
        for key, step, value, stamp in run["metrics"]:
            metric = {"key": key, "value": value, "timestamp": stamp, "step": step}
            metric.update(is_nan=False, run_uuid=run_id)
            rows[SqlMetric].append(metric)
            if key not in latest or (step, stamp, value) > latest[key][:3]:
                latest[key] = (step, stamp, value, metric)
        rows[SqlLatestMetric] += [entry[3] for entry in latest.values()]
    with STORE.ManagedSessionMaker(read_only=False) as session:
        for model, values in rows.items():  # runs first: the others refer to them
            session.execute(insert(model), values)
    return [run["run_uuid"] for run in rows[SqlRun]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("artifact_root")
    parser.add_argument("runs")
    parser.add_argument("ids")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    store = _store(args.uri, args.artifact_root)  # creates the schema (MLflow's migrations)
    experiment = store.create_experiment("bench", artifact_location=args.artifact_root)
    store.engine.dispose()
    with open(args.runs) as handle:
        lines = handle.readlines()
    batches = [lines[i : i + 200] for i in range(0, len(lines), 200)]
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, _init, (args.uri, args.artifact_root, experiment)) as pool:
        ids = [run_id for batch in pool.imap(_load, batches) for run_id in batch]
    with open(args.ids, "w") as handle:
        json.dump({"experiment": experiment, "runs": ids}, handle)
    print(f"  MLflow: {len(ids)} runs in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
