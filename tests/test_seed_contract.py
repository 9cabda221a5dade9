"""The original tunix-rt's `POST /api/tunix/run` answered a `TunixRunResponse`; scripts
written against it read these fields. Ours answers them beside its own names."""

from datetime import datetime

import pytest
from pydantic import BaseModel

from runs import selectors, services
from runs.models import LogChunk

from .conftest import py

pytestmark = pytest.mark.django_db


class SeedTunixRunResponse(BaseModel):
    """The seed client's model of the answer, field for field (its types, its defaults)."""

    run_id: str
    status: str
    mode: str
    dataset_key: str
    model_id: str
    output_dir: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration_seconds: float | None = None
    started_at: str
    completed_at: str | None = None
    message: str


def test_a_dry_run_answer_reads_as_the_seeds_response(api, dataset, tiny_model_dir):
    response = api.post(
        "/api/tunix/run",
        {"dataset_key": "sample-v1", "model_id": tiny_model_dir, "max_steps": 10},
    )
    assert response.status_code == 201
    seed = SeedTunixRunResponse.model_validate_json(response.content)
    ours = response.json()
    assert seed.run_id == ours["id"]
    assert (seed.status, seed.mode) == ("completed", "dry-run")
    assert seed.dataset_key == "sample-v1" and seed.model_id == tiny_model_dir
    assert seed.completed_at == ours["finished_at"]
    datetime.fromisoformat(seed.started_at)
    assert seed.message
    # The run detail answers the same fields.
    detail = api.get(f"/api/tunix/runs/{seed.run_id}")
    assert SeedTunixRunResponse.model_validate_json(detail.content) == seed


def test_a_local_runs_answer_carries_the_tails_of_its_streams(api, run_factory, transactional_db):
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    run = run_factory(mode="local", command=py(code))
    services.run_execute(run_id=run.id)
    answer = api.get(f"/api/tunix/runs/{run.id}").json()
    seed = SeedTunixRunResponse.model_validate(answer)
    assert seed.status == "failed" and seed.exit_code == 3
    assert "to stdout" in seed.stdout and "to stderr" not in seed.stdout
    assert "to stderr" in seed.stderr
    assert seed.duration_seconds is not None and seed.completed_at is not None
    assert answer["stdout_truncated"] is False and answer["stderr_truncated"] is False


def test_stream_tails_are_cut_at_a_documented_size_on_a_character_boundary(run_factory):
    run = run_factory()
    limit = selectors.STREAM_TAIL_BYTES
    # Euro signs are three bytes each: a cut at a byte count lands inside one.
    texts = ["early line\n", "€" * (limit // 3 + 5), "last line\n"]
    for seq, text in enumerate(texts, start=1):
        LogChunk.objects.create(run=run, seq=seq, stream="stderr", text=text)
    LogChunk.objects.create(run=run, seq=9, stream="stdout", text="short\n")
    tail, truncated = selectors.run_stream_tail(run, "stderr")
    assert truncated and tail.endswith("last line\n") and "early" not in tail
    assert len(tail.encode()) <= limit and limit - len(tail.encode()) < 3
    assert set(tail[:-10]) == {"€"}
    assert selectors.run_stream_tail(run, "stdout") == ("short\n", False)


def test_the_seed_fields_are_documented_in_the_openapi_spec(anon_api):
    spec = anon_api.get("/api/openapi.json").json()
    schema = spec["components"]["schemas"]["RunDetailOut"]
    for name in SeedTunixRunResponse.model_fields:
        assert name in schema["properties"], name
        assert schema["properties"][name].get("description") or name in {
            "status",
            "mode",
            "dataset_key",
            "model_id",
            "output_dir",
            "exit_code",
            "duration_seconds",
            "started_at",
            "message",
        }
    assert "10 KiB" in schema["properties"]["stdout"]["description"]
    create = spec["paths"]["/api/tunix/run"]["post"]["responses"]["201"]
    assert create["content"]["application/json"]["schema"]["$ref"].endswith("/RunDetailOut")
    # The list stays lean: its items carry no log tails.
    page = spec["components"]["schemas"]["RunPageOut"]["properties"]["items"]["items"]
    assert page["$ref"].endswith("/RunListItemOut")
