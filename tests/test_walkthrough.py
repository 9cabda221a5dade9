"""The first hour, in a real browser, on real Tunix: log in, upload a dataset, dry-run, run it
for real (tiny generated model, a few steps), watch it, continue it, cancel a second run,
compare, download a checkpoint. A screenshot of each stop is kept in test-artifacts/ (CI
keeps the folder); look at them when a page changes.
"""

import io
import re
import tarfile
from pathlib import Path

import pytest

from runs.models import TunixRun

from . import test_browser, test_tunix_e2e
from .conftest import SAMPLE

# The fixtures of the browser tests and of the real-Tunix lane, used here together.
browser = test_browser.browser
page = test_browser.page
tiny_model = test_tunix_e2e.tiny_model
ARTIFACTS = test_browser.ARTIFACTS

pytestmark = [
    pytest.mark.tunix,
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]

# Real training on a shared two-core machine: loading and compiling take most of it.
TRAINING = 240_000
STEPS = 8


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"walkthrough-{name}.png"), full_page=True)


def run_id_of(page) -> str:
    return re.search(r"/runs/([0-9a-f-]{36})/", page.url).group(1)


# long: one walk through the product, stop by stop; split, the story would be lost.
def test_the_first_hour_in_a_browser_on_real_tunix(
    page, live_server, user, tiny_model, start_cluster, settings
):
    from playwright.sync_api import expect

    start_cluster(workers=1)

    # Log in.
    page.goto("/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-password-1")
    page.click("button:has-text('Log in')")
    expect(page.locator("h1")).to_have_text("Runs")

    # Upload a dataset.
    page.goto("/datasets/upload/")
    page.set_input_files("#id_file", str(SAMPLE))
    page.fill("#id_name", "walk")
    page.fill("#id_version", "v1")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r"/datasets/walk-v1/$"))
    shot(page, "01-dataset")

    # Dry-run it with the tiny model.
    page.goto("/runs/new/")
    page.select_option("#id_dataset_key", "walk-v1")
    page.fill("#id_model_id", tiny_model)
    page.fill("#id_name", "first")
    for field, value in (
        ("max_steps", STEPS),
        ("eval_every_n_steps", 4),
        ("batch_size", 4),
        ("learning_rate", "0.003"),
        ("max_seq_length", 256),
    ):
        page.fill(f"#id_{field}", str(value))
    page.locator("#id_max_seq_length").blur()
    expect(page.locator("#preview-config")).to_contain_text(f'"max_steps": {STEPS}')
    shot(page, "02-form")
    page.click("#submit-dry-run")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    expect(page.locator("#run-status")).to_have_text("Completed")
    expect(page.locator("#run-for-real")).to_be_enabled()
    shot(page, "03-dry-run")

    # Run it for real, and watch: the banner says queued until the run moves on.
    page.click("#run-for-real")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    first = run_id_of(page)
    expect(page.locator("#run-status")).to_have_text("Running", timeout=TRAINING)
    expect(page.locator("#messages")).to_be_empty()  # no stale "Run queued."
    expect(page.locator("#log-lines")).to_contain_text("Train step", timeout=TRAINING)
    shot(page, "04-running")
    expect(page.locator("#run-status")).to_have_text("Completed", timeout=TRAINING)
    # Tunix's INFO lines (on stderr) are not drawn as errors.
    info = page.locator("#log-lines .lv-info", has_text="Train step").first
    assert info.evaluate("e => getComputedStyle(e).color") != "rgb(253, 162, 155)"
    assert page.locator("#log-lines .lv-error").count() == 0
    # Every recorded series has a chart.
    expect(page.locator("#loss-chart polyline").first).to_be_visible()
    expect(page.locator("#chart-perplexity polyline").first).to_be_visible()
    expect(page.locator(f"#checkpoint-{STEPS}")).to_contain_text("complete")
    shot(page, "05-completed")

    # Continue it: a new run named after its parent, linked both ways, its first
    # evaluation at the resume step, and the parent's curve faded behind its own.
    page.fill("#continue-form input[name=max_steps]", str(STEPS + 4))
    page.click("#continue-form button[type=submit]")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    child = run_id_of(page)
    expect(page.locator("h1")).to_contain_text("first (continued)")
    expect(page.locator("#parent-link")).to_have_attribute("href", f"/runs/{first}/")
    expect(page.locator("#run-status")).to_have_text("Completed", timeout=TRAINING)
    # The launcher states each evaluation (one per-token definition, see README).
    expect(page.locator("#log-lines")).to_contain_text(f"step {STEPS} eval loss")
    expect(page.locator("#log-lines")).not_to_contain_text("No eval examples found")
    expect(page.locator("#loss-chart")).to_contain_text("parent train")
    shot(page, "06-continued")
    page.goto(f"/runs/{first}/")
    expect(page.locator(".child-link")).to_have_attribute("href", f"/runs/{child}/")

    # Run again with many steps, then cancel it while it trains.
    page.click("#run-again")
    page.fill("#id_name", "long one")
    page.fill("#id_max_steps", "5000")
    page.locator("#id_max_steps").blur()
    page.click("#submit-local")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    expect(page.locator("#run-status")).to_have_text("Running", timeout=TRAINING)
    expect(page.locator("#log-lines")).to_contain_text("training loss", timeout=TRAINING)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-run")
    expect(page.locator("#run-status")).to_have_text("Cancelled", timeout=TRAINING)
    expect(page.locator("#messages")).to_be_empty()  # no stale "Cancel requested"
    shot(page, "07-cancelled")

    # Compare the first run with its continuation, picked in the run list.
    page.goto("/")
    page.check(f"#pick-{first}")
    page.check(f"#pick-{child}")
    page.click("text=Compare selected")
    expect(page.locator("#compare-chart polyline").first).to_be_visible()
    expect(page.locator("#compare-perplexity")).to_be_visible()
    shot(page, "08-compare")

    # Download the first run's last checkpoint as .tar.gz.
    page.goto(f"/runs/{first}/")
    with page.expect_download() as download:
        page.click(f"#checkpoint-{STEPS} a")
    data = Path(download.value.path()).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = archive.getnames()
    assert f"checkpoint-{STEPS}/commit_success.txt" in names, names[:20]
    page.locator("#outputs summary").first.click()  # open a folder of the tree
    page.locator("#outputs").screenshot(path=str(ARTIFACTS / "walkthrough-09-outputs.png"))
    assert TunixRun.objects.count() == 4  # the dry-run, first, its continuation, the long one
