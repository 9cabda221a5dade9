"""The upload page in real headless Chromium: htmx posts the file with progress, a rejected
file's errors replace the form in place, and a valid one lands on its preview."""

import json
from pathlib import Path

import pytest

from .conftest import CHROMIUM
from .test_dataset_validation import PAIR, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(live_server, django_user_model, monkeypatch):
    from playwright import sync_api as playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the test
    # makes between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    django_user_model.objects.create_user("dora", password="dora-password-1")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{live_server.url}/accounts/login/?next=/datasets/upload/")
        page.fill("input[name=username]", "dora")
        page.fill("input[name=password]", "dora-password-1")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url("**/datasets/upload/")
        yield page
        browser.close()


def choose(page, data: bytes, name: str, version: str = "v1"):
    page.set_input_files(
        "#id_file", {"name": "data.jsonl", "mimeType": "application/jsonl", "buffer": data}
    )
    page.fill("#id_name", name)
    page.fill("#id_version", version)
    # Remember what the progress bar showed when the answer arrived.
    page.evaluate(
        """() => document.addEventListener("htmx:beforeSwap", () => {
            const bar = document.querySelector("#upload-form progress");
            window.progressSeen = {hidden: bar.hidden, value: bar.value};
        }, {once: true})"""
    )
    page.click("#upload-form button[type=submit]")


def test_a_rejected_upload_shows_its_lines_in_place_and_a_valid_one_opens_the_preview(
    page, settings
):
    bad = jsonl(PAIR, {"prompt": "a", "completion": 1}, PAIR, {"prompt": "b"})
    choose(page, bad, "browser")
    errors = page.locator("ul.ds-field-errors[data-field=file] li")
    errors.first.wait_for()
    assert errors.all_inner_texts() == [
        "line 2: field 'completion' must be a string, not a number",
        "line 4: missing field 'completion'",
    ]
    assert page.url.endswith("/datasets/upload/")  # swapped in place, no navigation
    assert page.evaluate("window.progressSeen") == {"hidden": False, "value": 100}
    # (No ORM here: inside Playwright's context it would open a second connection.)
    assert not any(Path(settings.DATASETS_DIR).iterdir())

    rows = [PAIR | {"prompt": f"Question {n}?"} for n in range(50)]
    choose(page, b"".join(json.dumps(r).encode() + b"\n" for r in rows), "browser")
    page.wait_for_url("**/datasets/browser-v1/")
    assert page.locator("h1").inner_text() == "browser-v1"
    assert page.locator(".ds-row").count() == 5
    masked = page.locator(".ds-row .ds-masked").first.inner_text()
    assert masked.startswith("<|begin_of_text|>") and "Question 0?" in masked

    # Changing the template re-renders only the preview, through htmx.
    page.select_option("select[name=family]", "qwen3")
    page.wait_for_function(
        "document.querySelector('.ds-row .ds-masked').textContent.startsWith('<|im_start|>')"
    )
    assert "family=qwen3" in page.url
    assert (Path(settings.DATASETS_DIR) / "browser" / "v1.jsonl").is_file()
