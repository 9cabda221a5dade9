import pytest

from runs import services
from runs.models import TunixRun

pytestmark = pytest.mark.django_db


def body(**overrides):
    data = {"dataset_key": "sample-v1", "model_id": "local:tiny-llama3", "max_steps": 10}
    data.update(overrides)
    return data


def test_health_needs_no_authentication_and_no_database(anon_api, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = anon_api.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_touches_the_database(anon_api, django_assert_num_queries):
    with django_assert_num_queries(1):
        response = anon_api.get("/api/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "detail": None}


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/tunix/status"),
        ("get", "/api/tunix/runs"),
        ("get", "/api/tunix/runs/00000000-0000-0000-0000-000000000000"),
        ("post", "/api/tunix/run"),
    ],
)
def test_every_endpoint_but_health_needs_authentication(anon_api, method, path):
    response = getattr(anon_api, method)(path)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication required."}


def test_a_wrong_or_revoked_token_is_refused(user):
    from .conftest import ApiClient

    assert ApiClient("trt_not-a-token").get("/api/tunix/runs").status_code == 401
    record, token = services.api_token_create(user=user)
    assert ApiClient(token).get("/api/tunix/runs").status_code == 200
    services.api_token_revoke(token=record)
    assert ApiClient(token).get("/api/tunix/runs").status_code == 401


def test_tokens_are_stored_hashed_and_record_last_use(api, user):
    record = user.api_tokens.get()
    assert record.last_used_at is None
    api.get("/api/tunix/runs")
    record.refresh_from_db()
    assert record.last_used_at is not None
    assert len(record.token_hash) == 64 and record.prefix.startswith("trt_")


def test_last_use_is_written_once_a_minute_not_on_every_request(api, user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            assert api.get("/api/tunix/runs").status_code == 200
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(writes) == 1 and "runs_apitoken" in writes[0]
    assert user.api_tokens.get().last_used_at is not None


def test_dry_run_via_api_returns_201_with_the_config(api, dataset, tiny_model_dir):
    response = api.post("/api/tunix/run", body())
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["status"] == "completed"
    assert run["mode"] == "dry-run"
    assert run["owner"] == "alice"
    assert run["config"]["training"]["max_steps"] == 10
    assert run["command"][1:3] == ["-m", "runs.launcher"]


def test_dry_run_with_unknown_dataset_is_recorded_failed(api, tiny_model_dir, db):
    response = api.post("/api/tunix/run", body(dataset_key="ghost-v1"))
    assert response.status_code == 201
    assert response.json()["status"] == "failed"
    assert "Unknown dataset 'ghost-v1'" in response.json()["message"]


def test_schema_errors_answer_422_with_field_paths(api, dataset, tiny_model_dir):
    response = api.post("/api/tunix/run", body(learning_rate=5.0, batch_size="many"))
    assert response.status_code == 422
    locs = {tuple(err["loc"]) for err in response.json()["detail"]}
    assert ("body", "payload", "learning_rate") in locs
    assert ("body", "payload", "batch_size") in locs
    assert TunixRun.objects.count() == 0


def test_hyperparameter_at_bound_is_accepted_above_is_422(api, dataset, tiny_model_dir):
    assert api.post("/api/tunix/run", body(batch_size=1024)).status_code == 201
    assert api.post("/api/tunix/run", body(batch_size=1025)).status_code == 422
    assert api.post("/api/tunix/run", body(batch_size=0)).status_code == 422


def test_service_errors_share_the_error_shape(api, dataset):
    response = api.post("/api/tunix/run", body(model_id="--evil"))
    assert response.status_code == 422
    assert set(response.json()) == {"detail", "fields"}
    assert "model_id" in response.json()["fields"]


def test_local_run_without_tunix_is_501_and_nothing_is_queued(
    api, dataset, tiny_model_dir, settings, python_without_tunix
):
    from django_q.models import OrmQ

    settings.TUNIX_PYTHON = python_without_tunix
    response = api.post("/api/tunix/run", body(dry_run=False))
    assert response.status_code == 501
    assert "Tunix is not installed" in response.json()["detail"]
    assert TunixRun.objects.count() == 0
    assert OrmQ.objects.count() == 0


def test_tunix_status_reports_the_probed_interpreter(api, settings, python_without_tunix):
    settings.TUNIX_PYTHON = python_without_tunix
    data = api.get("/api/tunix/status").json()
    assert data["available"] is False
    assert data["python"] == python_without_tunix
    assert "llama3" in data["supported_families"]


def test_tunix_status_for_a_missing_interpreter(api, settings):
    settings.TUNIX_PYTHON = "/nonexistent/python"
    data = api.get("/api/tunix/status").json()
    assert data["available"] is False
    assert "does not exist" in data["message"]


def test_run_list_is_newest_first_filtered_and_paged(api, run_factory, user, other_user):
    runs = [run_factory() for _ in range(5)]
    failed = run_factory(dataset_key="ghost-v1")
    run_factory(owner=other_user)
    data = api.get("/api/tunix/runs?page_size=2").json()
    assert data["count"] == 6 and data["pages"] == 3
    assert [r["id"] for r in data["items"]] == [str(failed.id), str(runs[-1].id)]
    page3 = api.get("/api/tunix/runs?page_size=2&page=3").json()
    assert [r["id"] for r in page3["items"]] == [str(runs[1].id), str(runs[0].id)]
    assert api.get("/api/tunix/runs?status=failed").json()["count"] == 1
    assert api.get("/api/tunix/runs?mode=dry-run").json()["count"] == 6
    assert api.get("/api/tunix/runs?mode=local").json()["count"] == 0
    assert api.get("/api/tunix/runs?dataset_key=ghost-v1").json()["count"] == 1
    assert api.get("/api/tunix/runs?model_id=local:tiny-llama3").json()["count"] == 6
    assert api.get("/api/tunix/runs?model_id=other/model").json()["count"] == 0
    assert api.get("/api/tunix/runs?status=bogus").status_code == 422


def test_run_detail_ownership(api, run_factory, other_user, staff_user):
    from .conftest import ApiClient

    mine = run_factory()
    theirs = run_factory(owner=other_user)
    assert api.get(f"/api/tunix/runs/{mine.id}").status_code == 200
    assert api.get(f"/api/tunix/runs/{theirs.id}").status_code == 403
    assert api.get("/api/tunix/runs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/tunix/runs/not-a-uuid").status_code == 404
    _, token = services.api_token_create(user=staff_user)
    assert ApiClient(token).get(f"/api/tunix/runs/{theirs.id}").status_code == 200


def test_session_auth_requires_csrf_for_posts(client, user, dataset, tiny_model_dir):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(user)
    assert csrf_client.get("/api/tunix/runs").status_code == 200
    response = csrf_client.post("/api/tunix/run", body(), content_type="application/json")
    assert response.status_code in (401, 403)
    assert TunixRun.objects.count() == 0


def test_openapi_schema_and_docs_are_served(anon_api):
    schema = anon_api.get("/api/openapi.json").json()
    assert "/api/tunix/run" in schema["paths"]
    assert anon_api.get("/api/docs").status_code == 200
