"""Every main page passes its Content-Security-Policy in real Chromium: no inline script,
event handler, inline style or style attribute is blocked (a blocked one is a broken page),
the header is on every answer, and the interactive parts (htmx polling and previews, the
admin's scripts) still work under it."""

import pytest

from runs import services
from runs.models import Metric, RunStatus

from .conftest import py, wait_for
from .test_browser import browser, log_in  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} ` +
                    `at ${e.sourceFile}:${e.lineNumber} (${e.sample})`);
});
"""


@pytest.fixture
def watched(browser, live_server):  # noqa: F811 - the fixture imported above
    """A page that records CSP violations (the DOM event and the console) and page errors."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text}")
            if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text
            else None
        ),
    )
    yield page, problems
    context.close()


def visit(page, problems, path: str) -> None:
    response = page.goto(path)
    assert response.status == 200, (path, response.status)
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self' 'nonce-" in policy, (path, policy)
    page.wait_for_load_state("networkidle")
    problems.extend(f"{path}: {v}" for v in page.evaluate("window.__csp"))


def finished_run_with_metrics(run_factory, user, steps=300):
    run = run_factory(owner=user, mode="local", command=py("print('not started here')"))
    assert services.run_claim(run_id=run.id)
    Metric.objects.bulk_create(
        Metric(run=run, name=name, step=s, value=1.0 / s)
        for s in range(1, steps + 1)
        for name in ("train/loss", "eval/loss")
    )
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    return run


def test_the_main_pages_load_in_chromium_without_a_csp_violation(
    watched, live_server, django_user_model, run_factory, dataset, tiny_model_dir
):
    page, problems = watched
    visit(page, problems, "/accounts/login/")
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    log_in(page, live_server, root)
    first = finished_run_with_metrics(run_factory, root)
    second = finished_run_with_metrics(run_factory, root, steps=200)
    dry = run_factory(owner=root)
    for path in (
        "/",
        "/runs/new/",
        f"/runs/{first.id}/",
        f"/runs/{dry.id}/",
        f"/runs/compare/?run={first.id}&run={second.id}",
        "/datasets/",
        f"/datasets/{dataset.key}/",
        "/datasets/upload/",
        "/models/",
        "/admin/",
        "/admin/runs/tunixrun/",
        f"/admin/runs/tunixrun/{first.id}/change/",
        "/admin/runs/apitoken/add/",
        "/admin/auth/user/",
    ):
        visit(page, problems, path)
    # The run form's htmx preview and field checks run under the policy.
    visit(page, problems, "/runs/new/")
    page.fill("#id_max_steps", "12")
    page.locator("#id_max_steps").blur()
    page.locator("#preview-config").filter(has_text='"max_steps": 12').wait_for()
    problems.extend(page.evaluate("window.__csp"))
    assert problems == []


def test_an_inline_script_is_blocked_and_reported(watched, live_server):
    """The check above can fail: a script without the nonce is refused and recorded."""
    page, problems = watched
    visit(page, problems, "/accounts/login/")
    page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.__ran = true"; document.body.append(s); }"""
    )
    # Not page.wait_for_function: its polling uses eval(), which this very policy refuses.
    wait_for(lambda: page.evaluate("window.__csp.length > 0"), timeout=10, message="a report")
    assert page.evaluate("window.__ran") is None
    assert "script-src" in page.evaluate("window.__csp")[0]
