"""The playground end to end with real Tunix and a real worker: a prompt to a completed run is
answered by the fine-tuned and the base model through the host's generation server; the second
prompt finds the models loaded; prompts are listed, kept per run and deleted with it."""

import time

import pytest

from runs.models import PlaygroundPrompt, RunStatus

from .test_tunix_e2e import TRAIN, finished, log_text, tiny_model  # noqa: F401 - a fixture

pytestmark = [pytest.mark.tunix, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_prompt_is_answered_by_the_fine_tuned_and_the_base_model(
    api,
    dataset,
    tiny_model,  # noqa: F811 - the fixture imported above
    start_cluster,
):
    start_cluster(workers=1, TUNIXRT_QUEUE_POLL_SECONDS="0.05")
    response = api.post(
        "/api/tunix/run",
        {"dataset_key": dataset.key, "model_id": tiny_model, "dry_run": False, **TRAIN},
    )
    run = finished(response.json()["id"])
    assert run.status == RunStatus.COMPLETED, log_text(run)[-3000:]

    first = api.post(
        f"/api/tunix/runs/{run.id}/prompts?wait=60", {"prompt": "What is 2 + 3?"}
    ).json()
    if first["status"] == "pending":  # loading and compiling on a busy machine
        first = api.get(f"/api/tunix/prompts/{first['id']}?wait=60").json()
    assert first["status"] == "done", first
    assert first["cold"] is True  # loaded both models and compiled
    assert first["tuned_output"] and first["base_output"]
    assert "What is 2 + 3?" in first["rendered_prompt"]
    assert first["rendered_prompt"].startswith("<|begin_of_text|>")  # the Llama 3 template
    assert first["generation"]["temperature"] == 0.0 and first["owner"]

    started = time.monotonic()
    second = api.post(
        f"/api/tunix/runs/{run.id}/prompts?wait=30", {"prompt": "What is 2 + 4?", "seed": 1}
    ).json()
    elapsed = time.monotonic() - started
    assert second["status"] == "done" and second["cold"] is False, second
    print(f"playground: first {first['seconds']} s on the worker, second {elapsed:.2f} s in all")

    listed = api.get(f"/api/tunix/runs/{run.id}/prompts").json()
    assert [p["id"] for p in listed] == [second["id"], first["id"]]
    assert api.delete(f"/api/tunix/runs/{run.id}").status_code in (200, 204)
    assert not PlaygroundPrompt.objects.exists()
