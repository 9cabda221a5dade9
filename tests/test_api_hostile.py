"""Hostile requests: each is refused with a 4xx, stores no run and queues no task."""

import json

import pytest
from django_q.models import OrmQ

from runs.models import TunixRun

pytestmark = pytest.mark.django_db

VALID = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": False}

HOSTILE_FIELDS = [
    # Path traversal and absolute paths where a folder is named.
    {"output_dir": "../../etc"},
    {"output_dir": "/etc/cron.d"},
    {"output_dir": "runs/../../outside"},
    {"output_dir": "runs/./x"},
    {"output_dir": ".."},
    {"output_dir": "~/x"},
    {"output_dir": "runs\\..\\..\\x"},
    {"output_dir": "runs/x\x00y"},
    {"output_dir": "runs/$(id)"},
    {"output_dir": "a" * 300},
    # Dataset keys are looked up, never joined into a path.
    {"dataset_key": "../../etc/passwd"},
    {"dataset_key": "/etc/passwd"},
    {"dataset_key": "sample-v1/../../../etc/passwd"},
    {"dataset_key": "sample-v1\x00"},
    {"dataset_key": "--help"},
    {"dataset_key": "$(id)"},
    {"dataset_key": ""},
    # Model ids reach argv and paths: options, shell syntax, traversal.
    {"model_id": "--help"},
    {"model_id": "-rf"},
    {"model_id": "--config=/etc/passwd"},
    {"model_id": "org/llama3; rm -rf /"},
    {"model_id": "org/llama3 && id"},
    {"model_id": "$(touch /tmp/pwned)/llama3"},
    {"model_id": "`id`/llama3"},
    {"model_id": "org/llama3|cat"},
    {"model_id": "org/llama3\nid"},
    {"model_id": "local:../../etc"},
    {"model_id": "local:/etc"},
    {"model_id": "local:--help"},
    {"model_id": "hf:--x/llama3"},
    {"model_id": "kaggle:../x/llama3"},
    {"model_id": "org/llama3\x00"},
    {"model_id": "x" * 500},
    # NUL and other text that the database cannot hold.
    {"name": "evil\x00name"},
    {"name": "lone \ud800 surrogate"},
    {"name": "n" * 201},
    # Huge, negative and fractional numbers.
    {"learning_rate": 1e308},
    {"learning_rate": -1e-3},
    {"batch_size": 10**100},
    {"seed": 2**63},
    {"max_steps": -1},
    {"max_steps": 10**30},
    {"timeout_seconds": 10**20},
    {"timeout_seconds": 1},
    {"num_epochs": 1.5},
    {"lora_rank": "8; rm -rf /"},
    # Wrong types.
    {"dataset_key": 123},
    {"model_id": None},
    {"model_id": ["a", "b"]},
    {"output_dir": {"path": "/etc"}},
]


def assert_nothing_started(callbacks):
    assert TunixRun.objects.count() == 0
    assert callbacks == []  # no enqueue was scheduled on commit
    assert OrmQ.objects.count() == 0


@pytest.fixture
def ready(dataset, tiny_model_dir, tiny_launcher):
    """Everything a valid local run needs, so a refusal is the payload's doing."""


def test_the_valid_local_payload_is_accepted_and_queued(
    api, ready, django_capture_on_commit_callbacks
):
    """The control case: proves that the assertions below could fail."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/api/tunix/run", VALID)
    assert response.status_code == 202, response.content
    assert len(callbacks) == 1
    assert TunixRun.objects.count() == 1 and OrmQ.objects.count() == 1


@pytest.mark.parametrize("fields", HOSTILE_FIELDS, ids=lambda f: repr(f)[:60])
def test_hostile_fields_are_refused_and_nothing_starts(
    api, ready, fields, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/api/tunix/run", {**VALID, **fields})
    assert 400 <= response.status_code < 500, response.content
    assert "detail" in response.json()
    assert set(response.json().get("fields", {})) <= set(VALID) | set(fields) | {"payload"}
    assert_nothing_started(callbacks)


RAW_BODIES = [
    # Not UTF-8, or UTF-8 inside a JSON string that is not.
    b"\xff\xfe{\x00}\x00",
    b'{"dataset_key": "sample-v1", "model_id": "local:tiny-llama3\xff", "dry_run": false}',
    b'{"dataset_key": "sample-v1\xc0\xaf..", "model_id": "local:tiny-llama3", "dry_run": false}',
    # Numbers JSON cannot hold as finite floats.
    b'{"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": false, '
    b'"learning_rate": 1e999}',
    b'{"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": false, '
    b'"learning_rate": NaN}',
    b'{"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": false, '
    b'"batch_size": ' + b"9" * 5000 + b"}",
    # Not an object, or not JSON at all.
    b"[]",
    b'"sample-v1"',
    b"null",
    b"{" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b"dataset_key=sample-v1&model_id=local:tiny-llama3",
    b'{"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "dry_run": false',
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=lambda b: repr(b[:40]))
def test_hostile_bodies_are_refused_and_nothing_starts(
    api, ready, raw, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.client.post(
            "/api/tunix/run", data=raw, content_type="application/json", headers=api.headers
        )
    assert 400 <= response.status_code < 500, response.content
    assert "detail" in response.json()
    assert_nothing_started(callbacks)


def test_a_huge_body_is_refused_with_413_and_nothing_starts(
    api, ready, django_capture_on_commit_callbacks
):
    body = {**VALID, "name": "n" * (2 * 1024 * 1024)}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/api/tunix/run", body)
    assert response.status_code == 413
    assert_nothing_started(callbacks)


@pytest.mark.parametrize("fields", HOSTILE_FIELDS, ids=lambda f: repr(f)[:60])
def test_hostile_rerun_changes_are_refused_and_nothing_starts(
    api, ready, run_factory, fields, django_capture_on_commit_callbacks
):
    original = run_factory()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(f"/api/tunix/runs/{original.id}/rerun", {"dry_run": False, **fields})
    assert 400 <= response.status_code < 500, response.content
    TunixRun.objects.filter(id=original.id).delete()
    assert_nothing_started(callbacks)


@pytest.mark.parametrize(
    "query",
    [
        "q=%00",
        "dataset_key=sample-v1%00",
        "model_id=%00--help",
        "status=running%00",
        "page=99999999999999999999999",
        "page_size=-1",
        "q=" + "x" * 5000,
        "q=%ff%fe",
    ],
)
def test_hostile_list_queries_answer_4xx_or_an_empty_page(api, run_factory, query):
    run_factory()
    response = api.get(f"/api/tunix/runs?{query}")
    assert response.status_code in (200, 422), response.content
    if response.status_code == 200:
        assert response.json()["count"] == 0
    json.dumps(response.json())


@pytest.mark.parametrize("body", [-2.5e-92, [1], "x", True, {"seed": True}, {"unknown": 1}])
def test_an_optional_body_that_is_not_the_documented_object_is_refused(
    api, run_factory, body, tiny_launcher
):
    """Found by Schemathesis over HTTP: Ninja read a number as an evaluation request with
    every field left out, and queued it (201)."""
    from runs import services
    from runs.models import RunStatus

    from .conftest import py

    run = run_factory(mode="local", command=py("0"))
    services.run_claim(run_id=run.id)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    for action in ("evaluations", "exports", "rerun"):
        response = api.post(f"/api/tunix/runs/{run.id}/{action}", body)
        assert response.status_code in (400, 422), (action, response.content[:300])
