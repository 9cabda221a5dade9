"""Each method (sft, dpo, orpo, grpo) on the tiny generated model: steps per second, from
the launcher's own metric lines (the first step, which compiles, is left out). Then GRPO
through tunix-rt (service -> queue -> worker -> supervisor -> launcher) against the launcher
run directly on the very config and data tunix-rt executed (target: within 5% plus the queue
latency).

Usage: python bench/methods.py [--steps 6] [--repeat 2] [--methods sft,dpo,orpo,grpo]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time

from _common import REPO, bench_user, median, setup_django, start_cluster, stop_cluster, wait_final

SAMPLES = REPO / "runs" / "sample_data"
COMMON = {"learning_rate": 0.003, "batch_size": 4, "max_seq_length": 128, "lora_rank": 4}
# Short completions and 2 generations keep GRPO's sampling to a tiny model's size.
GRPO = {"batch_size": 2, "num_generations": 2, "max_new_tokens": 8}


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


def method_config(method: str, model_dir, folder, steps: int) -> dict:
    from runs import hyperparameters, training
    from runs.datasets import rendering

    source, fmt = (
        ("preference-sample.jsonl", "preference")
        if method in ("dpo", "orpo")
        else ("reasoning-sample.jsonl", "reasoning")
    )
    hp = {**COMMON, **(GRPO if method == "grpo" else {}), "method": method, "max_steps": steps}
    clean, errors = hyperparameters.validate_hyperparameters(hp)
    assert not errors, errors
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.jsonl"
    # The training file as tunix-rt writes it (runs.datasets.services.dataset_render_to).
    with (SAMPLES / source).open() as handle:
        rows = [json.loads(line) for line in handle]
    if method == "sft":
        lines = rendering.training_lines(rows, fmt)
    else:
        lines = rendering.rendered_lines(rows, fmt, "llama3", method=method)
    data.write_text("".join(lines))
    config = training.build_config(
        run_id=folder.name,
        model=training.ModelRef("local:tiny", "local", "llama3", str(model_dir)),
        dataset_key="bench",
        dataset_sha256="",
        output_path=folder,
        hyperparameters=clean,
    )
    config["dataset"]["path"] = str(data)
    return config


def steps_per_second(arrivals: list[float]) -> float | None:
    # From the first step's metric (after compiling) to the last: steps 2..N.
    if len(arrivals) < 2:
        return None
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def each_method(args, model_dir, root) -> None:
    print(f"steps per second on the tiny model ({args.steps} steps, compile step left out):")
    for method in args.methods:
        folder = root / f"method-{method}"
        wall, arrivals = launch(folder, method_config(method, model_dir, folder, args.steps))
        rate = steps_per_second(arrivals)
        shown = f"{rate:.2f} steps/s" if rate else "n/a"
        print(f"  {method:5} {shown}  (whole launch {wall:.1f} s)", flush=True)


# long: set-up, the runs through tunix-rt, then the same config launched directly.
def grpo_overhead(args, root) -> None:
    from django.conf import settings

    from runs import protocol, services, storage
    from runs.datasets import services as dataset_services

    with open(SAMPLES / "reasoning-sample.jsonl", "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    hp = {**COMMON, **GRPO, "method": "grpo", "max_steps": args.steps}
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
        direct.append(launch(folder, config)[0])
    t, d, q = median(through), median(direct), median(queue)
    print(f"GRPO, {args.steps} steps, median of {args.repeat}:")
    print(f"  through tunix-rt (submit -> final): {t:.2f} s (queue latency median {q:.3f} s)")
    print(f"  launcher run directly:              {d:.2f} s")
    print(f"  ratio {t / d:.3f}; excluding queue latency {(t - q) / d:.3f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--methods", default="sft,dpo,orpo,grpo", type=lambda s: s.split(","))
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    data = setup_django(TUNIXRT_LOG_LEVEL="WARNING")
    from django.conf import settings

    from runs import training

    if not training.probe().available:
        raise SystemExit("Tunix is not installed: pip install -e '.[tunix]'")
    model_dir = settings.MODELS_DIR / "tiny"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runs.launcher.tinymodel",
            str(model_dir),
            "--data",
            str(SAMPLES / "reasoning-sample.jsonl"),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    each_method(args, model_dir, data / "bench-methods")
    if not args.skip_overhead:
        grpo_overhead(args, data)


if __name__ == "__main__":
    main()
