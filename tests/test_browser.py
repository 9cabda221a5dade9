"""The pages in real headless Chromium, against a live server and a real queue worker.

Each test leaves a screenshot of its last state in test-artifacts/ (kept by CI).
"""

import os
import re

import pytest
from django.conf import settings as django_settings
from django.test import Client

from runs.models import Metric

from .conftest import CHROMIUM, REPO, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCHER = "tests.programs.short_job"
# Generous: other test lanes share the machine's two cores.
SLOW = 90_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop running in this thread, and Django refuses
    # ORM calls from a thread with a running loop. The fixtures and assertions here are
    # plain synchronous code, so that guard does not apply while the browser is open.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server, request):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page, live_server, user):
    """Share a session made by the test client (the login form has its own test)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )


def submit_run(page, *, max_steps: int, button: str):
    page.goto("/runs/new/")
    page.fill("#id_max_steps", str(max_steps))
    page.click(button)
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))


def test_log_in_and_see_the_config_of_a_dry_run(page, user, dataset, tiny_model_dir):
    from playwright.sync_api import expect

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-password-1")
    page.click("button:has-text('Log in')")
    expect(page.locator("h1")).to_have_text("Runs")

    page.click("nav >> text=New run")
    expect(page.locator("#id_dataset_key")).to_contain_text(
        "sample-v1 (240 rows, Reasoning traces)"
    )
    # A value out of bounds is reported beside its field while typing, then cleared.
    page.fill("#id_learning_rate", "5")
    expect(page.locator("#errors-learning_rate")).to_contain_text("Must be between 1e-8 and 1.")
    page.fill("#id_learning_rate", "0.001")
    expect(page.locator("#errors-learning_rate li")).to_have_count(0)
    page.fill("#id_max_steps", "12")
    page.locator("#id_max_steps").blur()
    expect(page.locator("#preview-config")).to_contain_text('"max_steps": 12')

    page.click("#submit-dry-run")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    expect(page.locator("#run-status")).to_have_text("Completed")
    expect(page.locator("#run-config")).to_contain_text('"max_steps": 12')
    expect(page.locator("#run-config")).to_contain_text('"learning_rate": 0.001')
    expect(page.locator("#run-command")).to_contain_text("tunix_config.json")


@pytest.mark.worker
def test_a_local_run_goes_pending_running_completed_with_its_log_live(
    page, live_server, user, dataset, tiny_model_dir, settings, start_cluster
):
    from playwright.sync_api import expect

    settings.TUNIX_LAUNCHER_MODULE = LAUNCHER
    log_in(page, live_server, user)
    submit_run(page, max_steps=15, button="#submit-local")
    # No worker yet: the run waits in the queue, and the banner says so.
    expect(page.locator("#run-status")).to_have_text("Pending")
    expect(page.locator("#messages")).to_contain_text("Run queued.")
    page.evaluate("window.__sameDocument = true")
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    # The run list in a second tab: the run's row refreshes itself, and a box ticked to
    # compare stays ticked through the refreshes.
    listing = page.context.new_page()
    listing.goto("/")
    row = listing.locator(f"#row-{run_id}")
    expect(row).to_contain_text("Pending")
    listing.check(f"#pick-{run_id}")

    start_cluster(workers=1, TUNIXRT_LAUNCHER_MODULE=LAUNCHER)
    expect(page.locator("#run-status")).to_have_text("Running", timeout=SLOW)
    # The run has left the queue: "Run queued." would be stale, so it goes.
    expect(page.locator("#messages")).to_be_empty()
    expect(page.locator("#log-lines")).to_contain_text("short_job: loaded config", timeout=SLOW)
    # More lines than the log box shows: it keeps the newest in sight...
    expect(page.locator("#log-lines")).to_contain_text("step 8/15", timeout=SLOW)
    # Polled from here: page.wait_for_function evaluates its predicate with eval() once the
    # first check fails, which the page's Content-Security-Policy refuses.
    wait_for(
        lambda: page.evaluate(
            "() => { const box = document.getElementById('log');"
            " return box.scrollHeight > box.clientHeight"
            " && box.scrollTop + box.clientHeight >= box.scrollHeight - 8; }"
        ),
        timeout=10,
        message="the log box to keep its newest line in sight",
    )
    # ...until the reader scrolls up: then new lines arrive without moving the view.
    page.evaluate("document.getElementById('log').scrollTop = 0")
    expect(page.locator("#run-status")).to_have_text("Completed", timeout=SLOW)
    assert page.evaluate("document.getElementById('log').scrollTop") == 0
    expect(page.locator("#log-lines")).to_contain_text("short_job: done")
    expect(page.locator("#run-exit-code")).to_have_text("0")
    expect(page.locator("#run-steps")).to_have_text("step 15 / 15")
    # Train loss (15 points): raw values, faint, under their EMA; eval loss dashed.
    expect(page.locator("#loss-chart polyline")).to_have_count(3)
    # All of it arrived by polling: the page was never reloaded, and polling has stopped.
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#status").get_attribute("hx-trigger") is None
    lines = page.locator("#log-lines").inner_text()
    assert lines.count("step 15/15") == 1  # each chunk was appended once
    expect(row).to_contain_text("Completed", timeout=SLOW)
    expect(listing.locator(f"#pick-{run_id}")).to_be_checked()
    expect(row).not_to_have_attribute("hx-trigger", re.compile("."))
    listing.close()


@pytest.mark.worker
def test_cancelling_a_long_run_ends_it_cancelled(
    page, live_server, user, dataset, tiny_model_dir, settings, start_cluster
):
    from playwright.sync_api import expect

    settings.TUNIX_LAUNCHER_MODULE = LAUNCHER
    start_cluster(workers=1, TUNIXRT_LAUNCHER_MODULE=LAUNCHER)
    log_in(page, live_server, user)
    submit_run(page, max_steps=1000, button="#submit-local")
    expect(page.locator("#run-status")).to_have_text("Running", timeout=SLOW)
    expect(page.locator("#log-lines")).to_contain_text("step 1/1000", timeout=SLOW)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-run")
    expect(page.locator("#run-status")).to_have_text("Cancelled", timeout=SLOW)
    expect(page.locator("#messages")).to_be_empty()  # no stale "Cancel requested"
    expect(page.locator("#log-lines")).to_contain_text("stopping the process group")
    # The supervisor's own lines are notes, not errors.
    expect(page.locator("#log-lines .lv-note").first).to_contain_text("[tunix-rt]")
    expect(page.locator("#cancel-run")).to_have_count(0)
    expect(page.locator("#delete-run")).to_be_visible()


def test_compare_two_runs_picked_in_the_list(page, live_server, user, run_factory):
    from playwright.sync_api import expect

    first = run_factory(name="small-lr", learning_rate=0.001)
    second = run_factory(name="big-lr", learning_rate=0.01)
    for run, scale in ((first, 1.0), (second, 1.6)):
        Metric.objects.bulk_create(
            Metric(run=run, name="train/loss", step=step, value=scale / step)
            for step in range(1, 21)
        )
    log_in(page, live_server, user)
    page.goto("/")
    page.check(f"#pick-{first.id}")
    page.check(f"#pick-{second.id}")
    page.click("text=Compare selected")
    expect(page).to_have_url(re.compile(r"/runs/compare/\?run=.+&run=.+"))
    expect(page.locator("#compare-chart polyline")).to_have_count(2)
    differs = page.locator("#compare-table tr.differs", has_text="config.training.learning_rate")
    expect(differs).to_contain_text("0.001")
    expect(differs).to_contain_text("0.01")
    page.check("text=Only differences")
    expect(page.locator("#compare-table")).not_to_contain_text("config.training.batch_size")
