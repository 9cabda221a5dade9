"""Validate a large JSONL dataset the way an import does, and print throughput and peak memory.

    .venv/bin/python bench/dataset_validate.py            # 200 MB (the issue's size)
    .venv/bin/python bench/dataset_validate.py --mb 20    # a quick smoke run
    .venv/bin/python bench/dataset_validate.py --repeat 5 # median of 5 (default 3)

Each measurement runs in a fresh interpreter, so its peak resident memory (ru_maxrss) is its
own; each is repeated and the run with the median time is shown. The same validation is
measured at the full size and at a tenth of it: flat memory means the two peaks are about
the same, whatever the file size. A second pass measures the length statistics behind the
preview page and the dry-run's truncation figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from runs.datasets import rendering, validation as datasets

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

path, mode, sink_path = sys.argv[2], sys.argv[3], sys.argv[4]
before = rss_mib()
started = time.perf_counter()
if mode == "validate":
    # What dataset_import does: validate, hash and copy in one streaming pass.
    with open(path, "rb") as handle, open(sink_path, "wb") as sink:
        report = datasets.validate_stream(
            datasets.read_chunks(handle), max_bytes=1 << 40, max_line_bytes=1 << 20, sink=sink
        )
    assert report.ok, report.summary()
    rows = report.rows
else:
    stats = rendering.measure_lengths(datasets.iter_rows(path), "reasoning", "llama3")
    rows = stats.rows
elapsed = time.perf_counter() - started
print(json.dumps({"rows": rows, "seconds": elapsed, "rss_before_mib": before,
                  "rss_peak_mib": rss_mib()}))
"""


def make_file(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Reasoning rows of varied length until the file reaches size_bytes."""
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "of",
        "to",
        "add",
        "count",
        "boxes",
        "each",
        "total",
        "apples",
        "marbles",
        "left",
        "gives",
        "more",
    ]
    written = rows = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size_bytes:
            n_steps = rng.randint(1, 6)
            row = {
                "prompt": " ".join(rng.choices(words, k=rng.randint(8, 60))) + "?",
                "steps": [
                    {
                        "i": i + 1,
                        "type": rng.choice(["plan", "compute", "check"]),
                        "content": " ".join(rng.choices(words, k=rng.randint(4, 40))),
                    }
                    for i in range(n_steps)
                ],
                "final_answer": str(rng.randint(0, 999)),
                "meta": {"source": "bench", "n": rows},
            }
            line = json.dumps(row) + "\n"
            out.write(line)
            written += len(line.encode())
            rows += 1
    return rows


def measure(path: Path, mode: str, workdir: Path) -> dict:
    sink = workdir / "copy.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), str(path), mode, str(sink)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    sink.unlink(missing_ok=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_median(path: Path, mode: str, workdir: Path, repeat: int) -> dict:
    """The run with the median time of `repeat` runs, with every run's time alongside."""
    results = sorted((measure(path, mode, workdir) for _ in range(repeat)), key=seconds)
    median = dict(results[len(results) // 2])
    median["all_seconds"] = [r["seconds"] for r in results]
    return median


def seconds(result: dict) -> float:
    return result["seconds"]


def report(label: str, size: int, result: dict) -> None:
    rate = result["rows"] / result["seconds"]
    mb_s = size / result["seconds"] / 1e6
    growth = result["rss_peak_mib"] - result["rss_before_mib"]
    print(
        f"{label:<28} {size / 1e6:8.1f} MB {result['rows']:>9} rows "
        f"{result['seconds']:7.2f} s {rate:>10,.0f} rows/s {mb_s:7.1f} MB/s "
        f"peak RSS {result['rss_peak_mib']:6.1f} MiB (+{growth:.1f} MiB over start)"
    )
    runs = ", ".join(f"{t:.2f}" for t in result.get("all_seconds", []))
    if len(result.get("all_seconds", [])) > 1:
        print(f"{'':<28} median of {len(result['all_seconds'])} runs: {runs} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mb",
        type=float,
        default=float(os.environ.get("BENCH_DATASET_MB", "200")),
        help="size of the large file in MB (default 200, or $BENCH_DATASET_MB)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the median is shown"
    )
    args = parser.parse_args()
    big = int(args.mb * 1e6)
    small = max(big // 10, 100_000)
    with tempfile.TemporaryDirectory(prefix="tunixrt-bench-") as tmp:
        workdir = Path(tmp)
        files = {}
        for size in (small, big):
            path = workdir / f"data-{size}.jsonl"
            make_file(path, size)
            files[size] = path
        print(
            f"python {sys.version.split()[0]}; files written under {workdir}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        results = {}
        for size, path in files.items():
            results[size] = measure_median(path, "validate", workdir, args.repeat)
            report("validate + hash + copy", path.stat().st_size, results[size])
        ratio = results[big]["rss_peak_mib"] / results[small]["rss_peak_mib"]
        print(
            f"peak memory ratio, {big / 1e6:.0f} MB vs {small / 1e6:.0f} MB file: {ratio:.2f} "
            "(1.00 = flat)"
        )
        stats = measure_median(files[big], "stats", workdir, args.repeat)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        report("length stats (characters)", files[big].stat().st_size, stats)


if __name__ == "__main__":
    main()
