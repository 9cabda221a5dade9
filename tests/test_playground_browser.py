"""Using a trained run in a real browser, on real Tunix: a tiny run trained through the API is
evaluated from its page (the scores, the rows and their filters), then asked two prompts in
the playground (both models answer; the second finds them loaded). Screenshots of each stop
are kept in test-artifacts/ (playground-*.png); look at them when the page changes."""

import pytest

from runs.models import RunKind, RunStatus, TunixRun

from . import test_browser, test_tunix_e2e
from .conftest import wait_for

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

# Loading and compiling on a shared two-core machine take most of each step.
SLOW = 300_000


def shot(page, name, card):
    """The card alone: a full-page picture would show the sticky header over it."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(card).screenshot(path=str(ARTIFACTS / f"playground-{name}.png"))


def ask(page, prompt: str):
    page.fill("#playground-prompt", prompt)
    page.click("#playground-ask")


# long: one story (evaluate, filter, ask twice); its stops share the trained run.
def test_evaluate_and_ask_a_trained_run_in_the_browser(
    page, api, live_server, user, dataset, tiny_model, start_cluster
):
    from playwright.sync_api import expect

    start_cluster(workers=1, TUNIXRT_QUEUE_POLL_SECONDS="0.05")
    response = api.post(
        "/api/tunix/run",
        {"dataset_key": dataset.key, "model_id": tiny_model, "dry_run": False}
        | test_tunix_e2e.TRAIN
        | {"max_steps": 8},
    )
    run = test_tunix_e2e.finished(response.json()["id"])
    assert run.status == RunStatus.COMPLETED, test_tunix_e2e.log_text(run)[-3000:]

    test_browser.log_in(page, live_server, user)
    page.goto(f"/runs/{run.id}/")
    expect(page.locator("#evaluation-none")).to_be_visible()
    page.fill("#evaluate-form input[name=max_rows]", "4")
    page.fill("#evaluate-form input[name=max_new_tokens]", "8")
    page.click("#evaluate-run")
    expect(page.locator("#evaluation-status")).to_be_visible()
    shot(page, "1-evaluating", "#evaluation")
    # The card follows the evaluation until it ends, then shows its scores and rows.
    expect(page.locator("#evaluation-scores")).to_be_visible(timeout=SLOW)
    job = TunixRun.objects.get(source=run, kind=RunKind.EVALUATE)
    assert job.status == RunStatus.COMPLETED, test_tunix_e2e.log_text(job)[-3000:]
    expect(page.locator("#evaluation-scores")).to_contain_text("answer_match")
    evaluated = job.evaluation_rows.count()
    assert 0 < evaluated <= 4
    expect(page.locator("#evaluation-rows tbody tr")).to_have_count(evaluated)
    shot(page, "2-evaluated", "#evaluation")
    counts = {}
    for change in ("better", "worse", "still_wrong"):
        link = page.locator(f"#filter-{change}")
        counts[change] = int(link.inner_text().rsplit("(", 1)[1].rstrip(")"))
        link.click()
        expect(page.locator(f"#filter-{change}")).to_have_class("button current")
        rows = page.locator("#evaluation-rows tbody tr")
        if counts[change]:
            expect(rows).to_have_count(counts[change])
            expect(page.locator(f"#evaluation-rows tbody tr.change-{change}")).to_have_count(
                counts[change]
            )
        else:
            expect(rows).to_have_text("No rows in this group.")
    shot(page, "3-filtered", "#evaluation")
    assert sum(counts.values()) <= evaluated  # the rest stayed right
    page.click("#filter-all")
    expect(page.locator("#evaluation-rows tbody tr")).to_have_count(evaluated)

    # The playground: the first prompt loads both models (the page says so while it waits).
    page.fill("#playground-form input[name=max_new_tokens]", "8")
    page.fill("#playground-prompt", "What is 2 + 3?")
    page.click("#playground-show-rendered")
    expect(page.locator("#rendered-prompt")).to_contain_text("<|begin_of_text|>")
    expect(page.locator("#rendered-prompt")).to_contain_text("What is 2 + 3?")
    page.click("#playground-ask")
    expect(page.locator("#prompt-waiting")).to_contain_text("loads both models")
    shot(page, "4-waiting", "#playground")
    expect(page.locator("#answer-tuned")).to_be_visible(timeout=SLOW)
    expect(page.locator("#prompt-timing")).to_contain_text("loaded the models")
    assert page.locator("#answer-tuned").inner_text() and page.locator("#answer-base").inner_text()
    shot(page, "5-first-answer", "#playground")

    ask(page, "What is 2 + 4?")
    expect(page.locator("#rendered-prompt")).to_be_hidden()  # it showed the first prompt
    second = wait_for(lambda: run.prompts.filter(prompt="What is 2 + 4?").first())
    answered = page.locator(f"#prompt-{second.id}[data-status=done]")
    expect(answered).to_be_visible(timeout=60_000)
    expect(answered.locator("#prompt-timing")).not_to_contain_text("loaded")
    second.refresh_from_db()
    assert not second.cold
    shot(page, "6-second-answer", "#playground")
