"""The admin's run list at 1280x800 in real headless Chromium: its columns fit beside the
filters without sideways scrolling. Screenshot in test-artifacts/."""

import pytest

from .test_browser import browser, log_in, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_admin_run_list_fits_1280_pixels(
    page,  # noqa: F811
    live_server,
    admin_user,
    run_factory,
):
    from playwright.sync_api import expect

    for n in range(8):
        run_factory(name=f"sweep-lr-{n}-with-a-rather-long-descriptive-name" if n % 2 else "")
    page.set_viewport_size({"width": 1280, "height": 800})
    log_in(page, live_server, admin_user)
    page.goto("/admin/runs/tunixrun/")
    expect(page.locator("#result_list tbody tr")).to_have_count(8)
    headers = page.locator("#result_list thead th").all_inner_texts()
    assert [h.strip().lower() for h in headers[1:]] == [
        "run",
        "status",
        "model",
        "dataset",
        "created",
        "duration",
    ]
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    table = page.locator("#result_list").bounding_box()
    filters = page.locator("#changelist-filter").bounding_box()
    assert table["x"] + table["width"] <= filters["x"] + 1, "the table runs under the filters"
    page.screenshot(path="test-artifacts/admin-run-list-1280x800.png")
    page.goto("/admin/")
    expect(page.get_by_role("link", name="API tokens", exact=True)).to_be_visible()
