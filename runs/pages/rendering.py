"""What every HTML page shares: a page or its fragment by `request.htmx` (with `Vary`), and a
login check that works for htmx requests. The run pages and the dataset pages both use it."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required as django_login_required
from django.shortcuts import render, resolve_url
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect

# htmx stops polling an element whose response has this status (and still swaps it).
HTMX_STOP_POLLING = 286


def login_required(view):
    """Django's login_required, except that an htmx request whose session ended sends the
    whole page to the login form, instead of swapping the login form into a fragment."""
    protected = django_login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.htmx and not request.user.is_authenticated:
            back = request.htmx.current_url_abs_path or resolve_url("runs:list")
            login = resolve_url(settings.LOGIN_URL)
            return HttpResponseClientRedirect(f"{login}?{urlencode({'next': back})}")
        return protected(request, *args, **kwargs)

    return wrapper


def is_fragment(request) -> bool:
    """An htmx request for a fragment. A history restore wants the whole page."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(request, template, context, *, fragment=None, status=200):
    """The whole page, or only its `{% partialdef fragment %}` for an htmx request. The
    answer varies by HX-Request, so a cache never serves a fragment as the page."""
    name = f"{template}#{fragment}" if fragment and is_fragment(request) else template
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response
