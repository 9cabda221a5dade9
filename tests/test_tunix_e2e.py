"""Real Tunix training end to end: API -> queue -> real qcluster worker -> supervisor ->
our launcher -> Tunix's PEFT trainer, on a tiny model the test generates."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runs import services, storage
from runs.models import LogChunk, Metric, RunStatus, TunixRun

from .conftest import REPO, SAMPLE, wait_for

pytestmark = [pytest.mark.tunix, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TRAIN = {
    "learning_rate": 0.003,
    "batch_size": 4,
    "max_seq_length": 256,
    "max_steps": 12,
    "eval_every_n_steps": 4,
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "seed": 7,
}


@pytest.fixture
def tiny_model(settings):
    """A real tiny Llama-3-style model and tokenizer, generated on the spot."""
    target = Path(settings.MODELS_DIR) / "tiny-llama3"
    subprocess.run(
        [sys.executable, "-m", "runs.launcher.tinymodel", str(target), "--data", str(SAMPLE)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return "local:tiny-llama3"


def finished(run_id, timeout=300):
    def done():
        run = TunixRun.objects.get(id=run_id)
        return run if run.is_final else None

    return wait_for(done, timeout=timeout, interval=0.5, message=f"run {run_id} to finish")


def log_text(run):
    return "".join(LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True))


def losses(run):
    return list(
        Metric.objects.filter(run=run, name="train/loss")
        .order_by("step")
        .values_list("step", "value")
    )


def test_a_local_run_trains_with_real_tunix_through_the_api(
    api, dataset, tiny_model, start_cluster, settings
):
    start_cluster(workers=1)
    response = api.post(
        "/api/tunix/run",
        {"dataset_key": dataset.key, "model_id": tiny_model, "dry_run": False, **TRAIN},
    )
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    run = finished(response.json()["id"])
    text = log_text(run)
    assert run.status == RunStatus.COMPLETED, f"{run.message}\n{text[-3000:]}"
    assert run.exit_code == 0
    points = losses(run)
    assert len(points) >= 5
    steps = [s for s, _ in points]
    assert steps == sorted(set(steps))
    assert points[-1][1] < points[0][1], points
    assert Metric.objects.filter(run=run, name="eval/loss").exists()
    checkpoints = storage.run_checkpoints(run)
    assert any(c["complete"] and c["step"] == 12 for c in checkpoints), checkpoints
    # Tunix's own logging reached the log, not only our events.
    assert "Train step" in text or "tunix" in text.lower()
    assert (run.progress_step, run.progress_total) == (12, 12)
    # What reproduces it: versions, device and the exact config file that was executed.
    assert run.environment["tunix_version"] == "0.1.7"
    assert run.environment["jax_version"]
    assert run.environment["device_kind"]
    out = Path(settings.ARTIFACTS_DIR) / run.output_dir
    assert json.loads((out / "tunix_config.json").read_text()) == run.config
    assert run.config["dataset"]["sha256"] == dataset.sha256


def test_a_broken_model_path_fails_with_the_launchers_reason(
    dataset, tiny_model, start_cluster, settings, run_factory
):
    # The model folder exists (so the reference parses) but its weights are gone.
    folder = Path(settings.MODELS_DIR) / "tiny-llama3"
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    start_cluster(workers=1)
    run = run_factory(mode="local", model_id=tiny_model, **TRAIN)
    run = finished(run.id, timeout=120)
    assert run.status == RunStatus.FAILED
    assert run.exit_code == 2
    assert "safetensors" in run.message, run.message
    assert "\n" not in run.message


def test_resume_continues_from_the_parents_last_checkpoint(
    dataset, tiny_model, start_cluster, user, run_factory, tmp_path
):
    # A compilation cache of its own: the parent fills it, the child (same shapes) reads it.
    cache = tmp_path / "compile-cache"
    start_cluster(workers=1, TUNIXRT_COMPILE_CACHE_DIR=str(cache))
    parent = finished(run_factory(mode="local", model_id=tiny_model, **TRAIN).id)
    assert parent.status == RunStatus.COMPLETED, parent.message
    assert cache.is_dir() and len(list(cache.iterdir())) > 10
    child = services.run_resume(run=parent, owner=user, max_steps=20)
    assert child.parent_id == parent.id and child.resume_from_step == 12
    child = finished(child.id)
    assert child.status == RunStatus.COMPLETED, child.message
    steps = [s for s, _ in losses(child)]
    assert steps and min(steps) > 12 and max(steps) == 20
    # The first evaluation after the resume runs (at the resume step), not an empty one.
    assert "No eval examples found" not in log_text(child)
    eval_steps = Metric.objects.filter(run=child, name="eval/loss").values_list("step", flat=True)
    assert 12 in eval_steps, list(eval_steps)
    assert any(c["complete"] and c["step"] == 20 for c in storage.run_checkpoints(child))
