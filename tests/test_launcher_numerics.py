"""Every family trains correctly in the dtypes real checkpoints ship in: tiny models stored
in bf16 and in fp32, LoRA on, run through the real launcher. No NaN, every LoRA array
changes at every step (read back from the per-step checkpoints), the loss falls. The Llama
carries Llama 3.2's rope_scaling, which the launcher implements (tests/test_training_
semantics.py checks its frequencies). One test per family keeps the lane short."""

import json
import math
import subprocess
import sys

import pytest

from .test_launcher import child_env, launch, make_config, of_kind

STEPS = 5
CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"I have {a} apples and get {b} more. How many?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."},
        ]
    }
    for a in range(1, 9)
    for b in range(1, 6)
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    path = tmp_path_factory.mktemp("numerics")
    data = path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CHAT_ROWS))
    return path


def tiny_model(workspace, family: str, dtype: str):
    model_dir = workspace / f"{family}-{dtype}"
    extra = ["--rope-scaling", "llama3"] if family == "llama3" else []
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(model_dir)]
        + ["--data", str(workspace / "train.jsonl"), "--family", family, "--dtype", dtype]
        + extra,
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return model_dir


def lora_arrays(checkpoint):
    import numpy as np
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(str(checkpoint / "model_params"))
    leaves = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif hasattr(node, "shape"):
            leaves.append((path, np.asarray(node, dtype=np.float32)))

    walk(tree, "")
    return dict(leaves)


@pytest.mark.tunix
@pytest.mark.parametrize("family", ["llama3", "gemma2", "gemma3", "qwen2", "qwen3"])
def test_a_tiny_model_trains_in_bf16_and_fp32_with_lora_changing_every_step(workspace, family):
    # bf16 is what real checkpoints ship and what broke; fp32 is checked on one family
    # (the launcher's precision code does not branch by family), to keep the lane short.
    cases = [("bfloat16", "bf16")] + ([("float32", "fp32")] if family == "llama3" else [])
    for dtype, compute in cases:
        model_dir = tiny_model(workspace, family, dtype)
        run_dir = workspace / f"run-{family}-{dtype}"
        config = make_config(
            run_dir,
            model_dir,
            workspace / "train.jsonl",
            max_steps=STEPS,
            eval_every_n_steps=STEPS,
            checkpoint_every_n_steps=1,
            max_checkpoints_to_keep=STEPS,
            compute_dtype=compute,
            max_seq_length=64,
            learning_rate=0.01,
        )
        config["model"]["family"] = family
        code, events, stderr = launch(run_dir, config)
        assert code == 0, f"{family} {dtype}: {stderr[-3000:]}"

        losses = [m["value"] for m in of_kind(events, "metric", name="train/loss")]
        assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0], f"{family} {dtype}: loss did not fall: {losses}"
        assert of_kind(events, "metric", name="train/learning_rate")
        assert of_kind(events, "metric", name="eval/loss")
        env = {k: v for e in of_kind(events, "environment") for k, v in e.items()}
        assert env["trained_weights"] == "float32"
        assert env["base_weights"] == ("bfloat16" if compute == "bf16" else "float32")
        if family == "llama3":
            assert env["rope"] == "theta 500000, scaling llama3"

        # Every LoRA array moves at every step from step 2 on (B is zero before step 1,
        # so A's first gradient is zero), and most of its entries move.
        snapshots = [lora_arrays(run_dir / "checkpoints" / str(s)) for s in range(1, STEPS + 1)]
        assert snapshots[0], "no LoRA arrays in the checkpoint"
        for before, after in zip(snapshots, snapshots[1:], strict=False):
            for name, value in before.items():
                changed = float((value != after[name]).mean())
                assert changed > 0.9, f"{family} {dtype} {name}: only {changed:.0%} changed"


@pytest.mark.tunix
def test_eval_loss_is_the_same_for_eval_batch_sizes_1_2_and_7(workspace):
    """The per-token mean over the whole split does not depend on how it is batched."""
    from runs.launcher.config import load_config
    from runs.launcher.data import make_batches
    from runs.launcher.evaluation import evaluate
    from runs.launcher.train import build_mesh, load_model, prepare

    model_dir = tiny_model(workspace, "qwen2", "float32")
    run_dir = workspace / "eval-batches"
    run_dir.mkdir()
    config = make_config(run_dir, model_dir, workspace / "train.jsonl", max_seq_length=64)
    config["model"]["family"] = "qwen2"
    config["dataset"]["eval_fraction"] = 0.3
    (run_dir / "config.json").write_text(json.dumps(config))
    config = load_config(str(run_dir / "config.json"))
    prep = prepare(config)
    examples = prep.eval_examples
    assert len(examples) == 12
    order = list(range(len(examples)))
    mesh = build_mesh()
    with mesh:
        model = load_model(config, prep, mesh)
        results = [
            evaluate(model, list(make_batches(examples, size, prep.seq_len, order)))
            for size in (1, 2, 7)
        ]
    losses = [loss for loss, _ in results]
    assert len({tokens for _, tokens in results}) == 1
    assert max(losses) - min(losses) < 1e-5, losses
