"""A stand-in training program that speaks the launcher's protocol without Tunix.

Run as `python -m tests.programs.tiny_launcher CONFIG.json` (what settings.
TUNIX_LAUNCHER_MODULE names in tests). It reads the same config file as runs.launcher,
then for each step prints a progress and a train/loss metric event, a plain log line, and
writes an Orbax-style complete checkpoint (`checkpoints/STEP/commit_success.txt`) every
`checkpoint_every_n_steps`. Standard library only, like the real launcher.
"""

import json
import sys
import time
from pathlib import Path

# Slow enough that a client following the log sees it grow.
STEP_SECONDS = 0.05


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        emit(event="error", message="usage: python -m tests.programs.tiny_launcher CONFIG.json")
        return 2
    config = json.loads(Path(argv[0]).read_text())
    training = config["training"]
    total = training["max_steps"] or 5
    every = training["checkpoint_every_n_steps"]
    checkpoints = Path(config["output"]["checkpoint_dir"])
    emit(event="phase", phase="training")
    for step in range(1, total + 1):
        emit(event="progress", step=step, total_steps=total)
        emit(event="metric", name="train/loss", step=step, value=round(4.0 / step, 4))
        print(f"step {step}/{total}", flush=True)
        if step % every == 0 or step == total:
            folder = checkpoints / str(step)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "commit_success.txt").write_text("ok")
            emit(event="checkpoint", step=step, path=str(folder), complete=True)
        time.sleep(STEP_SECONDS)
    emit(event="phase", phase="done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
