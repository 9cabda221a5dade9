"""Export, run for real on the tiny model of every family: train a few LoRA steps, export the
run as a Hugging Face folder, check the folder's logits against the trained weights, and train
a new run from the exported folder. Launcher level: subprocesses, no Django."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runs import protocol
from tests.test_launcher import REPO_ROOT, child_env, launch, make_config, of_kind, write_rows

pytestmark = pytest.mark.tunix


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def train_data(workspace) -> Path:
    return write_rows(workspace / "train.jsonl", 48)


def tiny_model(workspace: Path, data: Path, family: str) -> Path:
    model_dir = workspace / f"tiny-{family}"
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(model_dir), "--data", str(data)]
        + ["--family", family],
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return model_dir


def run_config(run_dir: Path, model_dir: Path, data: Path, family: str, steps: int) -> dict:
    config = make_config(run_dir, model_dir, data, max_steps=steps, eval_every_n_steps=steps)
    config["model"]["family"] = family
    config["training"]["checkpoint_every_n_steps"] = steps
    return config


def export_job(workspace: Path, run_dir: Path, config: dict, family: str) -> Path:
    job = {
        "schema": protocol.SCHEMA_VERSION,
        "source": {
            "model_dir": config["model"]["path"],
            "family": family,
            "checkpoint_dir": str(run_dir / "checkpoints"),
            "lora": config["lora"],
        },
        "export": {
            "dir": str(workspace / f"exported-{family}"),
            "name": f"exported-{family}",
            "card": {"base_model": f"local:tiny-{family}", "dataset_key": "adds-1"},
        },
    }
    path = workspace / f"export-{family}.json"
    path.write_text(json.dumps(job))
    return path


@pytest.mark.parametrize("family", protocol.FAMILIES)
def test_an_exported_run_gives_the_trained_logits_and_trains_again(workspace, train_data, family):
    model_dir = tiny_model(workspace, train_data, family)
    run_dir = workspace / f"run-{family}"
    config = run_config(run_dir, model_dir, train_data, family, steps=4)
    code, _, stderr = launch(run_dir, config)
    assert code == 0, stderr[-3000:]

    job = export_job(workspace, run_dir, config, family)
    done = subprocess.run(
        [sys.executable, "-m", "runs.launcher.export", str(job)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["event"] == "summary" and summary["merged_lora"] > 0
    folder = Path(summary["export_dir"])
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "adds-1" in (folder / "README.md").read_text()

    probe = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "logits_probe.py"), str(job), str(folder)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    diff = json.loads(probe.stdout.splitlines()[-1])
    assert diff["exported"] < 1e-4, diff
    assert diff["base"] > 1e-3, diff  # training moved the weights: the check can fail

    again_dir = workspace / f"again-{family}"
    code, events, stderr = launch(again_dir, run_config(again_dir, folder, train_data, family, 2))
    assert code == 0, stderr[-3000:]
    assert of_kind(events, "summary")[0]["steps"] == 2
