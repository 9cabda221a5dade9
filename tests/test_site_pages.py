"""The favicon and the error pages, in the app's look."""

import pytest
from django.test import RequestFactory
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def test_every_page_names_the_favicon_and_favicon_ico_leads_to_it(client, staff_user):
    client.force_login(staff_user)
    for path in ("/", "/datasets/", "/admin/", "/admin/runs/tunixrun/"):
        html = client.get(path).content.decode()
        assert 'rel="icon" href="/static/runs/favicon.svg"' in html, path
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/runs/favicon.svg"


def test_the_404_page_has_the_apps_look(client, user):
    client.force_login(user)
    response = client.get("/runs/00000000-0000-0000-0000-000000000000/")
    html = response.content.decode()
    assert response.status_code == 404
    assert "runs/app.css" in html and 'class="card narrow center"' in html
    assert "No such run." in html


def test_the_500_page_has_the_apps_look_without_a_request_context():
    response = server_error(RequestFactory().get("/"))
    html = response.content.decode()
    assert response.status_code == 500
    assert "runs/app.css" in html and 'class="brand"' in html and "Something went wrong" in html
