"""`tunixrt eval`, `generate` and `export` as real subprocesses against a live server. The
worker's part (finishing the job, answering the prompt) is done here through the same
services the worker calls, so these run without Tunix; tests/test_evaluations_e2e.py and
tests/test_playground_e2e.py cover the worker with real Tunix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import services, storage
from runs.models import Metric, PlaygroundPrompt, RunKind, RunStatus, TunixRun

from .conftest import REPO, wait_for
from .test_model_pages import ROWS
from .test_run_page import finished_run, running_run, write_checkpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cli(live_server, user):
    """start(*args) -> a running client (Popen); run(*args) -> its finished result."""
    _, token = services.api_token_create(user=user, name="cli")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TUNIXRT_URL": live_server.url,
        "TUNIXRT_TOKEN": token,
    }

    def start(*args):
        return subprocess.Popen(
            [sys.executable, "-m", "runs.client", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(*args, timeout=120):
        process = start(*args)
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    started = []

    def tracked(*args):
        started.append(start(*args))
        return started[-1]

    yield tracked, run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def trained(run_factory):
    run = finished_run(run_factory)
    write_checkpoint(storage.run_output_path(run), 4)
    return run


def job_of(source, kind):
    return wait_for(
        lambda: TunixRun.objects.filter(source=source, kind=kind).order_by("-created_at").first(),
        message=f"the {kind} job",
    )


def finish_evaluation(job):
    """What the evaluation launcher and the worker leave: rows, score metrics, completed."""
    folder = storage.run_output_path(job)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / services.jobs.ROWS_FILENAME).open("w") as handle:
        for index, (prompt, reference, base, tuned) in enumerate(ROWS):
            record = {
                "index": index,
                "prompt": prompt,
                "reference": reference,
                "base_output": base,
                "tuned_output": tuned,
                "base_scores": {"exact_match": float(base == reference)},
                "tuned_scores": {"exact_match": float(tuned == reference)},
            }
            handle.write(json.dumps(record) + "\n")
    Metric.objects.create(run=job, name="generation/tuned/exact_match", step=0, value=1 / 3)
    Metric.objects.create(run=job, name="generation/base/exact_match", step=0, value=0.25)
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    services.evaluation_store_rows(job=job)


def test_eval_queues_with_the_settings_and_waits_for_the_scores(cli, trained):
    start, run = cli
    short = str(trained.id)[:8]
    queued = run("eval", short, "--max-rows", "3", "--temperature", "0.5", "--seed", "7", "--json")
    assert queued.returncode == 0, queued.stderr
    job = json.loads(queued.stdout)
    assert job["kind"] == "evaluate" and job["source_id"] == str(trained.id)
    generation = TunixRun.objects.get(id=job["id"]).config["generation"]
    assert (generation["max_rows"], generation["temperature"], generation["seed"]) == (3, 0.5, 7)

    waiting = start("eval", short, "--wait", "--interval", "0.1")
    second = wait_for(
        lambda: (
            TunixRun.objects.filter(source=trained, kind=RunKind.EVALUATE)
            .exclude(id=job["id"])
            .first()
        ),
        message="the second evaluation",
    )
    finish_evaluation(second)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.splitlines()[0].startswith(f"{second.id}  completed evaluation of {trained.id}")
    assert "exact_match    0.2500    0.3333" in out
    assert "better 1, worse 1, still wrong 1" in out
    assert f"[tunixrt] {second.id} completed" in err  # (pending before, unless it was quick)


def test_eval_errors_are_the_servers(cli, trained, run_factory):
    _, run = cli
    unknown = run("eval", str(trained.id), "--dataset", "no-such-dataset")
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr
    bad = run("eval", str(trained.id), "--max-rows", "0")
    assert bad.returncode == 1 and "max_rows:" in bad.stderr
    running = running_run(run_factory)
    refused = run("eval", str(running.id))
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr
    assert not TunixRun.objects.filter(kind=RunKind.EVALUATE).exists()


def answer(record, *, tuned="4", base="5", cold=True):
    """As runs.services.playground.prompt_answer stores a generation server's reply."""
    PlaygroundPrompt.objects.filter(id=record.id).update(
        status=PlaygroundPrompt.Status.DONE,
        tuned_output=tuned,
        base_output=base,
        cold=cold,
        seconds=1.5,
    )


def test_generate_prints_both_answers_once_the_worker_has_them(cli, trained):
    start, run = cli
    asking = start(
        "generate", str(trained.id)[:8], "What is 2+2?", "--max-new-tokens", "8", "--show-prompt"
    )
    record = wait_for(lambda: PlaygroundPrompt.objects.filter(run=trained).first())
    assert record.prompt == "What is 2+2?" and record.generation["max_new_tokens"] == 8
    answer(record)
    out, err = asking.communicate(timeout=60)
    assert asking.returncode == 0, err
    assert "--- fine-tuned\n4\n--- base\n5\n" in out
    assert "--- prompt as the models saw it\n" in out and "What is 2+2?" in out
    assert "loaded the models and compiled" in err


def test_generate_reports_a_failed_or_unanswered_prompt(cli, trained):
    start, run = cli
    failing = start("generate", str(trained.id), "Hello", "--json")
    record = wait_for(lambda: PlaygroundPrompt.objects.filter(run=trained).first())
    PlaygroundPrompt.objects.filter(id=record.id).update(
        status=PlaygroundPrompt.Status.FAILED, error="out of memory"
    )
    out, _ = failing.communicate(timeout=60)
    assert failing.returncode == 1 and json.loads(out)["error"] == "out of memory"

    unanswered = run("generate", str(trained.id), "Hello again", "--timeout", "1")
    assert unanswered.returncode == 1
    assert "no answer after 1 s" in unanswered.stderr
    empty = run("generate", str(trained.id), "  ")
    assert empty.returncode == 1 and "prompt: Enter a prompt." in empty.stderr


def test_export_waits_for_the_job_and_refuses_a_taken_name(cli, trained, settings):
    start, run = cli
    exporting = start("export", str(trained.id)[:8], "--name", "my-model", "--wait")
    job = job_of(trained, RunKind.EXPORT)
    assert job.config["export"]["name"] == "my-model"
    (Path(settings.MODELS_DIR) / "my-model").mkdir()  # as the export launcher leaves it
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.COMPLETED, exit_code=0)
    out, err = exporting.communicate(timeout=60)
    assert exporting.returncode == 0, err
    assert out.strip().endswith("-> local:my-model") and "completed" in out

    taken = run("export", str(trained.id), "--name", "my-model")
    assert taken.returncode == 1 and "name: local:my-model exists." in taken.stderr

    failing = start("export", str(trained.id), "--wait", "--interval", "0.1")
    job = wait_for(
        lambda: TunixRun.objects.filter(kind=RunKind.EXPORT, status=RunStatus.PENDING).first()
    )
    assert services.run_claim(run_id=job.id)
    services.run_finish(run_id=job.id, status=RunStatus.FAILED, exit_code=1)
    _, err = failing.communicate(timeout=60)
    assert failing.returncode == 1 and f"error: {job.id} failed" in err
    assert f"tunixrt logs {job.id}" in err
