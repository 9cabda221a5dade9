"""The dataset pages in real headless Chromium: the list's filters apply on their own, the
upload names a dataset from its file, keeps the file after an error and refuses an existing
name-version before sending a byte, and deleting asks once. Screenshots in test-artifacts/."""

import json
import re
from pathlib import Path

import pytest

from .conftest import SAMPLE, import_dataset
from .test_browser import browser, log_in, page  # noqa: F401 - fixtures
from .test_dataset_validation import PAIR, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def choose(tab, data: bytes, filename: str = "data.jsonl"):
    tab.set_input_files(
        "#id_file", {"name": filename, "mimeType": "application/jsonl", "buffer": data}
    )


def record_uploads(tab) -> list[str]:
    posts: list[str] = []
    tab.on(
        "request",
        lambda r: posts.append(r.url) if r.method == "POST" and "/upload/" in r.url else None,
    )
    return posts


def test_the_dataset_list_uses_the_run_lists_look_and_filters_on_its_own(
    page,  # noqa: F811
    live_server,
    user,
    dataset,
):
    from playwright.sync_api import expect

    import_dataset(name="chat-notes", path=SAMPLE, description="Notes from support chats")
    log_in(page, live_server, user)
    page.goto("/datasets/")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    # No Filter button: typing filters (after a short pause), through htmx, with the URL kept.
    expect(page.get_by_role("button", name="Filter")).to_have_count(0)
    page.fill("#filter-q", "chat")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("chat-notes-v1")
    assert "q=chat" in page.url
    page.select_option("select[name=format]", "prompt_completion")
    expect(page.locator("#results td.empty")).to_have_text("No datasets match these filters.")
    page.select_option("select[name=format]", "")
    page.fill("#filter-q", "")
    expect(rows).to_have_count(2)
    # The same controls as the run list: full-size inputs, the app's button style.
    box = page.locator("#filter-q").bounding_box()
    assert box["height"] >= 30 and box["width"] >= 200
    upload = page.get_by_role("link", name="Upload a dataset")
    assert "primary" in upload.get_attribute("class")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_an_upload_takes_its_name_from_the_file_and_keeps_the_file_after_an_error(
    page,  # noqa: F811
    live_server,
    user,
    settings,
):
    from playwright.sync_api import expect

    log_in(page, live_server, user)
    page.goto("/datasets/upload/")
    bad = jsonl(PAIR, {"prompt": "a", "completion": 1}, PAIR, {"prompt": "b"})
    choose(page, bad, "my-data.jsonl")
    expect(page.locator("#id_name")).to_have_value("my-data")
    page.click("#upload-form button[type=submit]")
    errors = page.locator("#errors-file li")
    expect(errors.first).to_be_visible()
    assert errors.all_inner_texts() == [
        "line 2: field 'completion' must be a string, not a number",
        "line 4: missing field 'completion'",
    ]
    assert page.url.endswith("/datasets/upload/")  # swapped in place, no navigation
    # The chosen file is still chosen, so fixing nothing else it can be sent again.
    assert page.evaluate("document.querySelector('#id_file').files[0].name") == "my-data.jsonl"
    expect(page.locator("#choose-again")).to_have_count(0)
    expect(page.locator("#error-summary")).to_be_visible()
    page.screenshot(path=str(Path("test-artifacts") / "dataset-upload-with-an-error.png"))
    assert not any(Path(settings.DATASETS_DIR).iterdir())

    # A good file chosen in the same input, the name typed over: it lands on its preview.
    rows = [PAIR | {"prompt": f"Question {n}?"} for n in range(50)]
    choose(page, b"".join(json.dumps(r).encode() + b"\n" for r in rows), "other.jsonl")
    expect(page.locator("#id_name")).to_have_value("other")
    page.fill("#id_name", "browser")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/browser-v1/")
    assert page.locator("h1").inner_text() == "browser-v1"
    assert page.locator(".ds-row").count() == 5
    masked = page.locator(".ds-row .ds-masked").first.inner_text()
    assert masked.startswith("<|begin_of_text|>") and "Question 0?" in masked
    # Changing the template re-renders only the preview, through htmx.
    page.select_option("select[name=family]", "qwen3")
    # expect() polls without eval() (page.wait_for_function would need it, and the CSP says no).
    expect(page.locator(".ds-row .ds-masked").first).to_have_text(re.compile(r"^<\|im_start\|>"))
    assert "family=qwen3" in page.url


def test_an_existing_name_version_is_refused_before_the_upload_starts(
    page,  # noqa: F811
    live_server,
    user,
    dataset,
):
    from playwright.sync_api import expect

    log_in(page, live_server, user)
    page.goto("/datasets/upload/")
    posts = record_uploads(page)
    choose(page, jsonl(PAIR), "sample.jsonl")  # names it "sample", and v1 exists
    taken = page.locator("#errors-version li")
    expect(taken).to_have_text("sample-v1 already exists: choose another version or name.")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#id_version")).to_be_focused()
    assert posts == []  # the file was never sent
    # Pressing the button before the live check answered is caught as well.
    page.fill("#id_version", "v2")
    expect(taken).to_have_count(0)
    page.evaluate(
        """() => { document.querySelector('#id_version').value = 'v1';
                   document.querySelector('#upload-form button[type=submit]').click(); }"""
    )
    expect(taken).to_have_count(1)
    assert posts == []
    page.fill("#id_version", "v2")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/sample-v2/")
    assert len(posts) == 1


def test_deleting_a_dataset_asks_once(page, live_server, user):  # noqa: F811
    from playwright.sync_api import expect

    import_dataset(name="mine", path=SAMPLE, owner=user)
    log_in(page, live_server, user)
    questions: list[str] = []

    def answer(dialog):
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.goto("/datasets/mine-v1/")
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/datasets/")
    assert questions == ["Delete dataset mine-v1? Its file is removed."]
    expect(page.locator(".messages")).to_contain_text("Dataset mine-v1 deleted.")
