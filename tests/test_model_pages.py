"""The run page's use of a trained run without Tunix: the evaluation card (scores fine-tuned vs
base, rows with the better/worse/still-wrong filters, escaped), "Evaluate" with settings,
"Export" with its status and a .tar.gz of the exported folder, compare with scores, and the
"evaluate after training" setting of the run form."""

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from django.test import Client

from runs import services, storage
from runs.models import Metric, PlaygroundPrompt, RunKind, RunStatus, TunixRun

from .test_run_page import finished_run, write_checkpoint
from .test_views import form_data

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def trained(run_factory):
    run = finished_run(run_factory)
    write_checkpoint(storage.run_output_path(run), 4)
    return run


ROWS = [
    ("What is 2+2?", "4", "5", "4"),  # better
    ("Capital of France?", "Paris", "Paris", "Lyon"),  # worse
    ("<script>alert(1)</script>", "x", "y", "z"),  # still wrong, and hostile
]


def completed_evaluation(run, user):
    """An evaluation as the worker leaves it: the rows file, the score metrics, completed."""
    job = services.evaluation_create(run=run, owner=user, generation={"max_rows": 3})
    folder = storage.run_output_path(job)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / services.jobs.ROWS_FILENAME).open("w") as handle:
        for index, (prompt, reference, base, tuned) in enumerate(ROWS):
            record = {
                "index": index,
                "prompt": prompt,
                "reference": reference,
                "base_output": base,
                "tuned_output": tuned,
                "base_scores": {"exact_match": float(base == reference)},
                "tuned_scores": {"exact_match": float(tuned == reference)},
            }
            handle.write(json.dumps(record) + "\n")
    Metric.objects.create(run=job, name="generation/tuned/exact_match", step=0, value=1 / 3)
    Metric.objects.create(run=job, name="generation/base/exact_match", step=0, value=1 / 3)
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    assert services.evaluation_store_rows(job=job) == 3
    return job


def test_the_run_page_shows_scores_and_rows_with_filters(client, trained, user):
    job = completed_evaluation(trained, user)
    page = client.get(f"/runs/{trained.id}/").content.decode()
    assert 'id="evaluation-scores"' in page and "exact_match" in page
    assert f'href="/runs/{job.id}/"' in page  # the evaluation's own run page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "Got better (1)" in page and "Got worse (1)" in page and "Still wrong (1)" in page

    better = client.get(f"/runs/{trained.id}/evaluation/?change=better", headers=HTMX)
    body = better.content.decode()
    assert better.status_code == 200 and body.startswith('\n<section id="evaluation"')
    assert "What is 2+2?" in body and "Capital of France?" not in body
    worse = client.get(f"/runs/{trained.id}/evaluation/?change=worse", headers=HTMX)
    assert "Capital of France?" in worse.content.decode()
    assert "What is 2+2?" not in worse.content.decode()


def test_evaluate_button_queues_with_the_settings(client, trained):
    response = client.post(
        f"/runs/{trained.id}/evaluate/",
        {"dataset_key": trained.dataset_key, "max_rows": "7", "temperature": "0.5", "seed": "3"},
    )
    assert response.status_code == 302
    job = TunixRun.objects.get(source=trained, kind=RunKind.EVALUATE)
    assert job.config["generation"]["max_rows"] == 7
    assert job.config["generation"]["temperature"] == 0.5
    assert job.config["dataset"]["eval_fraction"] > 0  # its own held-out rows
    page = client.get(f"/runs/{trained.id}/").content.decode()
    assert "Evaluation " in page and 'id="evaluation"' in page and "hx-trigger" in page

    bad = client.post(f"/runs/{trained.id}/evaluate/", {"max_rows": "0"}, follow=True)
    assert "max rows: Must be between 1 and 1000" in bad.content.decode()
    assert TunixRun.objects.filter(source=trained, kind=RunKind.EVALUATE).count() == 1


def test_export_button_status_and_download(client, trained, settings):
    response = client.post(f"/runs/{trained.id}/export/", {"name": "my-model"})
    assert response.status_code == 302
    job = TunixRun.objects.get(source=trained, kind=RunKind.EXPORT)
    panel = client.get(f"/runs/{trained.id}/exports/", headers=HTMX)
    assert panel.status_code == 200 and "local:my-model" in panel.content.decode()
    # As the export launcher leaves it: a folder in the models folder, the job completed.
    folder = Path(settings.MODELS_DIR) / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 3000)
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    panel = client.get(f"/runs/{trained.id}/exports/", headers=HTMX)
    assert panel.status_code == 286  # polling stops
    url = f"/runs/{trained.id}/exports/{job.id}.tar.gz"
    assert url in panel.content.decode()
    download = client.get(url)
    assert download.status_code == 200 and download["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(b"".join(download.streaming_content))) as archive:
        assert sorted(archive.getnames()) == ["my-model/config.json", "my-model/model.safetensors"]
    taken = client.post(f"/runs/{trained.id}/export/", {"name": "my-model"}, follow=True)
    assert "local:my-model exists" in taken.content.decode()
    assert client.get(f"/runs/{trained.id}/exports/{trained.id}.tar.gz").status_code == 404


def test_compare_shows_evaluation_scores(client, trained, run_factory, user):
    completed_evaluation(trained, user)
    other = finished_run(run_factory)
    page = client.get(f"/runs/compare/?run={trained.id}&run={other.id}").content.decode()
    assert "evaluation.tuned.exact_match" in page and "evaluation.base.exact_match" in page


def test_the_run_form_has_evaluate_after(client, dataset, tiny_model_dir, settings):
    settings.EVALUATE_AFTER_RUN = True
    page = client.get("/runs/new/").content.decode()
    checkbox = re.search(r'<input type="checkbox" name="evaluate_after"[^>]*>', page).group(0)
    assert " checked" in checkbox
    data = form_data(dataset_key=dataset.key, model_id=tiny_model_dir)
    assert client.post("/runs/new/", data).status_code == 302
    assert TunixRun.objects.order_by("created_at").last().config["evaluate_after"] is False
    client.post("/runs/new/", {**data, "evaluate_after": "on"})
    assert TunixRun.objects.order_by("-created_at").first().config["evaluate_after"] is True


def test_playground_prompt_card_polls_until_answered_and_renders_the_template(client, trained):
    page = client.get(f"/runs/{trained.id}/").content.decode()
    assert 'id="playground-form"' in page
    rendered = client.post(
        f"/runs/{trained.id}/prompts/render/", {"prompt": "<b>Hi</b>"}, headers=HTMX
    ).content.decode()
    # The Llama 3 template (the tiny model has no template of its own), escaped.
    assert "&lt;|start_header_id|&gt;user" in rendered and "&lt;b&gt;Hi&lt;/b&gt;" in rendered

    card = client.post(
        f"/runs/{trained.id}/prompts/", {"prompt": "<b>Hi</b>", "max_new_tokens": "9"}, headers=HTMX
    )
    record = PlaygroundPrompt.objects.get()
    assert record.generation["max_new_tokens"] == 9 and record.owner is not None
    assert 'hx-trigger="every 400ms"' in card.content.decode()
    assert "loads both models and compiles" in card.content.decode()
    # A new prompt hides the rendered text of the one before (out of band); polls do not.
    assert (
        '<pre id="rendered-prompt" class="cell" hidden hx-swap-oob="true">' in card.content.decode()
    )
    poll = client.get(f"/runs/{trained.id}/prompts/{record.id}/", headers=HTMX)
    assert poll.status_code == 200 and "hx-swap-oob" not in poll.content.decode()
    PlaygroundPrompt.objects.filter(id=record.id).update(
        status="done", tuned_output="<i>tuned</i>", base_output="base", seconds=0.2
    )
    poll = client.get(f"/runs/{trained.id}/prompts/{record.id}/", headers=HTMX)
    body = poll.content.decode()
    assert (
        poll.status_code == 286 and "&lt;i&gt;tuned&lt;/i&gt;" in body and "hx-trigger" not in body
    )
    page = client.get(f"/runs/{trained.id}/").content.decode()
    assert 'id="playground-history"' in page and "&lt;i&gt;tuned&lt;/i&gt;" in page

    empty = client.post(f"/runs/{trained.id}/prompts/", {"prompt": " "}, headers=HTMX)
    assert "Write a prompt." in empty.content.decode()
    bad = client.post(f"/runs/{trained.id}/prompts/", {"prompt": "x", "top_p": "7"}, headers=HTMX)
    assert "top p: Must be between" in bad.content.decode()
    assert PlaygroundPrompt.objects.count() == 1


def test_playground_api_submit_list_wait_and_delete_with_the_run(api, trained, user):
    created = api.post(f"/api/tunix/runs/{trained.id}/prompts?wait=0.2", {"prompt": "Hello"})
    assert created.status_code == 202 and created.json()["status"] == "pending"
    prompt_id = created.json()["id"]
    PlaygroundPrompt.objects.filter(id=prompt_id).update(status="done", tuned_output="a")
    detail = api.get(f"/api/tunix/prompts/{prompt_id}?wait=5").json()
    assert detail["status"] == "done" and detail["tuned_output"] == "a"
    assert [p["id"] for p in api.get(f"/api/tunix/runs/{trained.id}/prompts").json()] == [prompt_id]
    assert api.post(f"/api/tunix/runs/{trained.id}/prompts", {"prompt": ""}).status_code == 422
    services.run_delete(run=trained)
    assert not PlaygroundPrompt.objects.exists()


def test_models_page_lineage_and_delete_refused_while_runs_use_it(client, trained, settings):
    # An export of the trained run, left as the export launcher leaves it.
    client.post(f"/runs/{trained.id}/export/", {"name": "exported"})
    job = TunixRun.objects.get(kind=RunKind.EXPORT)
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    folder = Path(settings.MODELS_DIR) / "exported"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    page = client.get("/models/").content.decode()
    assert "local:tiny-llama3" in page and "local:exported" in page
    assert f'href="/runs/{trained.id}/"' in page and f'href="/runs/{job.id}/"' in page

    refused = client.post("/models/tiny-llama3/delete/", follow=True).content.decode()
    assert "is used by 1 run" in refused
    assert (Path(settings.MODELS_DIR) / "tiny-llama3" / "config.json").is_file()
    with pytest.raises(Exception) as caught:
        services.model_delete(name="tiny-llama3")
    assert caught.value.status_code == 409
    client.post("/models/exported/delete/")
    assert not folder.exists()
    assert client.post("/models/..%2Fx/delete/").status_code == 404


def test_models_api(api, trained, settings):
    listed = api.get("/api/tunix/models").json()
    assert [m["model_id"] for m in listed] == ["local:tiny-llama3"]
    assert listed[0]["run_ids"] == [str(trained.id)] and listed[0]["export_id"] is None
    assert api.delete("/api/tunix/models/tiny-llama3").status_code == 409
    assert api.delete("/api/tunix/models/nope").status_code == 404
    services.run_delete(run=trained)
    assert api.delete("/api/tunix/models/tiny-llama3").status_code == 204
    assert api.get("/api/tunix/models").json() == []


def test_a_preference_dataset_is_evaluated_on_its_pairs_and_rows_classify(trained, user):
    from runs.launcher import preference_eval
    from runs.launcher.evaluate import reference_text

    from .conftest import import_dataset
    from .test_launcher_methods import SAMPLES

    pairs = import_dataset(name="pairs", path=SAMPLES / "preference-sample.jsonl")
    assert pairs.format == "preference"
    job = services.evaluation_create(run=trained, owner=user, dataset=pairs)
    assert job.config["dataset"]["format"] == "preference"
    folder, _ = services.run_prepare(run=job)
    rendered = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(rendered) == 60 and set(rendered[0]) == {"prompt", "chosen", "rejected"}
    logps = {  # (chosen, rejected) per row: better, worse, still wrong
        "tuned": [(-1.0, -2.0), (-5.0, -4.0), (-6.0, -3.0)],
        "base": [(-3.0, -2.0), (-1.0, -4.0), (-6.0, -3.0)],
    }
    path = folder / services.jobs.ROWS_FILENAME
    preference_eval._write_rows(path, rendered[:3], logps, "llama3", reference_text)
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    assert services.evaluation_store_rows(job=job) == 3
    rows = list(job.evaluation_rows.order_by("index"))
    assert [r.change for r in rows] == ["better", "worse", "still_wrong"]
    assert rows[0].tuned_output == "chosen -1.000 - rejected -2.000 = +1.000"
    assert rows[0].reference == rendered[0]["chosen"].removesuffix("<|eot_id|>")
