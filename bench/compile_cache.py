"""A tiny launch of each method with JAX's persistent compilation cache off, then twice with a
fresh cache (the first fills it, the second reads it), as a host's children use it
(TUNIXRT_COMPILE_CACHE_DIR). Prints the whole-launch wall times and the saving.

Usage: python bench/compile_cache.py [--methods sft,grpo] [--steps 6]
"""

import argparse
import tempfile

from _common import setup_django
from _overhead import launch, make_tiny_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="sft,grpo", type=lambda s: s.split(","))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    setup_django(TUNIXRT_LOG_LEVEL="WARNING")
    import methods
    from django.conf import settings

    from runs import training

    if not training.probe().available:
        raise SystemExit("Tunix is not installed: pip install -e '.[tunix]'")
    model_dir = settings.MODELS_DIR / "tiny"
    make_tiny_model(model_dir)
    print(f"whole launch of {args.steps} steps on the tiny model, seconds:")
    for method in args.methods:
        cache = tempfile.mkdtemp(prefix="tunixrt-bench-cache-")
        times = []
        for i, folder_cache in enumerate(["", cache, cache]):
            settings.COMPILE_CACHE_DIR = folder_cache
            folder = settings.ARTIFACTS_DIR / f"{method}-{i}"
            config = methods.method_config(method, model_dir, folder, args.steps)
            times.append(launch(folder, config)[0])
        off, cold, warm = times
        print(
            f"  {method:5} cache off {off:.1f}, first with the cache {cold:.1f}, "
            f"second {warm:.1f} ({warm / off:.2f} of off)",
            flush=True,
        )


if __name__ == "__main__":
    main()
