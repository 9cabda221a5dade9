"""The pages show 8-character run ids: a unique prefix of at least 6 characters finds the
run in the API, the run search and the CLI."""

import uuid

import pytest

from runs import selectors
from runs.models import TunixRun

pytestmark = pytest.mark.django_db


def with_id(run, new_id: str) -> TunixRun:
    """Give a run a chosen id (to make two share a prefix)."""
    TunixRun.objects.filter(id=run.id).update(id=uuid.UUID(new_id))
    return TunixRun.objects.get(id=uuid.UUID(new_id))


def test_the_api_finds_a_run_by_a_unique_prefix(api, run_factory):
    run = with_id(run_factory(), "a3e8e12d-1111-4111-8111-111111111111")
    for prefix in ("a3e8e1", "a3e8e12d", "A3E8E12D", "a3e8e12d-11", "a3e8e12d11"):
        response = api.get(f"/api/tunix/runs/{prefix}")
        assert response.status_code == 200, (prefix, response.content)
        assert response.json()["id"] == str(run.id)
    # Other operations on one run take a prefix too.
    assert api.get("/api/tunix/runs/a3e8e12d/logs").json()["run_id"] == str(run.id)


def test_a_short_ambiguous_or_unknown_prefix_is_refused(api, run_factory):
    with_id(run_factory(), "a3e8e12d-1111-4111-8111-111111111111")
    with_id(run_factory(), "a3e8e12d-2222-4222-8222-222222222222")
    short = api.get("/api/tunix/runs/a3e8e")
    assert short.status_code == 404 and "at least 6" in short.json()["detail"]
    ambiguous = api.get("/api/tunix/runs/a3e8e12d")
    assert ambiguous.status_code == 409
    assert "more characters" in ambiguous.json()["detail"]
    assert api.get("/api/tunix/runs/a3e8e12d-2").status_code == 200
    assert api.get("/api/tunix/runs/bbbbbbbb").status_code == 404
    assert api.get("/api/tunix/runs/not-hex!").status_code == 404


def test_a_prefix_finds_only_the_users_own_runs(api, run_factory, other_user):
    with_id(run_factory(owner=other_user), "a3e8e12d-1111-4111-8111-111111111111")
    mine = with_id(run_factory(), "a3e8e12d-2222-4222-8222-222222222222")
    # Someone else's run neither answers nor makes the prefix ambiguous.
    assert api.get("/api/tunix/runs/a3e8e12d").json()["id"] == str(mine.id)
    assert api.get("/api/tunix/runs/a3e8e12d-1").status_code == 404


def test_the_run_search_matches_an_id_prefix(api, client, user, run_factory):
    run = with_id(run_factory(name="alpha-run"), "a3e8e12d-1111-4111-8111-111111111111")
    run_factory(name="beta-run")
    found = selectors.runs_filter(TunixRun.objects.all(), q="a3e8e12d")
    assert [r.id for r in found] == [run.id]
    page = api.get("/api/tunix/runs?q=a3e8e1").json()
    assert [item["id"] for item in page["items"]] == [str(run.id)]
    client.force_login(user)
    html = client.get("/?q=a3e8e12d").content.decode()
    assert "alpha-run" in html and "beta-run" not in html


def test_the_run_list_shows_names_short_ids_and_marks_pinned_runs(client, user, run_factory):
    named = with_id(run_factory(name="alpha-run"), "a3e8e12d-1111-4111-8111-111111111111")
    TunixRun.objects.filter(id=named.id).update(pinned=True)
    with_id(run_factory(), "b4f9f23e-2222-4222-8222-222222222222")
    client.force_login(user)
    html = client.get("/").content.decode()
    alpha = html[html.index('id="row-a3e8e12d') :].split("</tr>")[0]
    beta = html[html.index('id="row-b4f9f23e') :].split("</tr>")[0]
    assert "alpha-run" in alpha and "<code>a3e8e12d</code>" in alpha
    assert 'class="badge pinned"' in alpha and "Pinned" in alpha
    assert "<code>b4f9f23e</code>" in beta and "badge pinned" not in beta
