"""Supervisor figures (the execution engine):

1. wall-time overhead of supervising a heavy-output command against running it directly
   (target: within 10%);
2. the supervisor's peak memory while a child writes a 100 MB log (target: under 150 MB);
3. submit-to-child-start latency through the queue, median of 20 (target: under 0.5 s on
   the default SQLite set-up).

Usage: python bench/supervisor.py [--repeat 3] [--log-mb 100] [--latency-runs 20]
"""

import argparse
import resource
import subprocess
import sys
import threading
import time

from _common import bench_user, median, setup_django, start_cluster, stop_cluster, wait_final

HEAVY = (
    # Realistic training-like output: work between lines, ~20 MB of log in a few seconds.
    "import math, sys\n"
    "acc = 0.0\n"
    "for i in range({lines}):\n"
    "    for j in range(60): acc += math.sin(i + j)\n"
    "    sys.stdout.write(f'step {{i}} loss={{acc:.6f}} ' + 'x' * 80 + '\\n')\n"
)
FLOOD = "import sys\nline = 'y' * 1023 + '\\n'\nfor _ in range({n}): sys.stdout.write(line)\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--log-mb", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_CAP_BYTES=16 * 1024 * 1024, TUNIXRT_LOG_LEVEL="WARNING")
    from django.conf import settings

    from runs import services, supervisor
    from runs.datasets import services as dataset_services
    from runs.models import LogChunk

    user = bench_user()
    with open(settings.BASE_DIR / "runs/sample_data/reasoning-sample.jsonl", "rb") as f:
        dataset_services.dataset_import(source=f, name="sample", version="v1")
    models_dir = settings.MODELS_DIR / "bench"
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "config.json").write_text('{"model_type": "llama"}')

    def local_run(command, **kw):
        return services.run_create(
            owner=user,
            dataset_key="sample-v1",
            model_id="local:bench",
            mode="local",
            command=command,
            **kw,
        )

    # 1. Overhead.
    heavy = [sys.executable, "-c", HEAVY.format(lines=args.lines)]
    direct, supervised = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run(heavy, stdout=subprocess.DEVNULL, check=True)
        direct.append(time.perf_counter() - start)
        run = local_run(heavy)
        assert services.run_claim(run_id=run.id)
        cwd, env = services.run_prepare(run=run)
        start = time.perf_counter()
        outcome = supervisor.Supervisor(run, cwd=cwd, env_extra=env).execute()
        supervised.append(time.perf_counter() - start)
        assert outcome.status == "completed", outcome
        services.run_finish(run_id=run.id, status=outcome.status, exit_code=0)
    ratio = median(supervised) / median(direct)
    print(
        f"heavy output ({args.lines} lines): direct median {median(direct):.2f} s, "
        f"supervised median {median(supervised):.2f} s, overhead {100 * (ratio - 1):+.1f}%"
    )

    # 2. Peak memory of the supervising process with a 100 MB log.
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flood = [sys.executable, "-c", FLOOD.format(n=args.log_mb * 1024)]
    run = local_run(flood)
    services.run_claim(run_id=run.id)
    cwd, env = services.run_prepare(run=run)
    peak = {"rss": 0}
    done = threading.Event()

    def sample():
        import psutil

        me = psutil.Process()
        while not done.is_set():
            peak["rss"] = max(peak["rss"], me.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    outcome = supervisor.Supervisor(run, cwd=cwd, env_extra=env).execute()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    stored = sum(len(t) for t in LogChunk.objects.filter(run=run).values_list("text", flat=True))
    print(
        f"{args.log_mb} MB log: supervisor peak RSS {peak['rss'] / 2**20:.0f} MB "
        f"(process baseline before it {baseline:.0f} MB), {elapsed:.1f} s, "
        f"{stored / 2**20:.1f} MB stored under the cap, status {outcome.status}"
    )

    # 3. Submit-to-child-start latency through a real qcluster on this database.
    cluster = start_cluster(workers=1, TUNIXRT_QUEUE_POLL_SECONDS="0.05")
    latencies = []
    try:
        stamp = [sys.executable, "-c", "import time; print(f'START {time.time():.6f}', flush=True)"]
        for _ in range(args.latency_runs):
            submitted = time.time()
            run = local_run(stamp)
            wait_final(run.id)
            text = "".join(LogChunk.objects.filter(run=run).values_list("text", flat=True))
            started = float(text.split("START ")[1].split()[0])
            latencies.append(started - submitted)
    finally:
        stop_cluster(cluster)
    print(
        f"submit-to-child-start latency over {len(latencies)} runs: median "
        f"{median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
