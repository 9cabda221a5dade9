"""A stand-in for the launcher that prints the device environment its slot gave it, then
waits until the file named by its first argument exists (at most two minutes).

Run as `python tests/programs/slot_probe.py RELEASE_FILE`. Standard library only."""

import json
import os
import sys
import time
from pathlib import Path

SHOWN = (
    "CUDA_VISIBLE_DEVICES",
    "TPU_VISIBLE_CHIPS",
    "TPU_PROCESS_PORT",
    "TPU_CHIPS_PER_PROCESS_BOUNDS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "TUNIXRT_SLOT",
)


def main(release: str) -> int:
    print("slot-env " + json.dumps({k: os.environ.get(k) for k in SHOWN}), flush=True)
    deadline = time.monotonic() + 120
    while not Path(release).exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
