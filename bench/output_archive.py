"""Memory of the "download all" archive: peak RSS while streaming a run folder that holds one
2 GB file (sparse, so the bench needs no 2 GB of disk). The archive is read and compressed in
blocks, so the peak should stay near the process's size before the download.

    python bench/output_archive.py [SIZE_GB]
"""

import os
import resource
import sys
import time
import uuid

from _common import setup_django


def main(size_gb: float) -> None:
    setup_django()
    from django.contrib.auth import get_user_model

    from runs import storage
    from runs.hyperparameters import HYPERPARAMETERS
    from runs.models import TunixRun

    owner = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:6]}")
    run_id = uuid.uuid4()
    run = TunixRun.objects.create(
        id=run_id,
        owner=owner,
        mode="dry-run",
        dataset_key="bench-v1",
        model_id="local:bench",
        output_dir=f"runs/{run_id}",
        timeout_seconds=60,
        **{name: bound.default for name, bound in HYPERPARAMETERS.items()},
    )
    folder = storage.run_output_path(run)
    folder.mkdir(parents=True)
    size = int(size_gb * 1024**3)
    with open(folder / "shard.bin", "wb") as handle:
        handle.truncate(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    began, sent, largest = time.monotonic(), 0, 0
    for chunk in storage.run_output_archive(run):
        sent += len(chunk)
        largest = max(largest, len(chunk))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.unlink(folder / "shard.bin")
    print(
        f"archive of a {size_gb:g} GB file: {sent / 1024**2:.1f} MiB sent in "
        f"{time.monotonic() - began:.1f} s; largest piece {largest / 1024:.0f} KiB; "
        f"peak RSS {before:.0f} MiB before, {peak:.0f} MiB after (+{peak - before:.0f} MiB)"
    )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
