"""Schemathesis against the app's own /api/openapi.json, in-process through the WSGI app.

Every operation gets generated requests, valid and invalid, with a real bearer token and a
real dataset, model and runs behind them. Checks: no 5xx, every status code, content type
and body as documented, invalid input refused with a 4xx, and no endpoint answers without
credentials."""

import zlib

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from runs import services
from runs.models import LogChunk, Metric, TunixRun
from runs.storage import safe_relative
from tunixrt.wsgi import application

from .conftest import py

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20260701,
        "generation": {
            "max-examples": 12,
            "database": "none",
            "deterministic": True,
        },
        "checks": {
            # Valid-by-schema requests may still break a business rule the schema cannot
            # express (an unknown model family, a dataset that does not exist, a queue that
            # is full, a run that is already final): those are 4xx answers, never 5xx.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
            },
        },
    }
)

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application, config=CONFIG)


class World:
    """The data generated requests act on: runs in every state, with logs, metrics and
    files. Requests delete and cancel them; each example first puts back what is gone."""

    def __init__(self, *, user, other_user, run_factory, settings):
        self.user, self.other_user = user, other_user
        self.run_factory, self.settings = run_factory, settings
        _, token = services.api_token_create(user=user, name="schemathesis")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.runs: dict[str, TunixRun] = {}
        self.file_paths = ["train.jsonl", "checkpoints/2/commit_success.txt"]
        self.ensure()

    def ensure(self) -> None:
        live = {
            run.id: run
            for run in TunixRun.objects.filter(id__in=[r.id for r in self.runs.values()])
        }
        for role in ("dry", "pending", "done", "theirs"):
            run = live.get(getattr(self.runs.get(role), "id", None))
            if run is None or (role == "pending" and run.status != "pending"):
                self.runs[role] = getattr(self, f"_make_{role}")()

    def _make_dry(self):
        return self.run_factory(name="dry")

    def _make_pending(self):
        return self.run_factory(mode="local", command=py("0"), name="pending")

    def _make_theirs(self):
        return self.run_factory(owner=self.other_user, name="theirs")

    def _make_done(self):
        done = self.run_factory(mode="local", command=py("0"), name="done", max_steps=4)
        services.run_claim(run_id=done.id)
        services.run_finish(run_id=done.id, status="completed", exit_code=0)
        LogChunk.objects.bulk_create(
            LogChunk(run=done, seq=i, stream="stdout", text=f"step {i}\n") for i in range(1, 6)
        )
        Metric.objects.bulk_create(
            Metric(run=done, name="train/loss", step=i, value=4.0 / i) for i in range(1, 5)
        )
        folder = self.settings.ARTIFACTS_DIR / done.output_dir
        (folder / "checkpoints" / "2").mkdir(parents=True)
        (folder / "checkpoints" / "2" / "commit_success.txt").write_text("ok")
        (folder / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
        return done

    @staticmethod
    def pick(generated, choices: list[str]):
        """Mostly a real value, so requests reach deep code; sometimes the generated one."""
        key = repr(generated).encode("utf-8", "surrogatepass")
        index = zlib.crc32(key) % (len(choices) + 1)
        return choices[index] if index < len(choices) else generated

    def steer(self, case) -> None:
        params = case.path_parameters or {}
        if "run_id" in params:
            ids = [str(run.id) for run in self.runs.values()]
            params["run_id"] = self.pick(params["run_id"], [*ids, str(self.runs["done"].id)])
        if "file_path" in params:
            params["file_path"] = self.pick(params["file_path"], self.file_paths)
        # Only valid bodies are steered: an invalid one must stay invalid, or the check that
        # invalid input is refused would be fooled.
        positive = case.meta is None or case.meta.generation.mode.is_positive
        if positive and isinstance(case.body, dict):
            if "dataset_key" in case.body:
                case.body["dataset_key"] = self.pick(case.body["dataset_key"], ["sample-v1"])
            if "model_id" in case.body:
                models = ["local:tiny-llama3", "google/gemma-2-2b"]
                case.body["model_id"] = self.pick(case.body["model_id"], models)


@pytest.fixture
def world(user, other_user, dataset, tiny_model_dir, tiny_launcher, run_factory, settings):
    return World(user=user, other_user=other_user, run_factory=run_factory, settings=settings)


@pytest.fixture
def wsgi_in_test_transaction():
    """Django closes the connection after each request; the test client stops that so a
    request sees the test's transaction. Requests sent straight to the WSGI app need the
    same, or the first one would end the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
# The fixtures are set up once and shared by every generated request on purpose: they are
# the data the requests act on. No deadline: the machine is shared and busy.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_every_operation_honours_the_openapi_schema(case, world, wsgi_in_test_transaction):
    world.ensure()
    world.steer(case)
    case.call_and_validate(headers=world.headers)
    # Nothing the fuzzer sent may leave a run whose folder is outside the artifacts root.
    for output_dir in TunixRun.objects.values_list("output_dir", flat=True):
        safe_relative(world.settings.ARTIFACTS_DIR, output_dir)
