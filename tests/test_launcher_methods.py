"""DPO, ORPO and GRPO through the real launcher, as the supervisor runs it (a subprocess on
a tiny generated Llama-3-style model). Rows are rendered by the web side's own rendering,
and the config is built by the web side's own config builder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runs import hyperparameters, training
from runs.datasets.rendering import render_row
from tests.test_launcher import child_env, launch, of_kind

SAMPLES = Path(__file__).resolve().parents[1] / "runs" / "sample_data"


def render(source: Path, fmt: str, method: str, target: Path, limit: int = 48) -> Path:
    with source.open() as rows, target.open("w") as out:
        for n, line in enumerate(rows):
            if n >= limit:
                break
            out.write(json.dumps(render_row(json.loads(line), fmt, "llama3", method=method)) + "\n")
    return target


def config_for(run_dir: Path, model_dir: Path, data: Path, base_run=None, resume=None, **hp):
    clean, errors = hyperparameters.validate_hyperparameters(
        {
            "learning_rate": 0.003,
            "batch_size": 4,
            "max_seq_length": 128,
            "max_steps": 4,
            "eval_every_n_steps": 2,
            "lora_rank": 4,
            **hp,
        }
    )
    assert not errors, errors
    config = training.build_config(
        run_id=run_dir.name,
        model=training.ModelRef("local:tiny", "local", "llama3", str(model_dir)),
        dataset_key="test",
        dataset_sha256="",
        output_path=run_dir,
        hyperparameters=clean,
        resume_checkpoint_dir=resume,
        base_run=base_run,
    )
    config["dataset"]["path"] = str(data)
    return config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods")


@pytest.fixture(scope="module")
def tiny_model(workspace) -> Path:
    model_dir = workspace / "tiny-llama3"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runs.launcher.tinymodel",
            str(model_dir),
            "--data",
            str(SAMPLES / "reasoning-sample.jsonl"),
        ],
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return model_dir


def metric_names(events) -> set[str]:
    return {e["name"] for e in of_kind(events, "metric")}


@pytest.mark.tunix
@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_preference_run_completes_with_its_metrics(workspace, tiny_model, method):
    data = render(
        SAMPLES / "preference-sample.jsonl", "preference", method, workspace / f"{method}.jsonl"
    )
    run_dir = workspace / method
    code, events, stderr = launch(run_dir, config_for(run_dir, tiny_model, data, method=method))
    assert code == 0, stderr[-3000:]
    names = metric_names(events)
    for name in (
        "train/loss",
        "train/rewards/chosen",
        "train/rewards/rejected",
        "train/rewards/margin",
        "train/rewards/accuracy",
        "eval/loss",
    ):
        assert name in names, (name, sorted(names))
    if method == "orpo":
        assert "train/odds_ratio" in names
    summary = of_kind(events, "summary")[0]
    assert summary["method"] == method and summary["steps"] == 4
    assert of_kind(events, "checkpoint")


@pytest.mark.tunix
# long: one chain (SFT, GRPO on its result, that GRPO run continued) keeps the lane short.
def test_grpo_from_an_sft_result_completes_with_rewards_kl_and_samples_and_continues(
    workspace, tiny_model
):
    """SFT first, then GRPO (2 generations, a few steps, short completions) starting from
    the SFT run's result: its LoRA is merged into the base before GRPO adds its own. Then
    the GRPO run is continued from its checkpoint (in checkpoints/actor) to one more step."""
    sft_data = render(
        SAMPLES / "reasoning-sample.jsonl", "reasoning", "sft", workspace / "sft.jsonl"
    )
    sft_dir = workspace / "sft"
    code, _, stderr = launch(sft_dir, config_for(sft_dir, tiny_model, sft_data, max_steps=2))
    assert code == 0, stderr[-3000:]

    data = render(
        SAMPLES / "reasoning-sample.jsonl", "reasoning", "grpo", workspace / "grpo.jsonl", limit=24
    )
    run_dir = workspace / "grpo"
    sft_config = json.loads((sft_dir / "config.json").read_text())
    base_run = {
        "output_dir": str(sft_dir),
        "checkpoint_dir": str(sft_dir / "checkpoints"),
        "lora": sft_config["lora"],
    }
    settings = {
        "method": "grpo",
        "batch_size": 2,
        "max_new_tokens": 8,
        "reward_answer_format": 0.5,
        "reward_length_penalty": 0.1,
        "length_target": 10,
    }
    config = config_for(run_dir, tiny_model, data, base_run=base_run, max_steps=3, **settings)
    code, events, stderr = launch(run_dir, config)
    assert code == 0, stderr[-3000:]
    assert "merged" in stderr and "LoRA weights of the base run" in stderr
    names = metric_names(events)
    for name in (
        "train/loss",
        "train/kl",
        "train/rewards/answer_match",
        "train/rewards/answer_format",
        "train/rewards/length_penalty",
        "train/rewards/answer_match_std",
        "train/completions/mean_length",
    ):
        assert name in names, (name, sorted(names))
    penalties = [e["value"] for e in of_kind(events, "metric", name="train/rewards/length_penalty")]
    assert all(-0.1 <= v <= 0 for v in penalties)
    samples = of_kind(events, "sample")
    assert samples and set(samples[0]["rewards"]) == {
        "answer_match",
        "answer_format",
        "length_penalty",
    }
    assert isinstance(samples[0]["completion"], str) and samples[0]["answer"]
    summary = of_kind(events, "summary")[0]
    assert summary["method"] == "grpo" and summary["steps"] == 3
    assert of_kind(events, "checkpoint")
    assert summary["checkpoint_step"] == 3
    assert (run_dir / "checkpoints" / "actor" / "3" / "commit_success.txt").is_file()

    # Continue it as run_resume does: the same settings, more steps, the parent's checkpoints.
    continued_dir = workspace / "grpo-continued"
    config = config_for(
        continued_dir,
        tiny_model,
        data,
        base_run=base_run,
        resume=str(run_dir / "checkpoints"),
        max_steps=4,
        **settings,
    )
    code, events, stderr = launch(continued_dir, config)
    assert code == 0, stderr[-3000:]
    resumed = of_kind(events, "resumed")
    assert resumed and resumed[0]["from_step"] == 3 and resumed[0]["to_step"] == 4
    trained = {e["step"] for e in of_kind(events, "metric", name="train/loss")}
    assert trained == {4}, trained
    summary = of_kind(events, "summary")[0]
    assert summary["checkpoint_step"] == 4
    assert (continued_dir / "checkpoints" / "actor" / "4" / "commit_success.txt").is_file()


@pytest.mark.tunix
def test_a_preference_evaluation_scores_both_models_by_log_likelihood(workspace, tiny_model):
    data = render(
        SAMPLES / "preference-sample.jsonl", "preference", "dpo", workspace / "pref-eval.jsonl"
    )
    run_dir = workspace / "dpo-for-eval"
    config = config_for(run_dir, tiny_model, data, method="dpo", max_steps=2)
    code, _, stderr = launch(run_dir, config)
    assert code == 0, stderr[-3000:]
    job_dir = workspace / "pref-evaluation"
    job_dir.mkdir()
    job = {
        "schema": 1,
        "source": {
            "model_dir": str(tiny_model),
            "family": "llama3",
            "checkpoint_dir": config["output"]["checkpoint_dir"],
            "lora": config["lora"],
        },
        "dataset": {"path": str(data), "format": "preference", "eval_fraction": 0.1, "seed": 0},
        "generation": {"max_rows": 50, "batch_size": 4},
        "output": {"dir": str(job_dir), "rows": str(job_dir / "rows.jsonl")},
    }
    (job_dir / "config.json").write_text(json.dumps(job))
    done = subprocess.run(
        [sys.executable, "-m", "runs.launcher.evaluate", str(job_dir / "config.json")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    summary = of_kind(events, "summary")[0]
    assert summary["headline"] == "preference_accuracy" and summary["rows"] == 5  # 10% of 48
    for which in ("tuned", "base"):
        assert 0.0 <= summary["scores"][which]["preference_accuracy"] <= 1.0
        assert f"generation/{which}/preference_accuracy" in metric_names(events)
    rows = [json.loads(line) for line in (job_dir / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    share = sum(r["tuned_scores"]["preference_accuracy"] for r in rows) / len(rows)
    assert share == summary["scores"]["tuned"]["preference_accuracy"]
    held_out = [json.loads(line) for line in data.read_text().splitlines()]
    first = next(r for r in held_out if r["prompt"] == rows[0]["prompt"])
    assert rows[0]["reference"] == first["chosen"].removesuffix("<|eot_id|>")
    assert (
        rows[0]["tuned_output"].startswith("chosen -")
        and " - rejected -" in rows[0]["tuned_output"]
    )
    assert rows[0]["tuned_output"] != rows[0]["base_output"]  # training moved the logps
