"""The run page's parts: log lines coloured by level, a chart for every recorded series, the
output folder as a tree with checkpoint steps as rows, banners that follow the live status,
continued runs, and "Run this for real" on a dry-run."""

import io
import os
import tarfile
import xml.etree.ElementTree as ET

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from runs import services, storage, training
from runs.models import LogChunk, Metric, RunMode, RunStatus, TunixRun
from runs.pages import charts, logview

from .conftest import py

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


def running_run(run_factory, **kwargs):
    run = run_factory(mode="local", command=py("print('never started here')"), **kwargs)
    assert services.run_claim(run_id=run.id)
    run.refresh_from_db()
    return run


def finished_run(run_factory, *, status=RunStatus.COMPLETED, **kwargs):
    run = running_run(run_factory, **kwargs)
    services.run_finish(run_id=run.id, status=status, exit_code=0)
    run.refresh_from_db()
    return run


def add_chunks(run, *texts, stream="stderr"):
    last = LogChunk.objects.filter(run=run).count()
    for offset, text in enumerate(texts, start=1):
        LogChunk.objects.create(run=run, seq=last + offset, stream=stream, text=text)


def add_series(run, name, values, *, first_step=1):
    Metric.objects.bulk_create(
        Metric(run=run, name=name, step=first_step + i, value=v) for i, v in enumerate(values)
    )


def write_checkpoint(folder, step, *, files=3, complete=True, size=100):
    step_dir = folder / "checkpoints" / str(step)
    (step_dir / "model_params").mkdir(parents=True)
    for index in range(files):
        (step_dir / "model_params" / f"array_{index}").write_bytes(b"x" * size)
    if complete:
        (step_dir / "commit_success.txt").write_text("ok")


# --- 1. the log, coloured by level --------------------------------------------------------

TUNIX_LOG = (
    "2026-12-01 21:38:43,269 I absl: Train step 3 training loss: 5.64\n"
    "I0612 12:34:56.123456 140234 peft_trainer.py:123] Running evaluation on train step 4.\n"
    "2026-12-01 21:38:44,001 W absl: something to look at\n"
    "  the rest of that warning\n"
    "WARNING:jax:a Python logging warning\n"
    "/x/y.py:3: DeprecationWarning: old API\n"
    "E0612 12:34:57.000000 140234 xla.cc:1] an absl error\n"
    "Traceback (most recent call last):\n"
    '  File "train.py", line 1, in <module>\n'
    "ValueError: bad value\n"
    "plain output again\n"
)


def test_log_lines_are_labelled_by_their_level_not_their_stream():
    [chunk] = logview.with_levels([{"seq": 1, "stream": "stderr", "text": TUNIX_LOG}])
    levels = [(level, text.splitlines()[0][:24]) for level, text in chunk["lines"]]
    assert levels == [
        ("info", "2026-12-01 21:38:43,269 "),
        ("warning", "2026-12-01 21:38:44,001 "),
        ("error", "E0612 12:34:57.000000 14"),
        ("plain", "plain output again"),
    ]
    # Runs of one level are joined: the two info lines, the four kinds of warning lines
    # (with the indented continuation), and the absl error with the whole traceback.
    assert chunk["lines"][1][1].count("\n") == 4
    assert chunk["lines"][2][1].endswith("ValueError: bad value\n")
    system = logview.with_levels([{"seq": 2, "stream": "system", "text": "[tunix-rt] stop\n"}])
    assert system[0]["lines"] == [("note", "[tunix-rt] stop\n")]


def test_a_traceback_split_over_chunks_stays_an_error_on_the_page_and_in_a_poll(
    client, run_factory
):
    run = running_run(run_factory)
    add_chunks(run, "ok line\nTraceback (most recent call last):\n", '  File "a.py", line 2\n')
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert 'data-seq="2"><span class="lv-error">  File' in html
    assert '<span class="lv-plain">ok line\n</span><span class="lv-error">Traceback' in html
    add_chunks(run, "KeyError: 'x'\nback to normal\n")
    # The poll sends only chunk 3, and still knows it continues chunk 2's traceback.
    poll = client.get(f"/runs/{run.id}/?after=2&m=0&s=running", headers=HTMX).content.decode()
    assert "Traceback" not in poll
    assert (
        '<span data-seq="3"><span class="lv-error">KeyError: &#x27;x&#x27;\n</span>'
        '<span class="lv-plain">back to normal\n</span></span>'
    ) in poll


def test_a_level_never_unescapes_the_text(client, run_factory):
    run = running_run(run_factory)
    add_chunks(run, "ERROR <script>alert(1)</script>\n")
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert "<script>alert(1)" not in html
    assert '<span class="lv-error">ERROR &lt;script&gt;alert(1)&lt;/script&gt;' in html


# --- 2. charts of every recorded series ---------------------------------------------------


def test_an_ema_of_a_constant_is_that_constant_and_it_lags_a_step():
    assert [round(y, 9) for _, y in charts.ema([(1, 2.0), (2, 2.0), (3, 2.0)])] == [2, 2, 2]
    smoothed = charts.ema([(1, 0.0), (2, 10.0)])
    assert smoothed[0] == (1, 0.0) and 0 < smoothed[1][1] < 10


def test_the_run_page_draws_a_chart_for_every_recorded_series(client, run_factory):
    run = finished_run(run_factory)
    noisy = [3 - 0.05 * i + (0.3 if i % 2 else -0.3) for i in range(30)]
    add_series(run, "train/loss", noisy)
    add_series(run, "eval/loss", [2.9, 2.5, 2.2], first_step=10)
    add_series(run, "train/perplexity", [20 - i * 0.3 for i in range(30)])
    add_series(run, "train/learning_rate", [1e-3 * min(1, (i + 1) / 10) for i in range(30)])
    add_series(run, "train/grad_norm", [1 + (i % 3) for i in range(30)])
    add_series(run, "train/tokens_per_second", [900 + i for i in range(30)])
    html = client.get(f"/runs/{run.id}/").content.decode()
    for key in ("perplexity", "learning_rate", "grad_norm", "tokens_per_second"):
        assert f'id="chart-{key}"' in html, key
    assert ">Gradient norm<" in html and ">Learning rate<" in html
    assert "exponential moving average" in html
    panels = {p.key: p for p in charts.run_panels(services_metric_series(run))}
    loss = ET.fromstring(str(panels["loss"].svg))  # noqa: S314 - our own output
    lines = loss.findall(f"{SVG}polyline")
    # train: raw (faint, not in the legend) under its EMA; eval: dashed.
    assert [line.get("stroke-opacity") for line in lines] == ["0.30", None, None]
    assert lines[2].get("stroke-dasharray") == "6 4"
    legend = [t.text for t in loss.iter(f"{SVG}text") if t.get("class") == "legend"]
    assert legend == ["train (EMA)", "eval"]
    # A schedule is drawn as it is, never smoothed.
    rate = ET.fromstring(str(panels["learning_rate"].svg))  # noqa: S314
    assert len(rate.findall(f"{SVG}polyline")) == 1


def services_metric_series(run):
    from runs import selectors

    return selectors.run_metric_series(run)


def test_a_poll_redraws_every_panel_when_points_arrive(client, run_factory):
    run = running_run(run_factory)
    add_series(run, "train/loss", [2.0, 1.8])
    add_series(run, "train/grad_norm", [1.0, 0.9])
    html = client.get(f"/runs/{run.id}/?after=0&m=0&s=running", headers=HTMX).content.decode()
    assert '<div id="loss-chart" class="chart-box" hx-swap-oob="true">' in html
    assert '<section id="metric-charts" class="card" hx-swap-oob="true">' in html
    assert 'id="chart-grad_norm"' in html


def test_compare_draws_the_series_that_two_runs_share(client, run_factory):
    first, second = finished_run(run_factory, name="a"), finished_run(run_factory, name="b")
    for run in (first, second):
        add_series(run, "train/loss", [2.0, 1.5, 1.2])
        add_series(run, "train/grad_norm", [1.0, 0.8, 0.7])
    add_series(first, "train/tokens_per_second", [10.0, 11.0])
    html = client.get(f"/runs/compare/?run={first.id}&run={second.id}").content.decode()
    assert 'id="compare-grad_norm"' in html
    # Only one run has it: not drawn, but named as recorded by that run alone.
    assert 'id="compare-tokens_per_second"' not in html
    assert "a: tokens_per_second." in html


# --- 3. output files as a tree --------------------------------------------------------------


@pytest.fixture
def crowded_run(run_factory):
    """A finished run with 3 checkpoint steps (one incomplete) and 300 event files: 312
    files, more than the old flat list's 200."""
    run = finished_run(run_factory, status=RunStatus.CANCELLED)
    folder = storage.run_output_path(run)
    write_checkpoint(folder, 10)
    write_checkpoint(folder, 20)
    write_checkpoint(folder, 30, complete=False)
    (folder / "tensorboard").mkdir()
    for index in range(300):
        (folder / "tensorboard" / f"events.{index:04d}").write_bytes(b"e" * 10)
    (folder / "tunix_config.json").write_text("{}")
    (folder / "train.jsonl").write_text("{}\n")
    return run


def test_the_output_tree_groups_checkpoint_steps_and_says_how_many_more(crowded_run):
    tree = storage.run_output_tree(crowded_run, shown=50)
    assert [(c["step"], c["complete"], c["files"]) for c in tree["checkpoints"]] == [
        (30, False, 3),
        (20, True, 4),
        (10, True, 4),
    ]
    assert tree["checkpoints"][1]["size"] == 3 * 100 + 2
    assert tree["files"] == 3 + 4 + 4 + 300 + 2
    board = next(n for n in tree["tree"]["children"] if n["name"] == "tensorboard")
    assert len(board["children"]) == 50 and board["more"] == 250 and board["files"] == 300
    assert not tree["partial"]
    # A listing budget keeps a huge folder from slowing the page, and says so.
    assert storage.run_output_tree(crowded_run, max_entries=100)["partial"]


def test_the_run_page_shows_the_tree_short(client, crowded_run):
    html = client.get(f"/runs/{crowded_run.id}/").content.decode()
    assert 'id="checkpoint-20"' in html and "step-20.tar.gz" in html
    assert html.count('class="badge completed">complete<') == 2 and ">incomplete<" in html
    assert "… and 250 more in this folder" in html
    assert ">313 files, " in html
    assert html.count("<li") < 80  # not one row per file
    assert "<details>" in html  # folders start closed


def test_a_checkpoint_step_downloads_as_tar_gz_of_that_step_only(client, crowded_run):
    folder = storage.run_output_path(crowded_run)
    os.symlink("/etc/passwd", folder / "checkpoints" / "20" / "escape")
    response = client.get(f"/runs/{crowded_run.id}/checkpoints/20.tar.gz")
    assert response.status_code == 200 and response["Content-Type"] == "application/gzip"
    assert "step-20.tar.gz" in response["Content-Disposition"]
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = sorted(archive.getnames())
    assert names == [
        "checkpoint-20/commit_success.txt",
        "checkpoint-20/model_params/array_0",
        "checkpoint-20/model_params/array_1",
        "checkpoint-20/model_params/array_2",
    ]
    assert client.get(f"/runs/{crowded_run.id}/checkpoints/99.tar.gz").status_code == 404


def test_someone_elses_checkpoint_is_forbidden(other_user, crowded_run):
    client = Client()
    client.force_login(other_user)
    assert client.get(f"/runs/{crowded_run.id}/checkpoints/20.tar.gz").status_code == 403


# --- 4. banners follow the live status ------------------------------------------------------


def test_a_poll_that_sees_the_status_change_removes_the_banner(client, run_factory):
    run = running_run(run_factory)
    stale = client.get(f"/runs/{run.id}/?after=0&m=0&s=pending", headers=HTMX).content.decode()
    assert '<div id="messages" hx-swap-oob="true"></div>' in stale
    same = client.get(f"/runs/{run.id}/?after=0&m=0&s=running", headers=HTMX).content.decode()
    assert 'id="messages"' not in same


def test_a_banner_about_a_status_the_run_has_left_is_not_shown(client, run_factory):
    run = running_run(run_factory)
    response = client.post(f"/runs/{run.id}/cancel/")
    assert response.status_code == 302
    # Still running (a worker would stop it): the banner holds.
    assert "Cancel requested" in client.get(f"/runs/{run.id}/").content.decode()
    client.post(f"/runs/{run.id}/cancel/")
    services.run_finish(run_id=run.id, status=RunStatus.CANCELLED, exit_code=-15)
    html = client.get(f"/runs/{run.id}/").content.decode()
    assert "Cancel requested" not in html and 'id="run-status">Cancelled<' in html
    assert not list(get_messages(client.get(f"/runs/{run.id}/").wsgi_request))


# --- 5. a continued run -------------------------------------------------------------------


def test_a_continuation_is_named_after_its_parent_and_counts_on(run_factory):
    parent = run_factory(name="baseline")
    assert services.continued_name(parent) == "baseline (continued)"
    parent.name = "baseline (continued)"
    assert services.continued_name(parent) == "baseline (continued 2)"
    parent.name = "baseline (continued 2)"
    assert services.continued_name(parent) == "baseline (continued 3)"
    parent.name = ""
    assert services.continued_name(parent) == f"Run {str(parent.id)[:8]} (continued)"
    parent.name = "x" * 200
    name = services.continued_name(parent)
    assert len(name) == 200 and name.endswith("… (continued)")


def test_a_continued_run_links_both_ways_and_draws_its_parent_faded(client, run_factory):
    parent = finished_run(run_factory, name="baseline", max_steps=10)
    write_checkpoint(storage.run_output_path(parent), 10)
    add_series(parent, "train/loss", [3.0 - 0.1 * i for i in range(12)])  # past step 10 too
    child = services.run_resume(run=parent, owner=parent.owner, max_steps=20)
    assert child.name == "baseline (continued)"
    add_series(child, "train/loss", [1.9, 1.8], first_step=11)
    html = client.get(f"/runs/{child.id}/").content.decode()
    assert f'href="/runs/{parent.id}/" id="parent-link">baseline</a> from step 10' in html
    assert ">parent train (EMA)<" in html and "Faded lines: the parent run" in html
    panels = charts.run_panels(
        services_metric_series(child),
        parent=services_metric_series(parent),
        resume_step=child.resume_from_step,
    )
    svg = ET.fromstring(str(panels[0].svg))  # noqa: S314
    faded = [line for line in svg.findall(f"{SVG}polyline") if line.get("stroke-opacity")]
    assert faded, "the parent's curve is drawn faded"
    assert max(len(line.get("points").split()) for line in faded) == 10  # up to step 10
    back = client.get(f"/runs/{parent.id}/").content.decode()
    assert f'<a href="/runs/{child.id}/" class="child-link">baseline (continued)</a>' in back


# --- 6. "Run this for real" ---------------------------------------------------------------


def test_run_this_for_real_queues_the_dry_runs_inputs(client, run_factory, tiny_launcher):
    dry = run_factory(name="try", learning_rate=0.002, max_steps=7)
    html = client.get(f"/runs/{dry.id}/").content.decode()
    assert 'id="run-for-real">Run this for real</button>' in html and "disabled" not in html
    response = client.post(f"/runs/{dry.id}/run-for-real/")
    real = TunixRun.objects.exclude(id=dry.id).get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{real.id}/"
    assert real.mode == RunMode.LOCAL and real.status == RunStatus.PENDING
    assert (real.name, real.learning_rate, real.max_steps) == ("try", 0.002, 7)
    assert (real.dataset_key, real.model_id) == (dry.dataset_key, dry.model_id)
    assert real.output_dir != dry.output_dir
    page = client.get(response["Location"]).content.decode()
    assert "Run queued." in page  # pending: the banner holds


def test_run_this_for_real_is_disabled_with_the_reason_without_tunix(client, run_factory, settings):
    settings.TUNIX_LAUNCHER_MODULE = "tests.programs.no_such_launcher"
    training._probe_cache.clear()
    dry = run_factory()
    html = client.get(f"/runs/{dry.id}/").content.decode()
    assert 'id="run-for-real" disabled' in html
    assert 'id="for-real-reason">Training is unavailable here:' in html
    response = client.post(f"/runs/{dry.id}/run-for-real/", follow=True)
    assert TunixRun.objects.count() == 1
    assert "Training is unavailable" in response.content.decode() or (
        training.probe().message in response.content.decode()
    )


def test_a_failed_dry_run_says_why_it_cannot_run_for_real(client, run_factory, tiny_launcher):
    dry = run_factory(dataset_key="no-such-dataset")
    assert dry.status == RunStatus.FAILED
    html = client.get(f"/runs/{dry.id}/").content.decode()
    assert 'id="run-for-real" disabled' in html and "The dry-run failed" in html
