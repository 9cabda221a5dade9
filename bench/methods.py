"""Each method (sft, dpo, orpo, grpo) on the tiny generated model: steps per second, from
the launcher's own metric lines (the first step, which compiles, is left out). Then GRPO
through tunix-rt (service -> queue -> worker -> supervisor -> launcher) against the launcher
run directly on the very config and data tunix-rt executed (target: within 5% plus the queue
latency).

Usage: python bench/methods.py [--steps 6] [--repeat 2] [--methods sft,dpo,orpo,grpo]
"""

import argparse
import json

from _common import setup_django
from _overhead import SAMPLES, compare, launch, make_tiny_model

COMMON = {"learning_rate": 0.003, "batch_size": 4, "max_seq_length": 128, "lora_rank": 4}
# Short completions and 2 generations keep GRPO's sampling to a tiny model's size.
GRPO = {"batch_size": 2, "num_generations": 2, "max_new_tokens": 8}


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


def grpo_overhead(args) -> None:
    from runs.datasets import services as dataset_services

    with open(SAMPLES / "reasoning-sample.jsonl", "rb") as handle:
        dataset_services.dataset_import(source=handle, name="sample", version="v1")
    hp = {**COMMON, **GRPO, "method": "grpo", "max_steps": args.steps}
    compare(f"GRPO, {args.steps} steps", hp, args.repeat)


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
    make_tiny_model(model_dir)
    each_method(args, model_dir, data / "bench-methods")
    if not args.skip_overhead:
        grpo_overhead(args)


if __name__ == "__main__":
    main()
