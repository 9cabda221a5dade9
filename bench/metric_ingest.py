"""Metric ingest through the supervisor: a child prints metric events as fast as it can
(a train/loss and a train/grad_norm every step, an eval/loss every 100) and a real
Supervisor stores them; points stored per second of supervised wall time (median of
--repeat), next to how long the child alone takes to print them.

Usage: python bench/metric_ingest.py [--steps N] [--repeat N]
(SQLite in a throwaway folder by default; DATABASE_URL for PostgreSQL)
"""

import argparse
import subprocess
import sys
import time

from _common import bench_user, median, setup_django

CHILD = (
    "import json, sys\n"
    "write = sys.stdout.write\n"
    "for step in range(1, {steps} + 1):\n"
    "    write(json.dumps({{'event': 'metric', 'name': 'train/loss', 'step': step,\n"
    "                      'value': 2.0 / step + (step % 7) * 0.01}}) + '\\n')\n"
    "    write(json.dumps({{'event': 'metric', 'name': 'train/grad_norm', 'step': step,\n"
    "                      'value': 1.0 + (step % 13) * 0.1}}) + '\\n')\n"
    "    if step % 100 == 0:\n"
    "        write(json.dumps({{'event': 'metric', 'name': 'eval/loss', 'step': step,\n"
    "                          'value': 1.0 / step}}) + '\\n')\n"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_LEVEL="WARNING")
    from django.conf import settings

    from runs import services, supervisor
    from runs.datasets import services as dataset_services
    from runs.models import Metric

    user = bench_user()
    with open(settings.BASE_DIR / "runs/sample_data/reasoning-sample.jsonl", "rb") as f:
        dataset_services.dataset_import(source=f, name="sample", version="v1")
    models_dir = settings.MODELS_DIR / "bench"
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "config.json").write_text('{"model_type": "llama"}')
    command = [sys.executable, "-c", CHILD.format(steps=args.steps)]
    points = 2 * args.steps + args.steps // 100

    direct, rates = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        direct.append(time.perf_counter() - started)
        run = services.run_create(
            owner=user,
            dataset_key="sample-v1",
            model_id="local:bench",
            mode="local",
            command=command,
        )
        assert services.run_claim(run_id=run.id)
        cwd, env = services.run_prepare(run=run)
        started = time.perf_counter()
        outcome = supervisor.Supervisor(run, cwd=cwd, env_extra=env).execute()
        elapsed = time.perf_counter() - started
        assert outcome.status == "completed", outcome
        services.run_finish(run_id=run.id, status=outcome.status, exit_code=0)
        stored = Metric.objects.filter(run=run).count()
        if stored != points:
            print(f"only {stored:,} of {points:,} points stored")
        rates.append(stored / elapsed)
    print(
        f"{points:,} metric points: the child alone prints them in {median(direct):.2f} s; "
        f"through the supervisor {median(rates):,.0f} points/s stored (median of "
        f"{args.repeat}: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
