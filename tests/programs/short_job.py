"""A stand-in launcher that speaks the launcher protocol without training anything.

`python -m tests.programs.short_job CONFIG.json`: reads `training.max_steps` from the config,
prints a log line and progress/metric events per step with a short pause, and exits 0. The
browser tests point TUNIX_LAUNCHER_MODULE at it, so the page's form submits a real local
run that a real worker executes in a few seconds.
"""

import json
import sys
import time

STEP_SECONDS = 0.4


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def main(config_path: str) -> int:
    with open(config_path) as handle:
        config = json.load(handle)
    steps = int(config["training"].get("max_steps") or 5)
    emit(event="phase", phase="loading")
    print(f"short_job: loaded config for run {config['run_id']}", flush=True)
    emit(event="phase", phase="training")
    for step in range(1, steps + 1):
        time.sleep(STEP_SECONDS)
        loss = 2.0 / step
        for batch in range(1, 4):
            print(f"  batch {step}.{batch}: {100 + batch} tokens", flush=True)
        print(f"step {step}/{steps} loss={loss:.4f}", flush=True)
        emit(event="progress", step=step, total_steps=steps)
        emit(event="metric", name="train/loss", step=step, value=loss)
        if step % 2 == 0:
            emit(event="metric", name="eval/loss", step=step, value=loss * 1.1)
    emit(event="phase", phase="saving")
    print("short_job: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
