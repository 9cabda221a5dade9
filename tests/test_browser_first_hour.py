"""What a new user sees in the first hour, in real headless Chromium at 1280 px. Each test
leaves a screenshot in test-artifacts/."""

import pytest

from .test_browser import browser, log_in, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_error_shown_live_stays_after_submit_with_a_summary_on_top(
    page,
    live_server,
    user,
    dataset,
    tiny_model_dir,  # noqa: F811
):
    from playwright.sync_api import expect

    log_in(page, live_server, user)
    page.goto("/runs/new/")
    page.fill("#id_model_id", "local:missing")
    expect(page.locator("#errors-model_id")).to_contain_text("No local model")
    page.fill("#id_batch_size", "0")
    expect(page.locator("#errors-batch_size")).to_contain_text("Must be between 1 and 1,024.")
    page.click("#submit-dry-run")
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("Fix 2 problems before this can run")
    expect(summary).to_contain_text("Model: No local model")
    expect(summary).to_contain_text("Batch size: Must be between 1 and 1,024.")
    # Both errors are still on their fields after the submission.
    expect(page.locator("#errors-model_id")).to_contain_text("No local model")
    expect(page.locator("#errors-batch_size")).to_contain_text("Must be between 1 and 1,024.")
    expect(page.locator("#help-seed")).to_contain_text("0 to 2,147,483,647")
    expect(page.locator("#help-learning_rate")).to_contain_text("1e-8 to 1")
    box = summary.bounding_box()
    assert box is not None and box["y"] < page.locator("#id_dataset_key").bounding_box()["y"]


def test_a_missing_run_shows_the_404_page_in_the_apps_look_with_the_favicon(
    page, live_server, user
):
    from playwright.sync_api import expect

    log_in(page, live_server, user)
    response = page.goto("/runs/00000000-0000-0000-0000-000000000000/")
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    expect(page.locator("header.top .brand")).to_be_visible()
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(f"{live_server.url}{icon}").status == 200
