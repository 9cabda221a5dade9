"""The same tiny real Tunix training launched through tunix-rt (service -> queue -> worker ->
supervisor -> launcher) against the launcher run directly. Prints medians and the ratio
(target: within 5% plus the queue latency).

Usage: python bench/tunix_overhead.py [--repeat 3] [--steps 20]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from _common import (
    REPO,
    bench_user,
    median,
    setup_django,
    start_cluster,
    stop_cluster,
    wait_final,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_LEVEL="WARNING")
    from django.conf import settings

    from runs import processes, protocol, services, storage, training
    from runs.datasets import services as dataset_services

    if not training.probe().available:
        raise SystemExit("Tunix is not installed: pip install -e '.[tunix]'")
    sample = REPO / "runs/sample_data/reasoning-sample.jsonl"
    with open(sample, "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runs.launcher.tinymodel",
            str(settings.MODELS_DIR / "tiny"),
            "--data",
            str(sample),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    hp = {
        "learning_rate": 0.003,
        "batch_size": 4,
        "max_seq_length": 256,
        "max_steps": args.steps,
        "eval_every_n_steps": 10,
    }
    user = bench_user()
    cluster = start_cluster(workers=1)
    through, queue = [], []
    try:
        for _ in range(args.repeat):
            start = time.perf_counter()
            run = services.run_create(
                owner=user,
                dataset_key="sample-v1",
                model_id="local:tiny",
                mode="local",
                hyperparameters=hp,
            )
            run = wait_final(run.id)
            through.append(time.perf_counter() - start)
            queue.append((run.started_at - run.created_at).total_seconds())
            assert run.status == "completed", run.message
    finally:
        stop_cluster(cluster)

    # The launcher alone, on the very config and data the last run executed.
    direct = []
    source = storage.run_output_path(run)
    for i in range(args.repeat):
        folder = settings.ARTIFACTS_DIR / f"direct-{i}"
        folder.mkdir()
        shutil.copy(source / protocol.TRAIN_DATA_FILENAME, folder / protocol.TRAIN_DATA_FILENAME)
        config = json.loads((source / protocol.CONFIG_FILENAME).read_text())
        config["dataset"]["path"] = str(folder / protocol.TRAIN_DATA_FILENAME)
        config["output"] = {
            "dir": str(folder),
            "checkpoint_dir": str(folder / "checkpoints"),
            "tensorboard_dir": str(folder / "tensorboard"),
        }
        (folder / "cfg.json").write_text(json.dumps(config))
        env = processes.child_environment(training.launcher_environment())
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "runs.launcher", str(folder / "cfg.json")],
            cwd=folder,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        direct.append(time.perf_counter() - start)

    t, d, q = median(through), median(direct), median(queue)
    print(f"tiny Tunix training, {args.steps} steps, median of {args.repeat}:")
    print(f"  through tunix-rt (submit -> final): {t:.2f} s (queue latency median {q:.3f} s)")
    print(f"  launcher run directly:              {d:.2f} s")
    print(f"  ratio {t / d:.3f}; excluding queue latency {(t - q) / d:.3f}")
    os.environ.pop("TUNIXRT_DATA_DIR", None)


if __name__ == "__main__":
    main()
