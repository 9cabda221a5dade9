"""Schemathesis over real HTTP: its command-line runner against a live server with a real
bearer token, every check (negative-data rejection, positive-data acceptance, schema and
status conformance, authentication, use after free, ...) and every phase, the stateful one
following the links it infers between operations. Bounded in time (SCHEMATHESIS_SECONDS)
so the normal suite stays short; tests/test_api_schemathesis.py runs the same schema
in-process with steered data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import services
from runs.models import RunStatus

from .conftest import import_dataset, py

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = int(os.environ.get("SCHEMATHESIS_SECONDS", "90"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def config(run_ids: list[str]) -> str:
    """Real identifiers offered to the generator most of the time, so requests reach the
    code behind the 404s; valid-by-schema requests may still break a business rule the
    schema cannot express (a dataset that does not exist, a full queue, a final run): those
    are 4xx answers, never 5xx."""
    values = lambda items: json.dumps(items)  # noqa: E731 - TOML arrays read as JSON ones
    return f"""
[dictionaries.runs]
values = {values(run_ids)}
[dictionaries.datasets]
values = ["sample-v1"]
[dictionaries.models]
values = ["local:tiny-llama3", "google/gemma-2-2b"]
[dictionaries.keys]
values = ["mine-v1", "sample-v1"]
[dictionaries.waits]
values = [0, 0.2]
[dictionaries.files]
values = ["train.jsonl", "checkpoints/2/commit_success.txt"]

[parameters]
"path.run_id" = {{ dictionary = "runs", probability = 0.7 }}
"path.file_path" = {{ dictionary = "files", probability = 0.5 }}
"path.key" = {{ dictionary = "keys", probability = 0.7 }}
# A run's prompt `?wait=` holds the request open: short waits only.
"query.wait" = {{ dictionary = "waits", probability = 1.0 }}
"body.dataset_key" = {{ dictionary = "datasets", probability = 0.7 }}
"body.model_id" = {{ dictionary = "models", probability = 0.7 }}

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


def finished_run(run_factory, settings):
    run = run_factory(mode="local", command=py("0"), name="done", max_steps=4)
    services.run_claim(run_id=run.id)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    folder = settings.ARTIFACTS_DIR / run.output_dir
    (folder / "checkpoints" / "2").mkdir(parents=True)
    (folder / "checkpoints" / "2" / "commit_success.txt").write_text("ok")
    (folder / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return run


def test_schemathesis_over_http_finds_nothing(
    live_server,
    user,
    other_user,
    dataset,
    tiny_model_dir,
    tiny_launcher,
    run_factory,
    settings,
    tmp_path,
):
    _, token = services.api_token_create(user=user, name="schemathesis")
    import_dataset(name="mine", version="v1", owner=user)  # one the user may change
    runs = [
        finished_run(run_factory, settings),
        finished_run(run_factory, settings),
        run_factory(name="dry"),
        run_factory(mode="local", command=py("0"), name="pending"),
        run_factory(owner=other_user, name="theirs"),
    ]
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(config([str(run.id) for run in runs]))
    report = tmp_path / "report"
    # fmt: off
    command = [
        str(SCHEMATHESIS), "--config-file", str(toml), "run",
        f"{live_server.url}/api/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {token}",
        "--max-time", str(SECONDS),
        "--max-examples", "10",
        "--workers", "1",
        "--seed", "20260701",
        "--generation-database", "none",
        "--request-timeout", "70",  # above the longest ?wait=
        # A prompt's long poll holds each request open up to 60 s by design, which would eat
        # the time budget here; tests/test_api_schemathesis.py covers it in-process.
        "--exclude-path", "/api/tunix/prompts/{prompt_id}",
        "--report", "junit", "--report-dir", str(report),
        "--no-color",
    ]
    # fmt: on
    result = subprocess.run(  # noqa: S603 - our own argv
        command, capture_output=True, text=True, timeout=SECONDS + 240
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Stateful" in result.stdout
