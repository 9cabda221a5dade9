"""Using a trained run on the tiny real model: evaluation rows per second, playground latency of
the first and of later prompts end to end (HTTP POST with ?wait= to the answer, through the web
server, the queue, a worker and its host's generation server), and export time. Prints medians.

Goal: a later prompt to the same run answers in under 1 s end to end; the first pays loading
and compiling both models.

Usage: python bench/use_the_model.py [--repeat 3] [--prompts 5] [--rows 16] [--tokens 16]
"""

import argparse
import os
import subprocess
import sys
import time

from _common import REPO, bench_user, median, setup_django, start_cluster, stop_cluster, wait_final
from _http import start_server, stop_server

TRAIN = {
    "learning_rate": 0.003,
    "batch_size": 4,
    "max_seq_length": 256,
    "max_steps": 8,
    "eval_every_n_steps": 4,
    "lora_rank": 8,
    "lora_alpha": 16.0,
}
PROMPTS = ["What is 2 + 3?", "What is 7 - 4?", "Name a prime number.", "What is 3 * 3?"]


def train(user, services):
    run = services.run_create(
        owner=user,
        dataset_key="sample-v1",
        model_id="local:tiny",
        mode="local",
        hyperparameters=TRAIN,
    )
    run = wait_final(run.id)
    assert run.status == "completed", run.message
    return run


def stored_rows(job, timeout=60):
    """The rows are stored from the job's file just after it ends."""
    deadline = time.monotonic() + timeout
    while not (rows := job.evaluation_rows.count()):
        if time.monotonic() > deadline:
            raise SystemExit(f"no rows stored for evaluation {job.id}")
        time.sleep(0.1)
    return rows


def evaluations(run, user, services, args):
    """Rows per second of each evaluation (worker start to end: loading, compiling and
    generating with both models, scoring), and its rows."""
    rates = []
    for _ in range(args.repeat):
        job = services.evaluation_create(
            run=run,
            owner=user,
            generation={"max_rows": args.rows, "max_new_tokens": args.tokens},
        )
        job = wait_final(job.id, timeout=1200)
        assert job.status == "completed", job.message
        rows = stored_rows(job)
        rates.append((rows / (job.finished_at - job.started_at).total_seconds(), rows))
    return rates


def prompts(run, port, token, args):
    """Seconds from the POST to the answer, as a client sees them: the first, then the rest."""
    from runs.client import Client

    client = Client(f"http://127.0.0.1:{port}", token, timeout=120)
    times, cold = [], []
    for i in range(args.prompts + 1):
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": args.tokens}
        start = time.perf_counter()
        record = client.request(
            "POST", f"/tunix/runs/{run.id}/prompts", query={"wait": 60}, body=body
        )
        while record["status"] == "pending":
            record = client.request("GET", f"/tunix/prompts/{record['id']}", query={"wait": 60})
        times.append(time.perf_counter() - start)
        assert record["status"] == "done", record
        cold.append(record["cold"])
    assert cold[0] and not any(cold[1:]), cold
    return times[0], times[1:]


def exports(run, user, services, args):
    seconds = []
    for i in range(args.repeat):
        job = services.export_create(run=run, owner=user, name=f"bench-export-{i}")
        job = wait_final(job.id, timeout=1200)
        assert job.status == "completed", job.message
        seconds.append((job.finished_at - job.created_at).total_seconds())
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="evaluations and exports")
    parser.add_argument("--prompts", type=int, default=5, help="prompts after the first")
    parser.add_argument("--rows", type=int, default=16, help="rows per evaluation")
    parser.add_argument("--tokens", type=int, default=16, help="max new tokens")
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_LEVEL="WARNING", TUNIXRT_EVALUATE_AFTER_RUN="0")
    from django.conf import settings

    from runs import services, training
    from runs.datasets import services as dataset_services

    if not training.probe().available:
        raise SystemExit("Tunix is not installed: pip install -e '.[tunix]'")
    sample = REPO / "runs/sample_data/reasoning-sample.jsonl"
    with open(sample, "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(settings.MODELS_DIR / "tiny")]
        + ["--data", str(sample)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    user = bench_user()
    _, token = services.api_token_create(user=user, name="bench")
    cluster = start_cluster(workers=1, TUNIXRT_QUEUE_POLL_SECONDS="0.05")
    server = None
    try:
        run = train(user, services)
        server, port = start_server("runserver", {})
        first, later = prompts(run, port, token, args)
        rates = evaluations(run, user, services, args)
        export_seconds = exports(run, user, services, args)
    finally:
        if server is not None:
            stop_server(server)
        stop_cluster(cluster)

    print(f"tiny Llama-3-style model, {args.tokens} new tokens at most, greedy:")
    rows = rates[0][1]
    print(
        f"  evaluation ({rows} rows, fine-tuned and base, worker start to end, median of "
        f"{len(rates)}): {median([r for r, _ in rates]):.2f} rows/s"
    )
    print(f"  playground, first prompt (loads and compiles both models): {first:.2f} s")
    print(
        f"  playground, later prompts (median of {len(later)}): {median(later):.3f} s "
        f"(max {max(later):.3f} s)"
    )
    print(
        f"  export (submit to completed, median of {len(export_seconds)}): "
        f"{median(export_seconds):.2f} s"
    )
    os.environ.pop("TUNIXRT_DATA_DIR", None)


if __name__ == "__main__":
    main()
