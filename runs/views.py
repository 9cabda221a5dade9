"""HTML pages. Thin: read with selectors, change with services, render templates."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render

from . import selectors
from .errors import Forbidden, NotFound


@login_required
def run_list(request):
    runs = selectors.runs_filter(
        selectors.runs_visible_to(request.user),
        status=request.GET.get("status") or None,
        mode=request.GET.get("mode") or None,
        dataset_key=request.GET.get("dataset") or None,
        model_id=request.GET.get("model") or None,
        q=request.GET.get("q") or None,
    )
    try:
        number = int(request.GET.get("page", "1"))
    except ValueError:
        number = 1
    page = selectors.paginate(runs, page=number, page_size=25)
    return render(request, "runs/run_list.html", {"page": page})


@login_required
def run_detail(request, run_id):
    try:
        run = selectors.run_for_user(user=request.user, run_id=run_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from exc
    return render(request, "runs/run_detail.html", {"run": run})
