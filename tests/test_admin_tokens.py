"""API tokens in the admin: generated on creation, shown once, stored hashed, revocable."""

import re

import pytest

from runs import services
from runs.models import ApiToken

from .conftest import ApiClient

pytestmark = pytest.mark.django_db

ADD = "/admin/runs/apitoken/add/"
LIST = "/admin/runs/apitoken/"


def create_in_admin(admin_client, user, name="ci"):
    response = admin_client.post(ADD, {"user": user.pk, "name": name})
    assert response.status_code == 200, response.content[:500]
    match = re.search(r'<code id="api-token"[^>]*>([^<]+)</code>', response.content.decode())
    assert match, "the clear token is shown on the page"
    return response, match.group(1)


def test_creating_a_token_in_the_admin_shows_it_once_and_it_works(admin_client, user):
    response, token = create_in_admin(admin_client, user)
    record = ApiToken.objects.get()
    assert record.user == user and record.name == "ci"
    assert record.token_hash == services.token_hash(token) and token.startswith(record.prefix)
    assert "no-store" in response["Cache-Control"]
    assert ApiClient(token).get("/api/tunix/runs").status_code == 200
    # Never again: neither the list nor the token's own page shows it.
    assert token not in admin_client.get(LIST).content.decode()
    detail = admin_client.get(f"{LIST}{record.pk}/change/")
    assert detail.status_code == 200
    assert token not in detail.content.decode() and record.prefix in detail.content.decode()


def test_the_admin_form_takes_no_token_value_from_the_request(admin_client, user):
    _, token = create_in_admin(admin_client, user)
    admin_client.post(ADD, {"user": user.pk, "name": "x", "token_hash": "0" * 64})
    assert not ApiToken.objects.filter(token_hash="0" * 64).exists()
    assert ApiToken.objects.count() == 2


def test_an_invalid_admin_form_creates_nothing(admin_client):
    response = admin_client.post(ADD, {"user": "", "name": "x"})
    assert response.status_code == 200
    assert b"This field is required" in response.content
    assert ApiToken.objects.count() == 0


def test_revoking_in_the_admin_stops_the_token_at_once(admin_client, user):
    _, token = create_in_admin(admin_client, user)
    record = ApiToken.objects.get()
    response = admin_client.post(
        LIST, {"action": "revoke_tokens", "_selected_action": [record.pk]}, follow=True
    )
    assert b"Revoked 1 token(s)" in response.content
    record.refresh_from_db()
    assert record.revoked_at is not None
    page = admin_client.get(LIST).content.decode()
    assert '<td class="field-revoked">yes, ' in page
    assert admin_client.get(LIST, {"revoked": "no"}).content.decode().count("field-revoked") == 0
    assert admin_client.get(LIST, {"revoked": "yes"}).content.decode().count("field-revoked") == 1
    assert ApiClient(token).get("/api/tunix/runs").status_code == 401


def test_a_token_cannot_be_edited_in_the_admin(admin_client, user, other_user):
    create_in_admin(admin_client, user)
    record = ApiToken.objects.get()
    response = admin_client.post(
        f"{LIST}{record.pk}/change/", {"user": other_user.pk, "name": "stolen"}
    )
    assert response.status_code == 403
    record.refresh_from_db()
    assert record.user == user and record.name == "ci"


def test_the_token_list_shows_last_use_and_state(admin_client, user):
    _, token = create_in_admin(admin_client, user, name="nightly")
    ApiClient(token).get("/api/tunix/runs")
    page = admin_client.get(LIST).content.decode()
    assert "nightly" in page and "alice" in page
    assert '<td class="field-revoked">no</td>' in page and "By revoked" in page
    assert "icon-yes.svg" not in page and "icon-no.svg" not in page
    assert ">API tokens<" in admin_client.get("/admin/").content.decode()
    assert ApiToken.objects.get().last_used_at is not None


def test_the_management_command_prints_a_working_token_once(user):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("create_api_token", "alice", "--name", "laptop", stdout=out)
    token = out.getvalue().strip()
    record = ApiToken.objects.get()
    assert record.name == "laptop" and record.token_hash == services.token_hash(token)
    assert ApiClient(token).get("/api/tunix/runs").status_code == 200
    with pytest.raises(CommandError, match="No user nobody"):
        call_command("create_api_token", "nobody")


@pytest.fixture
def token_staff(django_user_model):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("dave", password="dave-pw-1", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_apitoken", "view_apitoken"])
    )
    return staff


def test_a_staff_member_mints_tokens_only_for_themselves(client, token_staff, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", password="boss-pw-1")
    client.force_login(token_staff)
    response = client.post(ADD, {"user": boss.pk, "name": "steal"})
    assert not ApiToken.objects.filter(user=boss).exists()
    assert response.status_code == 200 and b"Select a valid choice" in response.content
    response = client.post(ADD, {"user": token_staff.pk, "name": "mine"})
    assert response.status_code == 200
    assert ApiToken.objects.get().user == token_staff


def test_revoking_needs_a_permission(client, token_staff, user):
    record, token = services.api_token_create(user=user)
    client.force_login(token_staff)
    response = client.post(LIST, {"action": "revoke_tokens", "_selected_action": [record.pk]})
    record.refresh_from_db()
    assert record.revoked_at is None
    assert ApiClient(token).get("/api/tunix/runs").status_code == 200
    assert b"revoke_tokens" not in client.get(LIST).content
    assert response.status_code in (200, 302)
