"""Dataset pages: list, upload, preview, export, delete. Thin: read with selectors, change
with services, render templates (fragments for HTMX requests)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from runs import hyperparameters, protocol, selectors, training
from runs.datasets import selectors as dataset_selectors
from runs.datasets import services as dataset_services
from runs.datasets.forms import DatasetUploadForm, name_from_filename
from runs.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceError
from runs.hyperparameters import format_number
from runs.models import Dataset
from runs.pages import charts
from runs.pages.rendering import login_required, render_page

_SEQ = hyperparameters.HYPERPARAMETERS["max_seq_length"]
PREVIEW_ROWS_MAX = 50


def _dataset_or_404(key: str, user) -> Dataset:
    try:
        return dataset_selectors.dataset_get(key, user=user)
    except NotFound as exc:
        raise Http404(exc.message) from exc


@login_required
@require_GET
def dataset_list(request):
    """The list with its filters; an htmx request (a filter changed) gets only the results."""
    fmt = request.GET.get("format") or ""
    if fmt not in Dataset.Format.values:
        fmt = ""
    q = request.GET.get("q", "")[:100]
    found = dataset_selectors.datasets_list(user=request.user, q=q or None, format=fmt or None)
    try:
        number = max(1, min(int(request.GET.get("page", "1")), 1_000_000))
    except ValueError:
        number = 1
    page = selectors.paginate(found, page=number, page_size=25)
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "formats": Dataset.Format.choices,
        "filters": {"q": q, "format": fmt},
        "query": query.urlencode(),
    }
    return render_page(request, "datasets/list.html", context, fragment="results")


# The CSRF check reads request.POST, which parses the upload; it runs inside, so that an
# upload stopped at the size limit is answered here with the form and 413, not a bare 400.
@csrf_exempt
@login_required
@require_http_methods(["GET", "POST"])
def dataset_upload(request):
    try:
        return _dataset_upload(request)
    except PayloadTooLarge as exc:
        # The body was not read to its end, so there is no form data to show again.
        return _render_upload(
            request, DatasetUploadForm(), status=exc.status_code, upload_error=exc.message
        )


@csrf_protect
def _dataset_upload(request):
    if request.method != "POST":
        return _render_upload(request, DatasetUploadForm())
    form = DatasetUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _render_upload(request, form, status=422)
    data = form.cleaned_data
    try:
        dataset = dataset_services.dataset_import(
            source=data["file"],
            name=data["name"],
            version=data["version"],
            owner=request.user,
            declared_format=data["format"] or None,
            description=data["description"],
        )
    except ServiceError as exc:
        form.add_service_error(exc)
        return _render_upload(request, form, status=exc.status_code)
    messages.success(
        request, f"Dataset {dataset.key} imported: {dataset.row_count} rows ({dataset.format})."
    )
    url = reverse("datasets:detail", args=[dataset.key])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _render_upload(request, form, *, status: int = 200, upload_error: str = ""):
    context = {
        "form": form,
        "upload_error": upload_error,
        # An htmx swap keeps the file input as it was; a whole page cannot keep a file.
        "choose_again": request.method == "POST" and not request.htmx,
        "max_bytes": settings.DATASET_MAX_BYTES,
        "max_line_bytes": settings.DATASET_MAX_LINE_BYTES,
    }
    return render_page(
        request, "datasets/upload.html", context, fragment="upload-form", status=status
    )


@login_required
@require_GET
def dataset_upload_check(request):
    """Before the upload starts: the name's and the version's errors as the user types
    (an existing name-version among them), swapped out of band beside each field. An empty
    name is taken from `filename`, as the upload itself would."""
    name = request.GET.get("name", "").strip() or name_from_filename(
        request.GET.get("filename", "")
    )
    version = request.GET.get("version", "").strip()
    errors: dict[str, str] = {}
    if name and version:
        try:
            dataset_services.dataset_import_check(name=name, version=version)
        except ServiceError as exc:
            errors = {key: exc.fields[key] for key in ("name", "version") if key in exc.fields}
    form = DatasetUploadForm()
    fields = [(form[key], [errors[key]] if key in errors else []) for key in ("name", "version")]
    return render(request, "datasets/upload.html#check", {"fields": fields})


def _preview_options(request) -> tuple[dict[str, Any], dict[str, str]]:
    """The preview's choices from the query string, with defaults, and field errors."""
    errors: dict[str, str] = {}
    options: dict[str, Any] = {
        "family": request.GET.get("family") or "",
        "model_id": request.GET.get("model_id") or "",
        "max_seq_length": _SEQ.default,
        "rows": 5,
    }
    for name, low, high in (
        ("max_seq_length", _SEQ.minimum, _SEQ.maximum),
        ("rows", 1, PREVIEW_ROWS_MAX),
    ):
        raw = request.GET.get(name)
        if raw in (None, ""):
            continue
        try:
            value = int(raw)
        except ValueError:
            errors[name] = "Must be an integer."
            continue
        if not low <= value <= high:
            errors[name] = f"Must be between {format_number(low)} and {format_number(high)}."
            continue
        options[name] = value
    return options, errors


@login_required
@require_GET
def dataset_detail(request, key: str):
    """The preview: facts, the first rows as data and as the exact training text, and
    length statistics at a chosen max_seq_length. HTMX requests get the preview fragment."""
    return _render_detail(request, _dataset_or_404(key, request.user), fragment=bool(request.htmx))


def _render_detail(request, dataset: Dataset, *, fragment: bool = False, status: int = 200):
    options, errors = _preview_options(request)
    if errors:
        status = 422
    context: dict[str, Any] = {"dataset": dataset, "options": options, "errors": errors}
    try:
        family, model = dataset_selectors.dataset_target(
            family=options["family"] or None, model_id=options["model_id"] or None
        )
    except InvalidInput as exc:
        errors.update(exc.fields)
        status = exc.status_code
        family, model = protocol.FAMILIES[0], None
    options["family"] = family
    try:
        stats = dataset_selectors.dataset_truncation(
            dataset, family=family, model=model, max_seq_length=options["max_seq_length"]
        )
        rows = dataset_selectors.dataset_preview_rows(dataset, family=family, limit=options["rows"])
    except ServiceError as exc:  # the stored file went missing or was edited
        errors["file"] = exc.message
        status, stats, rows = exc.status_code, None, []
    for row in rows:
        row["json"] = json.dumps(row["data"], indent=2, ensure_ascii=False)
    context.update(
        {
            "family": family,
            "family_label": protocol.FAMILY_LABELS[family],
            "model": model,
            "families": [(f, protocol.FAMILY_LABELS[f]) for f in protocol.FAMILIES],
            "local_models": training.local_models(),
            "stats": stats,
            "sentence": dataset_selectors.truncation_sentence(stats) if stats else "",
            "histogram": charts.histogram_geometry(stats) if stats else {},
            "rows": rows,
            "can_delete": _can_delete(request.user, dataset),
            "seq_bounds": (_SEQ.minimum, _SEQ.maximum),
            "rows_max": PREVIEW_ROWS_MAX,
        }
    )
    return render_page(
        request,
        "datasets/detail.html",
        context,
        fragment="preview" if fragment else None,
        status=status,
    )


def _can_delete(user, dataset: Dataset) -> bool:
    return user.is_staff or (dataset.owner_id is not None and dataset.owner_id == user.id)


def export_response(dataset: Dataset, family: str) -> StreamingHttpResponse:
    """The rendered training JSONL as a streamed download (the page and the API both use
    it): the very lines the launcher reads, never a whole file in memory."""
    response = StreamingHttpResponse(
        dataset_selectors.dataset_rendered_lines(dataset, family=family),
        content_type="application/x-ndjson; charset=utf-8",
    )
    # Keys are [A-Za-z0-9._-] (checked at import), so they are safe in the header.
    response["Content-Disposition"] = f'attachment; filename="{dataset.key}-{family}.jsonl"'
    return response


@login_required
@require_GET
def dataset_export(request, key: str):
    dataset = _dataset_or_404(key, request.user)
    try:
        family, _ = dataset_selectors.dataset_target(
            family=request.GET.get("family") or None,
            model_id=request.GET.get("model_id") or None,
        )
        return export_response(dataset, family)
    except ServiceError as exc:
        messages.error(request, f"Cannot export: {exc.message}")
        return redirect("datasets:detail", key=dataset.key)


@login_required
@require_POST
def dataset_delete(request, key: str):
    dataset = _dataset_or_404(key, request.user)
    try:
        dataset_services.dataset_delete(dataset=dataset, user=request.user)
    except ServiceError as exc:
        # Stay on the dataset with the reason and the status (409 while runs use it).
        messages.error(request, exc.message)
        return _render_detail(request, dataset, status=exc.status_code)
    messages.success(request, f"Dataset {key} deleted.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("datasets:list"))
    return redirect("datasets:list")
