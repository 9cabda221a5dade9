"""The run list: what an item carries, cursor (keyset) paging in both directions, the capped
count, and the same paging on the HTML page."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from runs import selectors
from runs.models import Metric, TunixRun

pytestmark = pytest.mark.django_db

LIST_ITEM_KEYS = {
    "id",
    "owner",
    "name",
    "status",
    "mode",
    "model_id",
    "dataset_key",
    "created_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "phase",
    "progress_step",
    "progress_total",
    "final_loss",
    "pinned",
}


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


def make_runs(run_factory, n, *, same_time_from=None):
    """n runs; from index `same_time_from` on, they share one created_at, so only the id
    orders them (the tie the cursor must break)."""
    runs = [run_factory(name=f"run-{i:02d}") for i in range(n)]
    if same_time_from is not None:
        TunixRun.objects.filter(id__in=[r.id for r in runs[same_time_from:]]).update(
            created_at=timezone.now() + timedelta(minutes=1)
        )
    return [
        str(i) for i in TunixRun.objects.order_by("-created_at", "-id").values_list("id", flat=True)
    ]


def test_a_list_item_carries_what_a_list_shows_and_the_last_train_loss(api, run_factory):
    run = run_factory(name="with-loss")
    for step, value in ((1, 2.5), (2, 1.25), (3, 0.75)):
        Metric.objects.create(run=run, name="train/loss", step=step, value=value)
    Metric.objects.create(run=run, name="eval/loss", step=4, value=9.0)
    run_factory(name="no-metrics")
    items = {item["name"]: item for item in api.get("/api/tunix/runs").json()["items"]}
    assert set(items["with-loss"]) == LIST_ITEM_KEYS
    assert items["with-loss"]["final_loss"] == 0.75
    assert items["no-metrics"]["final_loss"] is None
    detail = api.get(f"/api/tunix/runs/{run.id}").json()
    assert {"config", "command", "environment", "message"} <= set(detail)


def test_the_list_answer_has_exactly_the_fields_its_schema_documents(api, run_factory):
    from runs.api.schemas import RunListItemOut, RunPageOut

    run_factory()
    page = api.get("/api/tunix/runs").json()
    assert set(page) == set(RunPageOut.model_fields)
    assert set(page["items"][0]) == set(RunListItemOut.model_fields) == LIST_ITEM_KEYS


def test_a_non_finite_last_loss_is_listed_as_null(api, run_factory):
    run = run_factory()
    Metric.objects.create(run=run, name="train/loss", step=1, value=float("inf"))
    assert api.get("/api/tunix/runs").json()["items"][0]["final_loss"] is None


def test_following_next_cursor_visits_every_run_once_in_order_even_with_equal_times(
    api, run_factory
):
    expected = make_runs(run_factory, 11, same_time_from=4)
    seen, cursor, pages = [], None, 0
    while True:
        url = "/api/tunix/runs?page_size=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        assert page["count"] == 11 and page["count_exact"] is True
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 4


def test_prev_cursor_walks_back_to_the_newest_page(api, run_factory):
    expected = make_runs(run_factory, 8, same_time_from=2)
    first = api.get("/api/tunix/runs?page_size=3").json()
    assert first["prev_cursor"] is None
    second = api.get(f"/api/tunix/runs?page_size=3&cursor={first['next_cursor']}").json()
    third = api.get(f"/api/tunix/runs?page_size=3&cursor={second['next_cursor']}").json()
    assert [i["id"] for i in third["items"]] == expected[6:] and third["next_cursor"] is None
    back = api.get(f"/api/tunix/runs?page_size=3&before={third['prev_cursor']}").json()
    assert [i["id"] for i in back["items"]] == expected[3:6]
    newest = api.get(f"/api/tunix/runs?page_size=3&before={back['prev_cursor']}").json()
    assert [i["id"] for i in newest["items"]] == expected[:3]
    assert newest["prev_cursor"] is None and newest["next_cursor"] is not None


def test_a_cursor_keeps_its_place_when_its_run_is_deleted_and_respects_filters(api, run_factory):
    expected = make_runs(run_factory, 6)
    first = api.get("/api/tunix/runs?page_size=2").json()
    TunixRun.objects.filter(id=first["items"][-1]["id"]).delete()
    rest = api.get(f"/api/tunix/runs?page_size=10&cursor={first['next_cursor']}").json()
    assert [i["id"] for i in rest["items"]] == expected[2:]
    TunixRun.objects.filter(id=expected[3]).update(status="failed")
    failed = api.get(f"/api/tunix/runs?status=failed&cursor={first['next_cursor']}").json()
    assert [i["id"] for i in failed["items"]] == [expected[3]]
    assert failed["count"] == 1


@pytest.mark.parametrize("cursor", ["garbage", "bm90LWEtY3Vyc29y", "MjAyNC0wMS0wMXxub3BlCg", "%00"])
def test_a_cursor_that_is_not_one_answers_422_naming_it(api, run_factory, cursor):
    run_factory()
    for name in ("cursor", "before"):
        response = api.get(f"/api/tunix/runs?{name}={cursor}")
        assert response.status_code == 422, response.content
        assert name in response.json()["fields"]


def test_a_cursor_at_the_oldest_run_is_an_empty_last_page(api, run_factory):
    expected = make_runs(run_factory, 2)
    oldest = TunixRun.objects.get(id=expected[-1])
    last = api.get("/api/tunix/runs?page_size=1&page=2").json()
    assert [i["id"] for i in last["items"]] == expected[1:] and last["next_cursor"] is None
    past = api.get(f"/api/tunix/runs?cursor={selectors.runs.cursor_encode(oldest)}").json()
    assert (past["items"], past["next_cursor"], past["prev_cursor"]) == ([], None, None)


def test_the_count_says_more_than_the_cap_instead_of_counting_everything(
    api, run_factory, monkeypatch
):
    monkeypatch.setattr(selectors.runs, "COUNT_CAP", 3)
    make_runs(run_factory, 5)
    page = api.get("/api/tunix/runs?page_size=2").json()
    assert (page["count"], page["count_exact"], page["pages"]) == (3, False, None)
    assert len(page["items"]) == 2 and page["next_cursor"]
    small = api.get("/api/tunix/runs?page_size=2&q=run-04").json()
    assert (small["count"], small["count_exact"], small["pages"]) == (1, True, 1)


def test_page_numbers_work_for_small_offsets_and_point_to_cursors_beyond(api, run_factory):
    expected = make_runs(run_factory, 5)
    page2 = api.get("/api/tunix/runs?page_size=2&page=2").json()
    assert [i["id"] for i in page2["items"]] == expected[2:4]
    assert page2["page"] == 2 and page2["pages"] == 3 and page2["prev_cursor"]
    deep = api.get("/api/tunix/runs?page_size=200&page=100")
    assert deep.status_code == 422 and "next_cursor" in deep.json()["fields"]["page"]


def test_the_run_page_follows_older_and_newer_links(client, run_factory):
    make_runs(run_factory, 30)
    first = client.get("/").content.decode()
    older = re.search(r'href="\?cursor=([^"]+)"[^>]*rel="next"', first).group(1)
    second = client.get(f"/?cursor={older}").content.decode()
    assert "run-04" in second and "run-00" in second and "run-29" not in second
    assert "30 runs" in second
    newer = re.search(r'href="\?before=([^"]+)"[^>]*rel="prev"', second).group(1)
    back = client.get(f"/?before={newer}").content.decode()
    assert "run-29" in back and "run-05" in back and "run-04" not in back
    assert 'rel="prev"' not in back
    assert "run-29" in client.get("/?cursor=mangled").content.decode()


def test_the_run_page_keeps_its_filters_on_the_paging_links(client, run_factory):
    make_runs(run_factory, 30)
    html = client.get("/?mode=dry-run").content.decode()
    assert re.search(r'href="\?mode=dry-run&amp;cursor=[^"]+"[^>]*rel="next"', html)
