"""The Tunix launcher, run for real as the supervisor runs it: a subprocess.

Each test trains (or fails to train) a tiny random Llama-3-style model made by
runs.launcher.tinymodel; nothing is mocked and no Django is involved. The conftest skips
tests marked `tunix` where google-tunix is not installed.
"""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from runs import training

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 240


def write_rows(path: Path, count: int, seed: int = 0) -> Path:
    """Write `count` addition word problems, rendered with the Llama 3 chat template."""
    rng = random.Random(seed)
    things = ["apples", "pears", "coins", "books", "stones", "cards"]
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            a, b, thing = rng.randint(1, 20), rng.randint(1, 20), rng.choice(things)
            prompt = (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                f"I have {a} {thing} and get {b} more. How many {thing}?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            )
            completion = f"{a} + {b} = {a + b}. The answer is {a + b} {thing}.<|eot_id|>"
            handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return path


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env.update(training.compile_cache_environment())
    return env


def make_config(run_dir: Path, model_dir: Path, data: Path, **training) -> dict:
    return {
        "schema": 1,
        "run_id": run_dir.name,
        "model": {
            "family": "llama3",
            "source": "local",
            "path": str(model_dir),
            "model_id": "local:tiny-llama3",
        },
        "dataset": {"path": str(data), "key": "test", "sha256": "", "eval_fraction": 0.1},
        "training": {
            "learning_rate": 0.003,
            "num_epochs": 1,
            "batch_size": 4,
            "max_seq_length": 128,
            "max_steps": 10,
            "eval_every_n_steps": 5,
            "seed": 42,
            "weight_decay": 0.0,
            "gradient_accumulation_steps": 1,
            "checkpoint_every_n_steps": 5,
            **training,
        },
        "lora": {"enabled": True, "rank": 8, "alpha": 16.0, "module_path": None},
        "output": {
            "dir": str(run_dir),
            "checkpoint_dir": str(run_dir / "checkpoints"),
            "tensorboard_dir": str(run_dir / "tensorboard"),
        },
        "resume": {"checkpoint_dir": None},
    }


def launch(run_dir: Path, config: dict) -> tuple[int, list[dict], str]:
    """Run the launcher on `config` in `run_dir`; return (exit code, events, stderr)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "runs.launcher", "config.json"],
        cwd=run_dir,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    lines = done.stdout.splitlines()
    assert lines, f"no events; stderr:\n{done.stderr[-3000:]}"
    events = [json.loads(line) for line in lines]
    assert all("event" in event for event in events)
    return done.returncode, events, done.stderr


def of_kind(events: list[dict], kind: str, **match) -> list[dict]:
    return [
        e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launcher")


@pytest.fixture(scope="module")
def train_data(workspace) -> Path:
    return write_rows(workspace / "train.jsonl", 160)


@pytest.fixture(scope="module")
def tiny_model(workspace, train_data) -> Path:
    model_dir = workspace / "tiny-llama3"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runs.launcher.tinymodel",
            str(model_dir),
            "--data",
            str(train_data),
        ],
        cwd=workspace,
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return model_dir


@pytest.fixture(scope="module")
def ten_step_run(workspace, tiny_model, train_data):
    """One real 10-step LoRA run, shared: the resume test continues from it."""
    run_dir = workspace / "ten-steps"
    code, events, stderr = launch(run_dir, make_config(run_dir, tiny_model, train_data))
    return run_dir, code, events, stderr


@pytest.mark.tunix
def test_a_tiny_llama_trains_and_reports_metrics_checkpoints_and_a_summary(ten_step_run):
    run_dir, code, events, stderr = ten_step_run
    assert code == 0, stderr[-3000:]

    environment = of_kind(events, "environment")
    assert environment and environment[0]["tunix_version"]
    assert environment[0]["device_count"] >= 1

    losses = of_kind(events, "metric", name="train/loss")
    steps = [m["step"] for m in losses]
    assert len(losses) >= 5
    assert steps == sorted(set(steps)), "train/loss steps must strictly increase"
    assert losses[-1]["value"] < losses[0]["value"]
    assert all(math.isfinite(m["value"]) for m in of_kind(events, "metric"))
    assert of_kind(events, "metric", name="eval/loss")
    assert of_kind(events, "progress")[-1] == {"event": "progress", "step": 10, "total_steps": 10}

    checkpoints = of_kind(events, "checkpoint")
    assert checkpoints
    for checkpoint in checkpoints:
        assert (run_dir / checkpoint["path"] / "commit_success.txt").is_file()
    assert (run_dir / "checkpoints" / "10" / "commit_success.txt").is_file()

    phases = [e["phase"] for e in of_kind(events, "phase")]
    assert phases[0] == "starting" and phases[-1] == "done"
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["steps"] == 10
    assert summary["checkpoint_step"] == 10
    assert summary["final_loss"] < summary["first_loss"]


@pytest.mark.tunix
def test_a_missing_model_path_exits_with_code_2_and_names_the_path(workspace, train_data):
    run_dir = workspace / "no-model"
    missing = workspace / "no-such-model"
    code, events, _ = launch(run_dir, make_config(run_dir, missing, train_data))
    assert code == 2
    assert events[-1]["event"] == "error"
    assert str(missing) in events[-1]["message"]


@pytest.mark.tunix
def test_an_empty_dataset_exits_with_code_2_before_loading_the_model(workspace, tiny_model):
    run_dir = workspace / "empty-data"
    empty = workspace / "empty.jsonl"
    empty.write_text("")
    code, events, _ = launch(run_dir, make_config(run_dir, tiny_model, empty))
    assert code == 2
    assert events[-1]["event"] == "error"
    assert "no rows" in events[-1]["message"]
    assert not of_kind(events, "environment"), "bad data must fail before JAX is imported"


@pytest.mark.tunix
def test_a_resumed_run_continues_counting_steps_from_the_parent_checkpoint(
    workspace, tiny_model, train_data, ten_step_run
):
    parent_dir, parent_code, _, _ = ten_step_run
    assert parent_code == 0
    run_dir = workspace / "resumed"
    config = make_config(run_dir, tiny_model, train_data, max_steps=20)
    config["resume"]["checkpoint_dir"] = str(parent_dir / "checkpoints")

    code, events, stderr = launch(run_dir, config)

    assert code == 0, stderr[-3000:]
    [resumed] = of_kind(events, "resumed")
    assert resumed["from_step"] == 10 and resumed["to_step"] == 20 and resumed["steps"] == 10
    progress = of_kind(events, "progress")
    metrics = of_kind(events, "metric")
    assert progress[0]["step"] > 10
    assert min(m["step"] for m in metrics if m["name"].startswith("train/")) > 10
    # The resumed weights are evaluated first, so the run's eval curve starts at step 10.
    assert min(m["step"] for m in metrics if m["name"] == "eval/loss") == 10
    assert progress[-1]["step"] == 20
    assert events[-1]["event"] == "summary" and events[-1]["steps"] == 20
    assert (run_dir / "checkpoints" / "20" / "commit_success.txt").is_file()
    # The parent's checkpoints were copied from, never written to.
    assert sorted(p.name for p in (parent_dir / "checkpoints").iterdir()) == ["10", "5"]
