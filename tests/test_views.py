"""The HTML pages: each renders whole, and only its fragment for an htmx request."""

import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from runs import selectors, services
from runs.hyperparameters import HYPERPARAMETERS
from runs.models import LogChunk, Metric, RunStatus, TunixRun
from runs.pages.views import HTMX_STOP_POLLING

from .conftest import import_dataset, py

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def launcher_available(settings):
    """A real, importable launcher module: the form then offers "Run with Tunix"."""
    settings.TUNIX_LAUNCHER_MODULE = "tests.programs.short_job"


@pytest.fixture
def launcher_missing(settings):
    settings.TUNIX_LAUNCHER_MODULE = "tests.programs.no_such_launcher"


def form_data(dataset_key="sample-v1", model_id="local:tiny-llama3", **overrides):
    data = {
        "dataset_key": dataset_key,
        "model_id": model_id,
        "name": "",
        "learning_rate": "0.0003",
        "num_epochs": "1",
        "batch_size": "4",
        "max_seq_length": "512",
        "max_steps": "10",
        "lora_rank": "8",
        "lora_alpha": "16",
        "seed": "42",
        "eval_every_n_steps": "5",
        "timeout_seconds": "600",
        "mode": "dry-run",
    }
    # Settings added later: their defaults, as the form shows them.
    for name, bound in HYPERPARAMETERS.items():
        data.setdefault(name, "" if bound.default is None else str(bound.default))
    data.update(overrides)
    return data


def running_run(run_factory, **kwargs):
    run = run_factory(mode="local", command=py("print('never started here')"), **kwargs)
    assert services.run_claim(run_id=run.id)
    run.refresh_from_db()
    return run


def add_chunks(run, *texts, stream="stdout"):
    last = LogChunk.objects.filter(run=run).count()
    for offset, text in enumerate(texts, start=1):
        LogChunk.objects.create(run=run, seq=last + offset, stream=stream, text=text)


def is_full_page(response) -> bool:
    return b"<html" in response.content and b'class="top"' in response.content


# --- access -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/runs/new/",
        "/runs/compare/",
        "/runs/7c9e6679-7425-40de-944b-e07fc1f90ae7/",
        "/runs/7c9e6679-7425-40de-944b-e07fc1f90ae7/log.txt",
    ],
)
def test_every_page_sends_an_anonymous_visitor_to_the_login_page(url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_the_login_page_logs_in_and_the_layout_shows_the_navigation(user, staff_user):
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="username"' in page.content
    response = client.post(
        reverse("login"), {"username": "alice", "password": "alice-password-1"}, follow=True
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert 'href="/runs/new/"' in html and "Log out" in html
    assert "/admin/" not in html  # staff only
    staff = Client()
    staff.force_login(staff_user)
    assert b'href="/admin/"' in staff.get("/").content


def test_htmx_is_served_locally_and_sends_csrf_in_a_header(client):
    html = client.get("/").content.decode()
    assert re.search(r'<script src="/static/django_htmx/htmx-2\.min\.js', html)
    assert 'hx-headers=\'{"X-CSRFToken": "' in html
    assert "//cdn" not in html and "unpkg" not in html


def test_posts_without_a_csrf_token_are_refused(user, run_factory):
    run = running_run(run_factory)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(reverse("runs:cancel", args=[run.id])).status_code == 403
    run.refresh_from_db()
    assert run.cancel_requested_at is None


# --- the run list -----------------------------------------------------------------------


def test_the_run_list_renders_whole_and_only_its_results_for_htmx(client, run_factory):
    run = run_factory(name="first-run")
    page = client.get("/")
    assert page.status_code == 200 and is_full_page(page)
    assert "first-run" in page.content.decode()
    fragment = client.get("/", headers=HTMX)
    html = fragment.content.decode()
    assert fragment.status_code == 200 and not is_full_page(fragment)
    assert html.lstrip().startswith('<section id="results"')
    assert f'id="row-{run.id}"' in html
    assert "HX-Request" in fragment["Vary"]


def test_the_run_list_is_newest_first_and_paged(client, run_factory):
    for index in range(27):
        run_factory(name=f"run-{index:02d}")
    first = client.get("/").content.decode()
    assert first.index("run-26") < first.index("run-25")
    assert "run-01" not in first and "Page 1 of 2" in first
    second = client.get("/?page=2").content.decode()
    assert "run-01" in second and "run-00" in second and "run-26" not in second


def test_the_run_list_filters_by_status_mode_dataset_model_and_text(client, run_factory):
    import_dataset(name="other", version="v2")
    dry = run_factory(name="alpha-dry")
    local = running_run(run_factory, name="beta-local")
    other = run_factory(name="gamma", dataset_key="other-v2")

    def names(query):
        html = client.get(f"/?{query}", headers=HTMX).content.decode()
        return {name for name in ("alpha-dry", "beta-local", "gamma") if name in html}

    assert names("status=running") == {"beta-local"}
    assert names("mode=dry-run") == {"alpha-dry", "gamma"}
    assert names("dataset=other-v2") == {"gamma"}
    assert names("model=local:tiny-llama3") == {"alpha-dry", "beta-local", "gamma"}
    assert names("q=alph") == {"alpha-dry"}
    assert names("status=failed") == set()
    assert names(f"q={other.id}") == {"gamma"}
    assert dry and local


def test_the_run_list_shows_only_my_runs_unless_i_am_staff(
    client, run_factory, other_user, staff_user
):
    run_factory(name="mine")
    run_factory(name="theirs", owner=other_user)
    html = client.get("/").content.decode()
    assert "mine" in html and "theirs" not in html
    staff = Client()
    staff.force_login(staff_user)
    html = staff.get("/").content.decode()
    assert "mine" in html and "theirs" in html


def test_an_active_row_polls_itself_and_a_final_row_answers_286(client, run_factory):
    run = running_run(run_factory)
    html = client.get("/").content.decode()
    assert f'hx-get="/runs/{run.id}/row/"' in html
    row = client.get(reverse("runs:row", args=[run.id]), headers=HTMX)
    assert row.status_code == 200 and 'hx-trigger="every 2s"' in row.content.decode()
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    row = client.get(reverse("runs:row", args=[run.id]), headers=HTMX)
    assert row.status_code == HTMX_STOP_POLLING
    assert "Completed" in row.content.decode() and "hx-trigger" not in row.content.decode()
    # Without htmx the row address leads to the run's page.
    assert client.get(reverse("runs:row", args=[run.id])).status_code == 302


# --- the run form -----------------------------------------------------------------------


def test_the_form_shows_datasets_with_row_counts_models_and_bounds(
    client, dataset, tiny_model_dir, launcher_missing
):
    page = client.get("/runs/new/")
    html = page.content.decode()
    assert page.status_code == 200 and is_full_page(page)
    assert "sample-v1 (240 rows, Reasoning traces)" in html
    assert '<option value="local:tiny-llama3">' in html
    assert re.search(r'name="learning_rate"[^>]*max="1\.0"', html)
    assert re.search(r'name="learning_rate"[^>]*min="1e-08"', html)
    assert "Rows per training step. 1 to 1,024." in html
    assert "Seed for shuffling and initialisation. 0 to 2,147,483,647." in html
    assert "Peak learning rate of AdamW. 1e-8 to 1." in html
    assert 'hx-post="/runs/new/validate/"' in html
    # The preview of the defaults is already there, without JavaScript.
    assert 'id="preview-config"' in html and "&quot;learning_rate&quot;: 0.0003" in html


def test_the_form_for_htmx_is_only_the_form(client, dataset, tiny_model_dir):
    fragment = client.get("/runs/new/", headers=HTMX)
    html = fragment.content.decode()
    assert not is_full_page(fragment)
    assert html.lstrip().startswith('<form id="run-form"')


def test_run_with_tunix_is_disabled_with_the_reason_when_tunix_is_unavailable(
    client, dataset, tiny_model_dir, launcher_missing
):
    html = client.get("/runs/new/").content.decode()
    assert re.search(r'<button[^>]*value="local"[^>]*disabled', html)
    assert "Run with Tunix is unavailable" in html
    assert "tests.programs.no_such_launcher cannot be found" in html


def test_run_with_tunix_is_enabled_when_the_launcher_is_available(
    client, dataset, tiny_model_dir, launcher_available
):
    html = client.get("/runs/new/").content.decode()
    button = re.search(r'<button[^>]*value="local"[^>]*>', html).group(0)
    assert "disabled" not in button


def validate(client, field, **overrides):
    return client.post(
        reverse("runs:validate"),
        form_data(**overrides),
        headers={**HTMX, "HX-Trigger-Name": field},
    )


def test_a_field_is_validated_alone_and_answers_with_its_error_list(
    client, dataset, tiny_model_dir
):
    response = validate(client, "learning_rate", learning_rate="5")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.startswith('<ul id="errors-learning_rate"')
    assert "Must be between 1e-8 and 1." in html
    ok = validate(client, "learning_rate").content.decode()
    assert ok == '<ul id="errors-learning_rate" class="errors" aria-live="polite"></ul>'
    # A field the service checks (the model reference) gets the service's own message, even
    # while another field is wrong.
    html = validate(client, "model_id", model_id="local:nope", batch_size="0").content.decode()
    assert "No local model &#x27;nope&#x27;" in html
    html = validate(client, "model_id", model_id="--help").content.decode()
    assert "Unrecognised model reference" in html
    html = validate(client, "max_steps", max_steps="2.5").content.decode()
    assert "Must be a whole number." in html
    assert validate(client, "password").status_code == 400


def test_the_preview_shows_the_exact_config_and_command_and_stores_nothing(
    client, dataset, tiny_model_dir
):
    response = client.post(
        reverse("runs:preview"), form_data(max_steps="33", learning_rate="0.002"), headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200 and not is_full_page(response)
    assert html.lstrip().startswith('<div id="preview-body">')
    assert "&quot;max_steps&quot;: 33" in html and "&quot;learning_rate&quot;: 0.002" in html
    assert " -m runs.launcher " in html and "tunix_config.json" in html
    assert not TunixRun.objects.exists()
    bad = client.post(reverse("runs:preview"), form_data(batch_size="0"), headers=HTMX)
    assert "Fix the fields" in bad.content.decode()


def test_submitting_a_dry_run_lands_on_its_page_with_the_config(client, dataset, tiny_model_dir):
    response = client.post("/runs/new/", form_data(name="my dry run", max_steps="17"))
    run = TunixRun.objects.get()
    assert response.status_code == 302 and response.url == f"/runs/{run.id}/"
    assert run.mode == "dry-run" and run.status == RunStatus.COMPLETED
    assert run.max_steps == 17 and run.name == "my dry run"
    page = client.get(response.url).content.decode()
    assert "Dry-run finished" in page
    assert "&quot;max_steps&quot;: 17" in page and "tunix_config.json" in page


def test_an_invalid_submission_rerenders_the_form_with_field_errors_and_stores_nothing(
    client, dataset, tiny_model_dir
):
    response = client.post(
        "/runs/new/", form_data(batch_size="0", model_id="local:missing", name="keep me")
    )
    html = response.content.decode()
    assert response.status_code == 422 and is_full_page(response)
    assert "Must be between 1 and 1,024." in html
    assert 'value="keep me"' in html  # what the user typed is kept
    assert not TunixRun.objects.exists()
    # Errors only the service finds are put on their fields too.
    response = client.post("/runs/new/", form_data(model_id="local:missing"))
    assert response.status_code == 422
    assert re.search(r'id="errors-model_id"[^>]*><li>No local model', response.content.decode())


def test_a_submission_keeps_every_error_the_live_checks_showed_with_a_summary_on_top(
    client, dataset, tiny_model_dir
):
    # The model is wrong (only the service knows) and so is a number (the form knows): both
    # stay on their fields, and the summary lists both with links to the inputs.
    response = client.post(
        "/runs/new/", form_data(model_id="local:missing", batch_size="0", seed="x")
    )
    html = response.content.decode()
    assert response.status_code == 422
    assert re.search(r'id="errors-model_id"[^>]*><li>No local model', html)
    assert re.search(r'id="errors-batch_size"[^>]*><li>Must be between 1 and 1,024\.', html)
    assert re.search(r'id="errors-seed"[^>]*><li>Must be a whole number\.', html)
    summary = html[
        html.index('id="error-summary"') : html.index("</div>", html.index('id="error-summary"'))
    ]
    assert html.index('id="error-summary"') < html.index('id="field-dataset_key"')
    assert "Fix 3 problems before this can run" in summary
    for field in ("model_id", "batch_size", "seed"):
        assert f'href="#id_{field}"' in summary
    # Our words, not Django's.
    for django_words in ("Ensure this value", "Enter a whole number", "Select a valid choice"):
        assert django_words not in html
    missing = client.post("/runs/new/", form_data(dataset_key="ghost-v9", model_id=""))
    text = missing.content.decode()
    assert "There is no dataset ghost-v9: choose one from the list." in text
    assert "Enter a model reference." in text


def test_a_local_run_while_tunix_is_unavailable_is_a_501_message(
    client, dataset, tiny_model_dir, launcher_missing
):
    response = client.post("/runs/new/", form_data(mode="local"))
    assert response.status_code == 501
    assert "cannot be found" in response.content.decode()
    assert not TunixRun.objects.exists()


def test_a_full_queue_is_a_429_message(
    client, dataset, tiny_model_dir, launcher_available, settings
):
    settings.MAX_QUEUED_RUNS_PER_USER = 0
    response = client.post("/runs/new/", form_data(mode="local"))
    assert response.status_code == 429
    assert "queued runs" in response.content.decode()
    assert not TunixRun.objects.exists()


def test_a_local_run_with_an_available_launcher_is_queued(
    client, dataset, tiny_model_dir, launcher_available
):
    response = client.post("/runs/new/", form_data(mode="local"), follow=True)
    run = TunixRun.objects.get()
    assert run.mode == "local" and run.status == RunStatus.PENDING
    assert run.command[1:3] == ["-m", "tests.programs.short_job"]
    html = response.content.decode()
    assert "Run queued." in html and 'hx-trigger="every 2s"' in html


def test_run_again_opens_the_form_prefilled_from_the_run(client, run_factory):
    run = run_factory(name="original", max_steps=23, learning_rate=0.005, batch_size=2)
    html = client.get(f"/runs/new/?from={run.id}").content.decode()
    assert "Pre-filled from run" in html
    assert re.search(r'name="max_steps" value="23"', html)
    assert re.search(r'name="learning_rate" value="0.005"', html)
    assert re.search(r'name="batch_size" value="2"', html)
    assert 'value="original"' in html
    assert client.get(f"/runs/new/?from={uuid.uuid4()}").status_code == 404


# --- the run page -----------------------------------------------------------------------


def test_the_run_page_shows_status_progress_log_chart_config_and_outputs(
    client, run_factory, settings
):
    run = running_run(run_factory)
    TunixRun.objects.filter(id=run.id).update(phase="training", progress_step=3, progress_total=10)
    add_chunks(run, "first line\n", "second line\n")
    Metric.objects.create(run=run, name="train/loss", step=1, value=2.5)
    Metric.objects.create(run=run, name="train/loss", step=3, value=1.5)
    Metric.objects.create(run=run, name="eval/loss", step=3, value=1.7)
    folder = settings.ARTIFACTS_DIR / run.output_dir
    (folder / "checkpoints" / "3").mkdir(parents=True)
    (folder / "checkpoints" / "3" / "commit_success.txt").write_text("ok")
    page = client.get(f"/runs/{run.id}/")
    html = page.content.decode()
    assert page.status_code == 200 and is_full_page(page)
    assert 'id="run-status">Running<' in html and ">training<" in html
    assert (
        '<progress id="run-progress" aria-label="Training progress" max="10" value="3">' in html
        and "step 3 / 10" in html
    )
    assert "first line" in html and "second line" in html
    # The poller asks for chunks after the last one shown and says which points it has
    # (the metric version) and which status it showed (a banner about an earlier status
    # then goes away).
    version = selectors.run_metric_version(run)
    assert f'hx-get="/runs/{run.id}/?after=2&amp;m={version}&amp;s=running"' in html
    assert "every 2s" in html
    assert "<polyline" in html and 'aria-label="Loss by step"' in html
    assert ">train</text>" in html and ">eval</text>" in html
    assert "&quot;max_seq_length&quot;" in html and "never started here" in html
    assert "checkpoints/3" in html and "complete" in html
    assert f'href="/runs/{run.id}/log.txt"' in html
    assert 'data-confirm="Cancel this run?' in html and f"/runs/new/?from={run.id}" in html
    assert "delete-run" not in html  # only finished runs can be deleted


def test_a_poll_returns_only_the_chunks_after_the_cursor_with_the_new_cursor(client, run_factory):
    run = running_run(run_factory)
    add_chunks(run, "old one\n", "old two\n")
    response = client.get(f"/runs/{run.id}/?after=2&m=0", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and not is_full_page(response)
    assert html.lstrip().startswith('<section id="status"')
    assert "old one" not in html and "hx-swap-oob" not in html
    assert "?after=2&amp;m=0&amp;s=running" in html
    add_chunks(run, "new three\n", "new four\n")
    html = client.get(f"/runs/{run.id}/?after=2&m=0", headers=HTMX).content.decode()
    # (not just "old": the page's random CSRF token may contain those letters)
    assert "old one" not in html and "old two" not in html
    assert '<code hx-swap-oob="beforeend:#log-lines">' in html
    assert 'data-seq="3"><span class="lv-plain">new three' in html
    assert 'data-seq="4"><span class="lv-plain">new four' in html
    assert "?after=4&amp;m=0&amp;s=running" in html


def test_a_poll_redraws_the_chart_only_when_points_were_added(client, run_factory):
    run = running_run(run_factory)
    html = client.get(f"/runs/{run.id}/?after=0&m=0", headers=HTMX).content.decode()
    assert 'id="loss-chart"' not in html
    Metric.objects.create(run=run, name="train/loss", step=1, value=2.0)
    html = client.get(f"/runs/{run.id}/?after=0&m=0", headers=HTMX).content.decode()
    assert '<div id="loss-chart" class="chart-box" hx-swap-oob="true">' in html
    assert f"m={selectors.run_metric_version(run)}" in html
    version = selectors.run_metric_version(run)
    html = client.get(f"/runs/{run.id}/?after=0&m={version}", headers=HTMX).content.decode()
    assert 'id="loss-chart"' not in html


@pytest.mark.parametrize(
    "status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED]
)
def test_polling_stops_with_286_once_the_run_is_final(client, run_factory, status):
    run = running_run(run_factory)
    assert client.get(f"/runs/{run.id}/?after=0", headers=HTMX).status_code == 200
    add_chunks(run, "last words\n")
    services.run_finish(run_id=run.id, status=status, exit_code=3, message="the end")
    response = client.get(f"/runs/{run.id}/?after=0", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == HTMX_STOP_POLLING
    assert "last words" in html  # the final answer carries the last chunks
    assert "hx-trigger" not in html.split("</section>")[0]
    assert 'id="run-exit-code">3<' in html and "the end" in html
    assert '<section id="outputs" class="card" hx-swap-oob="true">' in html
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert 'hx-trigger="every 2s"' not in page and "delete-run" in page


def test_a_final_run_keeps_polling_until_its_log_has_been_sent(client, run_factory, monkeypatch):
    monkeypatch.setattr("runs.pages.views.LOG_POLL_CHUNKS", 2)
    run = running_run(run_factory)
    add_chunks(run, "a\n", "b\n", "c\n")
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    first = client.get(f"/runs/{run.id}/?after=0", headers=HTMX)
    assert first.status_code == 200 and "?after=2" in first.content.decode()
    second = client.get(f"/runs/{run.id}/?after=2", headers=HTMX)
    assert second.status_code == HTMX_STOP_POLLING
    assert 'data-seq="3"><span class="lv-plain">c' in second.content.decode()


def test_training_output_with_a_script_tag_is_shown_escaped(client, run_factory):
    run = running_run(run_factory)
    add_chunks(run, f"{SCRIPT}\n", stream="stderr")
    Metric.objects.create(run=run, name="train/loss", step=1, value=1.0)
    services.run_finish(run_id=run.id, status=RunStatus.FAILED, exit_code=1, message=SCRIPT)
    for response in (
        client.get(f"/runs/{run.id}/"),
        client.get(f"/runs/{run.id}/?after=0", headers=HTMX),
    ):
        html = response.content.decode()
        assert SCRIPT not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_a_dry_run_page_has_no_log_or_chart_and_offers_delete(client, run_factory):
    run = run_factory()
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert 'id="log"' not in html and 'id="loss-chart"' not in html
    assert "Dry-run passed" in html and "delete-run" in html
    assert "hx-trigger" not in html


def test_an_unknown_run_is_a_404_page_and_someone_elses_run_a_403_page(
    client, run_factory, other_user
):
    missing = client.get(f"/runs/{uuid.uuid4()}/")
    assert missing.status_code == 404
    html = missing.content.decode()
    assert "Not found" in html and "No such run." in html and 'class="top"' in html
    assert "Traceback" not in html
    assert client.get("/runs/not-a-uuid/").status_code == 404
    theirs = run_factory(owner=other_user)
    forbidden = client.get(f"/runs/{theirs.id}/")
    assert forbidden.status_code == 403
    assert "belongs to another user" in forbidden.content.decode()
    assert client.get(f"/runs/{theirs.id}/log.txt").status_code == 403


def test_cancel_stops_a_pending_run_and_a_final_run_gets_a_message(client, run_factory):
    run = run_factory(mode="local", command=py("print(1)"))
    response = client.post(f"/runs/{run.id}/cancel/", follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "The run was cancelled." in response.content.decode()
    response = client.post(f"/runs/{run.id}/cancel/", follow=True)
    assert "already cancelled; there is nothing to cancel" in response.content.decode()
    assert client.get(f"/runs/{run.id}/cancel/").status_code == 405


def test_cancel_of_a_running_run_records_the_request(client, run_factory):
    run = running_run(run_factory)
    response = client.post(f"/runs/{run.id}/cancel/", follow=True)
    run.refresh_from_db()
    assert run.cancel_requested_at is not None and run.status == RunStatus.RUNNING
    assert "Cancel requested" in response.content.decode()
    assert "cancel requested, stopping" in response.content.decode()


def test_delete_removes_a_finished_run_and_refuses_an_active_one(client, run_factory, settings):
    active = running_run(run_factory)
    response = client.post(f"/runs/{active.id}/delete/", follow=True)
    assert "cancel it before deleting it" in response.content.decode()
    assert TunixRun.objects.filter(id=active.id).exists()
    services.run_finish(run_id=active.id, status=RunStatus.FAILED)
    folder = settings.ARTIFACTS_DIR / active.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out.txt").write_text("x")
    response = client.post(f"/runs/{active.id}/delete/")
    assert response.status_code == 302 and response.url == "/"
    assert not TunixRun.objects.filter(id=active.id).exists() and not folder.exists()
    assert client.post(f"/runs/{active.id}/delete/").status_code == 404


def test_the_full_log_downloads_as_text(client, run_factory):
    run = running_run(run_factory)
    add_chunks(run, *[f"line {i}\n" for i in range(1, 701)])
    response = client.get(f"/runs/{run.id}/log.txt")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    assert text.startswith("line 1\n") and text.endswith("line 700\n")
    # The page itself shows only the tail and says so.
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert "line 700" in html and ">line 1\n<" not in html and "earlier lines" in html


def test_output_files_download_and_stay_inside_the_run_folder(client, run_factory, settings):
    run = running_run(run_factory)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    folder = settings.ARTIFACTS_DIR / run.output_dir
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "summary.json").write_text('{"loss": 1}')
    (settings.ARTIFACTS_DIR / "secret.txt").write_text("secret")
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert f'href="/runs/{run.id}/files/metrics/summary.json"' in html
    response = client.get(f"/runs/{run.id}/files/metrics/summary.json")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b'{"loss": 1}'
    for bad in ("../../secret.txt", "metrics/../../../secret.txt", "%2e%2e/secret.txt", "nope"):
        assert client.get(f"/runs/{run.id}/files/{bad}").status_code == 404


# --- compare ----------------------------------------------------------------------------


def test_compare_shows_configs_side_by_side_with_differences_and_overlaid_losses(
    client, run_factory
):
    first = run_factory(name="lr-small", learning_rate=0.001)
    second = run_factory(name="lr-big", learning_rate=0.01)
    for run, scale in ((first, 1.0), (second, 2.0)):
        for step in (1, 2, 3):
            Metric.objects.create(run=run, name="train/loss", step=step, value=scale / step)
    page = client.get(f"/runs/compare/?run={first.id}&run={second.id}")
    html = page.content.decode()
    assert page.status_code == 200 and is_full_page(page)
    assert ">lr-small train</text>" in html and ">lr-big train</text>" in html
    assert html.count("<polyline") == 2
    row = re.search(
        r'<tr class="differs"><th scope="row"><code>config\.training\.learning_rate'
        r".*?</tr>",
        html,
        re.S,
    )
    assert row and "0.001" in row.group(0) and "0.01" in row.group(0)
    same = re.search(r"<tr><th scope=\"row\"><code>config\.training\.batch_size.*?</tr>", html)
    assert same  # equal values are not highlighted
    only = client.get(f"/runs/compare/?run={first.id}&run={second.id}&only=diff", headers=HTMX)
    html = only.content.decode()
    assert not is_full_page(only) and html.lstrip().startswith('<div id="compare-body">')
    assert "config.training.learning_rate" in html and "config.training.batch_size" not in html


def test_compare_asks_for_two_runs_and_reports_unknown_ones(client, run_factory, other_user):
    mine = run_factory()
    theirs = run_factory(owner=other_user)
    response = client.get(f"/runs/compare/?run={mine.id}&run={theirs.id}&run=junk")
    html = response.content.decode()
    assert response.status_code == 200
    assert "Pick at least two runs" in html
    assert html.count("was not found") == 2


def test_the_run_list_lets_me_pick_runs_to_compare(client, run_factory):
    run = run_factory()
    html = client.get("/").content.decode()
    assert '<form id="compare-form" method="get" action="/runs/compare/">' in html
    assert f'name="run" value="{run.id}"' in html and 'form="compare-form"' in html


def test_a_poll_after_the_session_ended_sends_the_whole_page_to_the_login_form(run_factory):
    run = running_run(run_factory)
    anonymous = Client()
    response = anonymous.get(
        f"/runs/{run.id}/?after=0",
        headers={**HTMX, "HX-Current-URL": f"http://testserver/runs/{run.id}/"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/accounts/login/?next=%2Fruns%2F{run.id}%2F"
    assert response.content == b""


def test_a_poll_for_a_run_deleted_meanwhile_stops_and_says_so(client, run_factory):
    run = run_factory()
    services.run_delete(run=run)
    for url in (f"/runs/{run.id}/?after=0", f"/runs/{run.id}/row/"):
        response = client.get(url, headers=HTMX)
        assert response.status_code == HTMX_STOP_POLLING
        assert "deleted" in response.content.decode() or "no longer exists" in (
            response.content.decode()
        )
    assert client.get(f"/runs/{run.id}/").status_code == 404


def test_the_navigation_links_to_the_datasets(client):
    assert '<a href="/datasets/">Datasets</a>' in client.get("/").content.decode()
