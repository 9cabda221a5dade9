"""Using a trained run, end to end with real Tunix and a real worker: a completed run is
evaluated by generation on its own (fine-tuned vs base, scores and rows), and exported as a
Hugging Face folder under the models folder; deleting the run deletes its jobs."""

from pathlib import Path

import pytest

from runs.models import EvaluationRow, RunKind, RunStatus, TunixRun

from .conftest import wait_for
from .test_tunix_e2e import TRAIN, finished, log_text, tiny_model  # noqa: F401 - a fixture

pytestmark = [pytest.mark.tunix, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_completed_run_is_evaluated_and_exported(
    api,
    dataset,
    tiny_model,  # noqa: F811 - the fixture imported above
    start_cluster,
    settings,
):
    start_cluster(workers=1)
    response = api.post(
        "/api/tunix/run",
        {
            "dataset_key": dataset.key,
            "model_id": tiny_model,
            "dry_run": False,
            "evaluate_after": True,
            **TRAIN,
        },
    )
    assert response.status_code == 202, response.content
    run = finished(response.json()["id"])
    assert run.status == RunStatus.COMPLETED, run.message

    # Evaluated after completion, by default, as a run of its own kind.
    evaluation = wait_for(
        lambda: TunixRun.objects.filter(source=run, kind=RunKind.EVALUATE).first(),
        timeout=30,
        message="the evaluation to be queued",
    )
    evaluation = finished(evaluation.id, timeout=400)
    assert evaluation.status == RunStatus.COMPLETED, log_text(evaluation)[-3000:]
    assert api.get("/api/tunix/runs").json()["count"] == 1  # jobs are not in the run list
    detail = wait_for(
        lambda: (d := api.get(f"/api/tunix/evaluations/{evaluation.id}").json())["rows"] and d,
        timeout=30,
        message="the evaluation rows",
    )
    assert set(detail["scores"]) == {"tuned", "base"}
    assert "answer_match" in detail["scores"]["tuned"]  # the sample is reasoning traces
    assert len(detail["rows"]) == EvaluationRow.objects.filter(evaluation=evaluation).count()
    row = detail["rows"][0]
    assert row["prompt"] and row["reference"] and row["change"]
    assert detail["run"]["config"]["generation"]["temperature"] == 0.0  # saved with it
    worse = api.get(f"/api/tunix/evaluations/{evaluation.id}?change=worse").json()["rows"]
    assert all(r["change"] == "worse" for r in worse)

    response = api.post(f"/api/tunix/runs/{run.id}/exports", {"name": "tiny-exported"})
    assert response.status_code == 201, response.content
    export = finished(response.json()["id"], timeout=300)
    assert export.status == RunStatus.COMPLETED, log_text(export)[-3000:]
    folder = Path(settings.MODELS_DIR) / "tiny-exported"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert dataset.key in card and dataset.sha256 in card and "answer_match" in card
    taken = api.post(f"/api/tunix/runs/{run.id}/exports", {"name": "tiny-exported"})
    assert taken.status_code == 422

    assert api.delete(f"/api/tunix/runs/{run.id}").status_code == 200
    assert not TunixRun.objects.filter(id__in=[evaluation.id, export.id]).exists()
    assert folder.is_dir()  # the exported model stays
