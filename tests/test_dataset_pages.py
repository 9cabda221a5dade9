"""Dataset pages: list, upload (HTMX and plain), preview with the training text and its
statistics, export and delete."""

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from runs.datasets import selectors as dataset_selectors
from runs.models import Dataset

from .conftest import SAMPLE, import_dataset
from .test_dataset_validation import CHAT, PAIR, jsonl

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_client(client, user):
    client.force_login(user)
    return client


def post_upload(client, data: bytes, *, name="d", version="v1", htmx=False, **fields):
    body = {"name": name, "version": version, "format": "", "description": "", **fields}
    body["file"] = SimpleUploadedFile("d.jsonl", data)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(reverse("datasets:upload"), body, headers=headers)


def nothing_stored(settings) -> bool:
    return not Dataset.objects.exists() and not any(Path(settings.DATASETS_DIR).iterdir())


def test_the_url_names_the_other_pages_link_to_exist():
    assert reverse("datasets:list") == "/datasets/"
    assert reverse("datasets:upload") == "/datasets/upload/"
    assert reverse("datasets:detail", args=["sample-v1"]) == "/datasets/sample-v1/"


@pytest.mark.parametrize("name", ["datasets:list", "datasets:upload"])
def test_dataset_pages_need_a_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_list_shows_each_dataset_with_its_rows(browser_client, dataset):
    response = browser_client.get(reverse("datasets:list"))
    page = response.content.decode()
    assert 'href="/datasets/sample-v1/"' in page
    assert '<td class="num">240</td>' in page
    assert 'href="/datasets/upload/"' in page
    # The run list's vocabulary and conventions: no stylesheet of its own, filters that
    # apply on their own through htmx (a button only without JavaScript), Vary.
    assert "datasets.css" not in page and "ds-" not in page
    assert '<form class="filters card"' in page and 'hx-target="#results"' in page
    assert '<noscript><button type="submit">Filter</button></noscript>' in page
    assert "HX-Request" in response["Vary"]


def test_an_htmx_filter_gets_only_the_results_and_a_plain_one_the_page(browser_client, dataset):
    import_dataset(name="other", path=SAMPLE)
    url = reverse("datasets:list")
    fragment = browser_client.get(url, {"q": "other"}, headers={"HX-Request": "true"})
    text = fragment.content.decode()
    assert text.lstrip().startswith('<section id="results"') and "<html" not in text
    assert "other-v1" in text and "sample-v1" not in text
    assert "HX-Request" in fragment["Vary"]
    page = browser_client.get(url, {"q": "other"}).content.decode()
    assert "<html" in page and "other-v1" in page and "sample-v1" not in page
    none = browser_client.get(url, {"q": "nothing-like-it"}, headers={"HX-Request": "true"})
    assert "No datasets match these filters." in none.content.decode()
    # A history restore asks for the whole page.
    restore = {"HX-Request": "true", "HX-History-Restore-Request": "true"}
    assert "<html" in browser_client.get(url, headers=restore).content.decode()


def test_the_name_is_taken_from_the_file_name_when_left_empty(browser_client):
    body = {"name": "", "version": "v1", "file": SimpleUploadedFile("my-data.jsonl", jsonl(PAIR))}
    response = browser_client.post(reverse("datasets:upload"), body)
    assert response.status_code == 302 and response["Location"] == "/datasets/my-data-v1/"
    assert Dataset.objects.get().name == "my-data"


def test_a_name_taken_from_the_file_is_still_validated_and_shown(browser_client, settings):
    body = {"name": "", "version": "v1", "file": SimpleUploadedFile("my data.jsonl", jsonl(PAIR))}
    response = browser_client.post(reverse("datasets:upload"), body)
    assert response.status_code == 422
    page = response.content.decode()
    assert 'value="my data"' in page
    assert "Use 1-100 letters, digits" in page
    # A whole page cannot keep a chosen file: it says so.
    assert "Choose the file again" in page
    assert nothing_stored(settings)


def test_an_htmx_error_keeps_the_file_input_and_does_not_ask_to_choose_again(browser_client):
    response = post_upload(browser_client, jsonl({"prompt": "y"}), htmx=True)
    assert response.status_code == 422
    page = response.content.decode()
    assert 'type="file" name="file"' in page and 'hx-preserve="true"' in page
    assert "Choose the file again" not in page


def test_the_upload_check_reports_an_existing_name_version_before_the_upload(
    browser_client, dataset
):
    url = reverse("datasets:upload-check")
    taken = browser_client.get(url, {"name": "sample", "version": "v1"}).content.decode()
    assert '<ul id="errors-version" class="errors" aria-live="polite" hx-swap-oob="true">' in taken
    assert "sample-v1 already exists: choose another version or name." in taken
    assert (
        '<ul id="errors-name" class="errors" aria-live="polite" hx-swap-oob="true"></ul>' in taken
    )
    free = browser_client.get(url, {"name": "sample", "version": "v2"}).content.decode()
    assert "already exists" not in free and "<li>" not in free
    from_file = browser_client.get(url, {"name": "", "version": "v1", "filename": "sample.jsonl"})
    assert "sample-v1 already exists" in from_file.content.decode()
    bad = browser_client.get(url, {"name": "no way", "version": "v1"}).content.decode()
    assert "Use 1-100 letters, digits" in bad
    # The inputs ask it as the user types, without sending the file.
    form = browser_client.get(reverse("datasets:upload")).content.decode()
    assert form.count(f'hx-get="{url}"') == 2 and 'hx-include="#id_name, #id_version"' in form


def test_the_upload_form_posts_with_htmx_and_shows_progress(browser_client):
    page = browser_client.get(reverse("datasets:upload")).content.decode()
    assert 'hx-post="/datasets/upload/"' in page and 'hx-encoding="multipart/form-data"' in page
    assert 'enctype="multipart/form-data"' in page  # works without JavaScript too
    assert "<progress" in page and "runs/datasets.js" in page
    assert 'data-check-url="/datasets/upload/check/"' in page


def test_a_valid_upload_redirects_to_its_preview(browser_client):
    response = post_upload(browser_client, jsonl(CHAT, CHAT))
    assert response.status_code == 302
    assert response["Location"] == "/datasets/d-v1/"
    assert Dataset.objects.get().row_count == 2


def test_a_valid_htmx_upload_tells_htmx_where_to_go(browser_client):
    response = post_upload(browser_client, jsonl(PAIR), htmx=True)
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/datasets/d-v1/"


def test_a_rejected_upload_shows_each_bad_line_and_stores_nothing(browser_client, settings):
    data = jsonl(PAIR, {"prompt": "<b>x</b>", "completion": 7}, {"prompt": "y"})
    response = post_upload(browser_client, data, htmx=True)
    assert response.status_code == 422
    page = response.content.decode()
    assert "<html" not in page  # the form fragment, swapped in place
    assert "<li>line 2: field &#x27;completion&#x27; must be a string, not a number</li>" in page
    assert "<li>line 3: missing field &#x27;completion&#x27;</li>" in page
    assert nothing_stored(settings)


def test_an_oversize_upload_answers_413_with_the_form(user, settings):
    settings.DATASET_MAX_BYTES = 5000
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get(reverse("datasets:upload"))
    token = client.cookies["csrftoken"].value
    body = {
        "csrfmiddlewaretoken": token,
        "name": "d",
        "version": "v1",
        "file": SimpleUploadedFile("d.jsonl", jsonl(*[PAIR] * 500)),
    }
    response = client.post(reverse("datasets:upload"), body)
    assert response.status_code == 413
    assert (
        "The file is larger than the upload limit of 4.9 KiB (5000 bytes). Nothing was stored."
        in response.content.decode()
    )
    assert nothing_stored(settings)


def test_the_upload_still_checks_csrf(user, settings):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    body = {"name": "d", "version": "v1", "file": SimpleUploadedFile("d.jsonl", jsonl(PAIR))}
    assert client.post(reverse("datasets:upload"), body).status_code == 403
    assert nothing_stored(settings)


def test_uploading_an_existing_version_is_409(browser_client, dataset):
    response = post_upload(browser_client, jsonl(PAIR), name="sample", version="v1")
    assert response.status_code == 409
    page = response.content.decode()
    assert "already exists; versions are immutable" in page
    assert "sample-v1 already exists: choose another version or name." in page  # on the field


def test_the_preview_shows_rows_as_data_and_as_masked_training_text(browser_client, settings):
    row = {"prompt": "<script>alert(1)</script>", "completion": "done & dusted"}
    post_upload(browser_client, jsonl(row, PAIR))
    page = browser_client.get("/datasets/d-v1/?max_seq_length=80").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    masked = (
        '<span class="ds-masked" title="prompt: masked from the loss">&lt;|begin_of_text|&gt;'
        "&lt;|start_header_id|&gt;system&lt;|end_header_id|&gt;\n\nCutting Knowledge Date"
    )
    assert masked in page
    assert '<span class="ds-trained" title="completion: trained on">done &amp; dusted' in page
    assert "Line 1" in page and "Line 2" in page
    figures = dataset_selectors.dataset_truncation(
        Dataset.objects.get(), family="llama3", max_seq_length=80
    )
    assert f"{figures['truncated_rows']} of 2 rows" in page
    assert "at max_seq_length=80 (characters)" in page
    assert "Counted in characters: no model chosen, so no tokenizer." in page
    assert "<svg" in page and "<rect" in page


def test_the_preview_counts_tokens_for_a_local_model_with_a_tokenizer(
    browser_client, dataset, tokenizer_model
):
    page = browser_client.get(
        f"/datasets/sample-v1/?model_id={tokenizer_model}&max_seq_length=64"
    ).content.decode()
    assert "at max_seq_length=64 (tokens)." in page
    assert "Counted in tokens with the tokenizer of local:tiny-llama3." in page
    assert f'<option value="{tokenizer_model}" selected>' in page


def test_an_htmx_preview_request_gets_only_the_preview_fragment(browser_client, dataset):
    response = browser_client.get(
        "/datasets/sample-v1/?family=qwen3&rows=2", headers={"HX-Request": "true"}
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<div id="preview">') and "<html" not in page
    assert page.count('class="card ds-row"') == 2
    assert "HX-Request" in response["Vary"]
    assert "&lt;|im_start|&gt;user" in page


@pytest.mark.parametrize(
    "query,message",
    [
        ("max_seq_length=abc", "Must be an integer."),
        ("max_seq_length=4", "Must be between 16 and 32,768."),
        ("rows=500", "Must be between 1 and 50."),
        ("model_id=local:missing", "No local model"),
    ],
)
def test_bad_preview_choices_are_422_with_a_message(browser_client, dataset, query, message):
    response = browser_client.get(f"/datasets/sample-v1/?{query}")
    assert response.status_code == 422
    assert message in response.content.decode()


def test_an_unknown_dataset_is_404(browser_client):
    assert browser_client.get("/datasets/nope-v1/").status_code == 404
    assert browser_client.get("/datasets/nope-v1/export/").status_code == 404


def test_export_downloads_the_training_text_of_the_chosen_family(browser_client, dataset):
    response = browser_client.get("/datasets/sample-v1/export/?family=gemma3")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="sample-v1-gemma3.jsonl"'
    content = b"".join(response.streaming_content).decode()
    assert content == "".join(dataset_selectors.dataset_rendered_lines(dataset, family="gemma3"))


def test_the_owner_deletes_a_dataset_and_its_file(
    browser_client, settings, django_capture_on_commit_callbacks
):
    post_upload(browser_client, jsonl(PAIR))
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post("/datasets/d-v1/delete/")
    assert response.status_code == 302 and response["Location"] == "/datasets/"
    assert nothing_stored(settings)


def test_deleting_a_dataset_that_runs_use_is_409_with_the_reason(
    client, staff_user, dataset, run_factory
):
    run_factory(mode="local", command=["true"])
    client.force_login(staff_user)
    response = client.post("/datasets/sample-v1/delete/")
    assert response.status_code == 409
    assert "1 of them active; delete those runs first." in response.content.decode()
    assert Dataset.objects.filter(key="sample-v1").exists()


def test_only_the_owner_or_staff_see_and_may_use_delete(client, other_user, dataset):
    client.force_login(other_user)
    page = client.get("/datasets/sample-v1/").content.decode()
    assert "/datasets/sample-v1/delete/" not in page
    assert client.post("/datasets/sample-v1/delete/").status_code == 403
    assert client.get("/datasets/sample-v1/delete/").status_code == 405


def test_the_preview_of_a_dataset_whose_file_is_gone_says_so(browser_client, dataset, settings):
    (settings.DATASETS_DIR / dataset.file_path).unlink()
    response = browser_client.get("/datasets/sample-v1/")
    assert response.status_code == 409
    assert "is missing from the datasets folder" in response.content.decode()
    response = browser_client.get("/datasets/sample-v1/export/", follow=True)
    assert "Cannot export: The file of dataset sample-v1 is missing" in response.content.decode()
