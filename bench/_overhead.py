"""Training through tunix-rt (service -> queue -> worker -> supervisor -> launcher) against the
launcher run directly on the very config and data tunix-rt executed: shared by
bench/tunix_overhead.py (SFT) and bench/methods.py (GRPO)."""

import json
import shutil
import subprocess
import sys
import time

from _common import REPO, bench_user, median, start_cluster, stop_cluster, wait_final

SAMPLES = REPO / "runs" / "sample_data"


def make_tiny_model(model_dir) -> None:
    """The tiny generated model, its tokenizer trained on the reasoning sample."""
    data = SAMPLES / "reasoning-sample.jsonl"
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(model_dir), "--data", str(data)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def launch(folder, config) -> tuple[float, list[float]]:
    """Run the launcher on `config`; (wall seconds, the arrival time of each train step)."""
    from runs import processes, training

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(config))
    env = processes.child_environment(training.launcher_environment())
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "runs.launcher", str(folder / "cfg.json")],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    steps: dict[int, float] = {}
    for line in child.stdout:
        event = json.loads(line)
        if event.get("event") == "metric" and event.get("name") == "train/loss":
            steps.setdefault(event["step"], time.perf_counter())
    if child.wait() != 0:
        raise SystemExit(f"the launcher failed in {folder}")
    return time.perf_counter() - start, [steps[s] for s in sorted(steps)]


def compare(title: str, hp: dict, repeat: int) -> None:
    """`repeat` runs of `hp` on dataset sample-v1 through tunix-rt, then the last run's config
    launched directly as often; prints the medians and the ratio."""
    from django.conf import settings

    from runs import protocol, services, storage

    user = bench_user()
    cluster = start_cluster(workers=1)
    through, queue = [], []
    try:
        for _ in range(repeat):
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
    direct = []
    source = storage.run_output_path(run)
    for i in range(repeat):
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
        direct.append(launch(folder, config)[0])
    t, d, q = median(through), median(direct), median(queue)
    print(f"{title}, median of {repeat}:")
    print(f"  through tunix-rt (submit -> final): {t:.2f} s (queue latency median {q:.3f} s)")
    print(f"  launcher run directly:              {d:.2f} s")
    print(f"  ratio {t / d:.3f}; excluding queue latency {(t - q) / d:.3f}")
