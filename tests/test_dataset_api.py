"""/api/datasets: multipart upload with the same validation as every other way in, the size
limit answered 413 while the body streams, listing, preview, export and delete."""

import hashlib
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from runs import services
from runs.datasets import selectors as dataset_selectors
from runs.models import Dataset

from .conftest import SAMPLE
from .test_dataset_validation import CHAT, PAIR, REASONING, jsonl

pytestmark = pytest.mark.django_db


def upload(api, data: bytes, *, name="d", version="v1", filename="d.jsonl", **fields):
    body = {"name": name, "version": version, **fields}
    if data is not None:
        body["file"] = SimpleUploadedFile(filename, data, content_type="application/jsonl")
    return api.client.post("/api/datasets", body, headers=api.headers)


def nothing_stored(settings) -> bool:
    return not Dataset.objects.exists() and not any(Path(settings.DATASETS_DIR).iterdir())


@pytest.fixture
def upload_tmp(settings, tmp_path):
    """Spool every upload to disk, in a folder the test can inspect."""
    folder = tmp_path / "upload-tmp"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000
    return folder


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/datasets"),
        ("post", "/api/datasets"),
        ("get", "/api/datasets/sample-v1"),
        ("get", "/api/datasets/sample-v1/preview"),
        ("get", "/api/datasets/sample-v1/export"),
        ("delete", "/api/datasets/sample-v1"),
    ],
)
def test_every_dataset_endpoint_needs_authentication(anon_api, dataset, method, path):
    response = getattr(anon_api, method)(path)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication required."}


@pytest.mark.parametrize(
    "row,fmt", [(REASONING, "reasoning"), (PAIR, "prompt_completion"), (CHAT, "messages")]
)
def test_uploading_each_format_registers_it(api, user, row, fmt, upload_tmp):
    data = jsonl(row, row, row)
    response = upload(api, data, description="three")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["key"] == "d-v1" and body["format"] == fmt
    assert (body["row_count"], body["size_bytes"]) == (3, len(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["owner"] == user.username and body["run_count"] == 0
    assert list(upload_tmp.iterdir()) == []


def test_a_large_upload_streams_through_a_temporary_file(api, upload_tmp, settings):
    response = upload(api, SAMPLE.read_bytes())
    assert response.status_code == 201
    assert response.json()["row_count"] == 240
    assert list(upload_tmp.iterdir()) == []


def test_a_declared_format_is_used(api):
    response = upload(api, jsonl(PAIR), format="messages")
    assert response.status_code == 422
    assert "line 1: missing field 'messages'" in response.json()["fields"]["file"]


def test_a_rejected_upload_names_lines_and_fields_and_stores_nothing(api, settings, upload_tmp):
    data = jsonl(PAIR, {"prompt": "a", "completion": 1}, b"", b"{oops", PAIR)
    response = upload(api, data)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("Dataset rejected: line 2: field 'completion' must be")
    assert body["fields"]["file"].splitlines() == [
        "line 2: field 'completion' must be a string, not a number",
        "line 4: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]
    assert nothing_stored(settings)
    assert list(upload_tmp.iterdir()) == []


def test_an_upload_over_the_limit_is_stopped_while_streaming_with_413(api, settings, upload_tmp):
    settings.DATASET_MAX_BYTES = 5000
    data = jsonl(*([PAIR] * 1000))  # 43 kB: within the envelope, so it starts streaming
    response = upload(api, data)
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The file is larger than the upload limit of 4.9 KiB (5000 bytes).",
        "fields": {"file": "Larger than the limit of 4.9 KiB (5000 bytes)."},
    }
    assert nothing_stored(settings)
    assert list(upload_tmp.iterdir()) == []


def test_a_body_declared_larger_than_the_limit_is_refused_before_it_is_read(api, settings):
    settings.DATASET_MAX_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = upload(api, jsonl(*([PAIR] * 5000)))  # 215 kB declared in Content-Length
    assert response.status_code == 413
    assert response.json()["detail"].startswith("The file is larger than the upload limit")
    assert nothing_stored(settings)


def test_a_file_at_exactly_the_limit_is_accepted(api, settings):
    data = jsonl(PAIR, PAIR)
    settings.DATASET_MAX_BYTES = len(data)
    assert upload(api, data).status_code == 201


def test_an_overlong_line_is_rejected_with_its_number(api, settings):
    settings.DATASET_MAX_LINE_BYTES = 100
    response = upload(api, jsonl(PAIR, {"prompt": "p" * 200, "completion": "c"}))
    assert response.status_code == 422
    assert response.json()["fields"]["file"] == "line 2: longer than the limit of 100 bytes"
    assert nothing_stored(settings)


def test_a_session_upload_over_the_limit_is_413_too(user, settings):
    # The session path checks CSRF, which parses the body: the limit must hold there too.
    settings.DATASET_MAX_BYTES = 5000
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/datasets/upload/")
    token = client.cookies["csrftoken"].value
    body = {
        "name": "d",
        "version": "v1",
        "file": SimpleUploadedFile("d.jsonl", jsonl(*[PAIR] * 500)),
    }
    response = client.post("/api/datasets", body, headers={"X-CSRFToken": token})
    assert response.status_code == 413
    assert response.json()["detail"].startswith("The file is larger than the upload limit")
    assert nothing_stored(settings)
    # And without the CSRF token a small upload is refused.
    body["file"] = SimpleUploadedFile("d.jsonl", jsonl(PAIR))
    assert client.post("/api/datasets", body).status_code == 403
    assert nothing_stored(settings)


def test_a_missing_file_or_bad_name_is_a_422_naming_the_field(api, settings):
    response = upload(api, None)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["file", "file"]]
    for name in ("../etc", "-x", ""):
        response = upload(api, jsonl(PAIR), name=name)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == "name"
    assert nothing_stored(settings)


def test_uploading_an_existing_version_is_409_and_keeps_the_first(api, dataset, settings):
    before = (settings.DATASETS_DIR / dataset.file_path).read_bytes()
    response = upload(api, jsonl(PAIR), name="sample", version="v1")
    assert response.status_code == 409
    assert "immutable" in response.json()["detail"]
    assert (settings.DATASETS_DIR / dataset.file_path).read_bytes() == before


def test_list_and_detail_show_row_counts_and_run_counts(api, dataset, run_factory):
    run_factory()
    upload(api, jsonl(PAIR), name="pairs")
    body = api.get("/api/datasets").json()
    assert body["count"] == 2
    assert [(d["key"], d["row_count"], d["run_count"]) for d in body["items"]] == [
        ("pairs-v1", 1, 0),
        ("sample-v1", 240, 1),
    ]
    assert api.get("/api/datasets?format=messages").json()["count"] == 0
    assert api.get("/api/datasets?q=pair").json()["items"][0]["key"] == "pairs-v1"
    detail = api.get("/api/datasets/sample-v1").json()
    assert detail["run_count"] == 1 and detail["owner"] is None
    response = api.get("/api/datasets/nope-v1")
    assert response.status_code == 404
    assert response.json() == {"detail": "No dataset 'nope-v1'."}


def test_preview_gives_rows_as_data_and_as_training_text_with_stats(api, dataset):
    response = api.get("/api/datasets/sample-v1/preview?family=gemma2&limit=2&max_seq_length=300")
    assert response.status_code == 200
    body = response.json()
    assert body["family"] == "gemma2" and body["model_id"] is None
    first = json.loads(SAMPLE.read_text().splitlines()[0])
    assert body["rows"][0]["line"] == 1 and body["rows"][0]["data"] == first
    assert body["rows"][0]["prompt"] == (
        f"<bos><start_of_turn>user\n{first['prompt']}<end_of_turn>\n<start_of_turn>model\n"
    )
    assert body["rows"][0]["completion"].endswith(
        f"Final answer: {first['final_answer']}<end_of_turn>\n"
    )
    assert len(body["rows"]) == 2
    stats = body["stats"]
    assert stats["rows"] == 240 and stats["unit"] == "characters"
    assert stats["max_seq_length"] == 300 and 0 < stats["truncated_rows"] < 240
    assert sum(b["count"] for b in stats["histogram"]) == 240


def test_preview_takes_the_family_from_a_named_model(api, dataset, tiny_model_dir):
    body = api.get(f"/api/datasets/sample-v1/preview?model_id={tiny_model_dir}").json()
    assert body["family"] == "llama3" and body["model_id"] == tiny_model_dir
    assert body["stats"]["counted_with"].endswith("has no tokenizer.json.")


@pytest.mark.parametrize(
    "query,field",
    [
        ("model_id=local:missing", "model_id"),
        ("model_id=--help", "model_id"),
        ("family=gpt2", None),
        ("max_seq_length=8", None),
        ("limit=0", None),
    ],
)
def test_preview_refuses_bad_parameters_with_422(api, dataset, query, field):
    response = api.get(f"/api/datasets/sample-v1/preview?{query}")
    assert response.status_code == 422
    if field:
        assert field in response.json()["fields"]


def test_export_downloads_the_rendered_training_jsonl(api, dataset):
    response = api.get("/api/datasets/sample-v1/export?family=qwen3")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="sample-v1-qwen3.jsonl"'
    content = b"".join(response.streaming_content).decode()
    assert content == "".join(dataset_selectors.dataset_rendered_lines(dataset, family="qwen3"))
    lines = content.splitlines()
    assert len(lines) == 240
    assert json.loads(lines[0])["prompt"].startswith("<|im_start|>user\n")


def test_delete_is_204_for_the_owner_and_removes_the_file(
    api, settings, django_capture_on_commit_callbacks
):
    upload(api, jsonl(PAIR))
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/api/datasets/d-v1")
    assert response.status_code == 204
    assert nothing_stored(settings)
    assert api.get("/api/datasets/d-v1").status_code == 404


def test_delete_is_409_while_runs_refer_to_the_dataset(api, staff_user, dataset, run_factory):

    from .conftest import ApiClient

    run_factory(mode="local", command=["true"])
    _, token = services.api_token_create(user=staff_user)
    response = ApiClient(token).delete("/api/datasets/sample-v1")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Dataset sample-v1 is used by 1 run, 1 of them active; delete those runs first."
    }
    assert Dataset.objects.filter(key="sample-v1").exists()


def test_delete_of_someone_elses_shared_dataset_is_403(api, other_user, settings):
    from .conftest import import_dataset

    import_dataset(name="theirs", owner=other_user, shared=True)
    response = api.delete("/api/datasets/theirs-v1")
    assert response.status_code == 403
    assert Dataset.objects.filter(key="theirs-v1").exists()


def test_the_openapi_schema_documents_the_multipart_upload(api):
    schema = api.get("/api/openapi.json").json()
    body = schema["paths"]["/api/datasets"]["post"]["requestBody"]["content"]
    properties = body["multipart/form-data"]["schema"]["properties"]
    assert {"file", "name", "version", "format", "description"} <= set(properties)
    assert set(schema["paths"]["/api/datasets/{key}"]) == {"get", "patch", "delete"}


def test_preview_and_export_of_a_dataset_whose_file_is_gone_are_409(api, dataset, settings):
    (settings.DATASETS_DIR / dataset.file_path).unlink()
    for path in ("/api/datasets/sample-v1/preview", "/api/datasets/sample-v1/export"):
        response = api.get(path)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "The file of dataset sample-v1 is missing from the datasets folder."
        )
