"""The same tiny real Tunix training launched through tunix-rt (service -> queue -> worker ->
supervisor -> launcher) against the launcher run directly. Prints medians and the ratio
(target: within 5% plus the queue latency).

Usage: python bench/tunix_overhead.py [--repeat 3] [--steps 20]
"""

import argparse
import os

from _common import setup_django
from _overhead import SAMPLES, compare, make_tiny_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_LEVEL="WARNING")
    from django.conf import settings

    from runs import training
    from runs.datasets import services as dataset_services

    if not training.probe().available:
        raise SystemExit("Tunix is not installed: pip install -e '.[tunix]'")
    with open(SAMPLES / "reasoning-sample.jsonl", "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    make_tiny_model(settings.MODELS_DIR / "tiny")
    hp = {
        "learning_rate": 0.003,
        "batch_size": 4,
        "max_seq_length": 256,
        "max_steps": args.steps,
        "eval_every_n_steps": 10,
    }
    compare(f"tiny Tunix training, {args.steps} steps", hp, args.repeat)
    os.environ.pop("TUNIXRT_DATA_DIR", None)


if __name__ == "__main__":
    main()
