"""The `tunixrt` command-line client, run as a real subprocess against a live server and a
real queue worker: it only speaks HTTP to the public API."""

import json
import os
import subprocess
import sys

import pytest

from runs import services, storage
from runs.models import RunStatus, TunixRun

from .conftest import REPO

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tunixrt(live_server, user):
    """Run the client with TUNIXRT_URL and TUNIXRT_TOKEN in its environment."""
    _, token = services.api_token_create(user=user, name="cli")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TUNIXRT_URL": live_server.url,
        "TUNIXRT_TOKEN": token,
    }

    def run(*args, token_override=None, timeout=120):
        call_env = dict(env)
        if token_override is not None:
            call_env["TUNIXRT_TOKEN"] = token_override
        return subprocess.run(
            [sys.executable, "-m", "runs.client", *args],
            cwd=REPO,
            env=call_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.mark.worker
def test_submit_follow_list_show_rerun_and_cancel_through_the_cli(
    tunixrt, start_cluster, dataset, tiny_model_dir, tiny_launcher
):
    start_cluster(workers=1)
    done = tunixrt(
        "submit", "sample-v1", tiny_model_dir, "--local", "--set", "max_steps=6", "--json"
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "pending" and run["mode"] == "local"

    followed = tunixrt("logs", run["id"], "--follow", "--interval", "0.2")
    assert followed.returncode == 0, followed.stderr
    # Every step's line arrived, in order, each once, and the client stopped by itself
    # because the run was final.
    steps = [line for line in followed.stdout.splitlines() if line.startswith("step ")]
    assert steps == [f"step {i}/6" for i in range(1, 7)]
    assert f"run {run['id']} completed" in followed.stderr
    assert TunixRun.objects.get(id=run["id"]).status == RunStatus.COMPLETED

    whole = tunixrt("logs", run["id"])
    assert whole.returncode == 0
    assert whole.stdout == followed.stdout

    listed = tunixrt("list", "--status", "completed")
    assert listed.returncode == 0
    assert run["id"] in listed.stdout and "1 runs" in listed.stdout
    shown = tunixrt("show", run["id"])
    assert shown.returncode == 0 and "completed" in shown.stdout

    again = tunixrt("rerun", run["id"], "--set", "max_steps=400", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["id"] != run["id"] and second["max_steps"] == 400
    cancelled = tunixrt("cancel", second["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert second["id"] in cancelled.stdout
    # Following a cancelled run ends on its own too, with a non-zero status.
    followed = tunixrt("logs", second["id"], "--follow", "--interval", "0.2")
    assert followed.returncode == 1
    assert f"run {second['id']} cancelled" in followed.stderr


def test_cli_errors_are_printed_from_the_error_shape(tunixrt, dataset, tiny_model_dir):
    refused = tunixrt("submit", "sample-v1", "--help-me", "--set", "batch_size=0")
    assert refused.returncode == 2  # argparse: "--help-me" is not an option of ours
    refused = tunixrt("submit", "sample-v1", "org/llama3", "--set", "batch_size=0")
    assert refused.returncode == 1
    assert "error: HTTP 422" in refused.stderr
    assert "batch_size:" in refused.stderr
    run = json.loads(tunixrt("submit", "sample-v1", tiny_model_dir, "--json").stdout)
    assert run["status"] == "completed" and run["mode"] == "dry-run"
    conflict = tunixrt("cancel", run["id"])
    assert conflict.returncode == 1
    assert "HTTP 409: The run is already completed" in conflict.stderr
    missing = tunixrt("show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "HTTP 404: No such run." in missing.stderr
    unauthenticated = tunixrt("list", token_override="trt_wrong")
    assert unauthenticated.returncode == 1
    assert "HTTP 401: Authentication required." in unauthenticated.stderr
    no_token = tunixrt("list", token_override="")
    assert no_token.returncode == 2 and "TUNIXRT_TOKEN" in no_token.stderr


def test_cli_takes_the_short_id_the_pages_show(tunixrt, dataset, tiny_model_dir):
    run = json.loads(tunixrt("submit", "sample-v1", tiny_model_dir, "--json").stdout)
    short = run["id"][:8]
    shown = tunixrt("show", short, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == run["id"]
    assert tunixrt("show", short).stdout.startswith(run["id"])
    too_short = tunixrt("show", run["id"][:5])
    assert too_short.returncode == 1 and "at least 6" in too_short.stderr


def test_cli_submits_a_method_starting_from_another_run(
    tunixrt, dataset, tiny_model_dir, run_factory, tiny_launcher
):
    base = run_factory(mode="local", command=["true"])
    services.run_claim(run_id=base.id)
    services.run_finish(run_id=base.id, status=RunStatus.COMPLETED, exit_code=0)
    folder = storage.run_output_path(base) / "checkpoints" / "2"
    folder.mkdir(parents=True)
    (folder / "commit_success.txt").write_text("ok")
    done = tunixrt(
        "submit",
        "sample-v1",
        tiny_model_dir,
        "--method",
        "grpo",
        "--base-run",
        str(base.id),
        "--set",
        "num_generations=4",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "completed", run["message"]
    assert run["config"]["method"]["name"] == "grpo"
    assert run["config"]["method"]["num_generations"] == 4
    assert run["config"]["base_run"]["run_id"] == str(base.id)
    assert TunixRun.objects.get(id=run["id"]).base_run_id == base.id

    sft = tunixrt("submit", "sample-v1", tiny_model_dir, "--base-run", str(base.id))
    assert sft.returncode == 1 and "SFT starts from the model itself" in sft.stderr
    unknown = tunixrt("submit", "sample-v1", tiny_model_dir, "--method", "ppo")
    assert unknown.returncode == 2 and "invalid choice: 'ppo'" in unknown.stderr
