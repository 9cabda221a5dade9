"""HTML pages. Thin: read with selectors, change with services, render templates.

Every page renders whole for a normal request and only its fragment (a `{% partialdef %}`
of the same template) for an htmx request, so links and forms work without JavaScript
and htmx swaps the same markup in place.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from runs import selectors, services, storage, training
from runs.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServiceError,
    TunixUnavailable,
)
from runs.models import RunMode, RunStatus
from runs.pages import charts, model_panels, run_page
from runs.pages.forms import RunForm
from runs.pages.rendering import HTMX_STOP_POLLING, login_required
from runs.pages.rendering import is_fragment as _fragment
from runs.pages.rendering import render_page as _render

LOG_TAIL_CHUNKS = 500
LOG_POLL_CHUNKS = 500


def _run(request, run_id):
    """The run if `request.user` may see it; a 404 or 403 page otherwise."""
    try:
        return selectors.run_for_user(user=request.user, run_id=run_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from exc


def _page_number(request) -> int:
    try:
        return max(1, min(int(request.GET.get("page", "1")), 1_000_000))
    except ValueError:
        return 1


# --- the run list -----------------------------------------------------------------------


@login_required
@require_GET
def run_list(request):
    visible = selectors.runs_visible_to(request.user)
    filters = {
        "status": request.GET.get("status", "")[:16],
        "mode": request.GET.get("mode", "")[:16],
        "dataset": request.GET.get("dataset", "")[:160],
        "model": request.GET.get("model", "")[:200],
        "q": request.GET.get("q", "")[:100],
    }
    runs = selectors.runs_filter(
        visible,
        status=filters["status"] or None,
        mode=filters["mode"] or None,
        dataset_key=filters["dataset"] or None,
        model_id=filters["model"] or None,
        q=filters["q"] or None,
    )
    try:
        page = selectors.runs_page(
            runs,
            page_size=25,
            cursor=request.GET.get("cursor", "")[:200] or None,
            before=request.GET.get("before", "")[:200] or None,
            page=_page_number(request),
        )
    except InvalidInput:
        # A cursor mangled by hand, or a page number too deep: the newest runs instead.
        page = selectors.runs_page(runs, page_size=25)
    query = request.GET.copy()
    for key in ("page", "cursor", "before"):
        query.pop(key, None)
    context = {
        "page": page,
        "filters": filters,
        "query": query.urlencode(),
        "options": selectors.run_filter_options(request.user),
        "statuses": RunStatus.choices,
        "modes": RunMode.choices,
    }
    return _render(request, "runs/run_list.html", context, fragment="results")


def _gone(request, run_id, template):
    """The answer to a poll for a run deleted meanwhile: its fragment says so, polling stops."""
    return render(request, template, {"run_id": run_id}, status=HTMX_STOP_POLLING)


@login_required
@require_GET
def run_row(request, run_id):
    """One row of the run list; an active row polls this until its run is final."""
    try:
        run = _run(request, run_id)
    except Http404:
        if _fragment(request):
            return _gone(request, run_id, "runs/run_list.html#gone")
        raise
    if not _fragment(request):
        return redirect("runs:detail", run_id=run.id)
    return render(
        request,
        "runs/run_list.html#row",
        {"run": run},
        status=HTMX_STOP_POLLING if run.is_final else 200,
    )


# --- the run form -----------------------------------------------------------------------


def _form_context(request, form, *, plan=None, source_run=None):
    return {
        "form": form,
        "plan": plan,
        "source_run": source_run,
        "tunix_status": training.probe(),
        "local_models": training.local_models(),
    }


def _preview(request, form):
    """A dry-run plan of the form's values (nothing stored), or None with errors on the form."""
    if not form.is_valid():
        return None
    try:
        return services.run_plan(
            owner=request.user, request=form.plan_request(), check_dataset=False
        )
    except InvalidInput as exc:
        form.add_service_errors(exc)
        return None


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request):
    if request.method == "GET":
        source_run = None
        initial = {}
        if request.GET.get("from"):
            source_run = _run(request, request.GET["from"])
            initial = RunForm.initial_from_request(services.run_request(source_run))
        models = training.local_models()
        if not initial.get("model_id") and models:
            initial["model_id"] = models[0]
        form = RunForm(initial=initial, user=request.user)
        # The preview of an unsubmitted form shows what its initial values would run.
        bound = RunForm(form.initial_data(), user=request.user)
        context = _form_context(request, form, plan=_preview(request, bound), source_run=source_run)
        return _render(request, "runs/run_form.html", context, fragment="form")

    form = RunForm(request.POST, user=request.user)
    status = 200
    if form.is_valid():
        try:
            run = services.run_create(owner=request.user, request=form.run_request())
        except InvalidInput as exc:
            form.add_service_errors(exc)
            status = exc.status_code
        except (TunixUnavailable, LimitExceeded) as exc:
            messages.error(request, exc.message)
            status = exc.status_code
        else:
            if run.mode == RunMode.DRY_RUN:
                messages.success(request, "Dry-run finished: nothing was executed.")
            else:
                run_page.status_message(
                    request, messages.SUCCESS, "Run queued.", while_status=RunStatus.PENDING
                )
            return redirect("runs:detail", run_id=run.id)
    else:
        status = InvalidInput.status_code
        form.check_service_fields(owner=request.user)
    # A refused submission (Tunix unavailable, queue full) still previews what it would run.
    plan = _preview(request, form) if not form.errors else None
    context = _form_context(request, form, plan=plan)
    return _render(request, "runs/run_form.html", context, fragment="form", status=status)


@login_required
@require_POST
def run_validate(request):
    """The error list of the one field that triggered the request (htmx, as the user types)."""
    form = RunForm(request.POST, user=request.user)
    name = (request.htmx.trigger_name if request.htmx else None) or request.POST.get("_field")
    if name not in form.fields or name == "mode":
        return HttpResponse("Unknown field.", status=400, content_type="text/plain")
    form.check_field(name, owner=request.user)
    return render(request, "runs/run_form.html#field_errors", {"field": form[name]})


@login_required
@require_POST
def run_method_settings(request):
    """The form again for the chosen method (htmx swaps in its settings and datasets). The
    values typed so far are kept; nothing is validated yet."""
    form = RunForm(initial=request.POST.dict(), user=request.user)
    return _render(
        request, "runs/run_form.html", _form_context(request, form, plan=None), fragment="form"
    )


@login_required
@require_POST
def run_preview(request):
    """The exact config and command the form's values would produce (nothing stored)."""
    form = RunForm(request.POST, user=request.user)
    plan = _preview(request, form)
    return render(request, "runs/run_form.html#preview", {"form": form, "plan": plan})


# --- the run page -----------------------------------------------------------------------


def _after(request) -> int:
    try:
        return max(0, int(request.GET.get("after", "0")))
    except ValueError:
        return 0


@login_required
@require_GET
def run_detail(request, run_id):
    try:
        run = _run(request, run_id)
    except Http404:
        if _fragment(request):
            return _gone(request, run_id, "runs/run_detail.html#gone")
        raise
    if _fragment(request):
        return _run_status(request, run)
    chunks, earlier = selectors.run_log_tail(run, limit=LOG_TAIL_CHUNKS)
    context = {
        "run": run,
        "chunks": run_page.log_lines(run, chunks),
        "earlier_log": earlier,
        "cursor": chunks[-1]["seq"] if chunks else 0,
        "metric_version": selectors.run_metric_version(run),
        "panels": run_page.panels(request.user, run),
        "queue_position": selectors.queue_position(run),
        "polling": run.is_active,
        "tunix_status": training.probe() if run.mode == RunMode.DRY_RUN else None,
        "live_messages": run_page.live_messages(request, run),
        **run_page.outputs_context(request.user, run),
        "chain": selectors.run_chain(run),
        "samples": selectors.run_samples(run),
        **model_panels.panel_context(request.user, run),
    }
    return _render(request, "runs/run_detail.html", context)


def _run_status(request, run):
    """The poll answer: the status panel, new log chunks after `?after=`, and the chart when
    its points changed. 286 once the run is final and its log has been sent in full."""
    # The status is read before the chunks: every chunk written before the run became
    # final is then already visible, so a final answer never leaves log lines behind.
    after = _after(request)
    chunks = selectors.run_log_chunks(run, after=after, limit=LOG_POLL_CHUNKS)
    more = len(chunks) >= LOG_POLL_CHUNKS
    metric_version = selectors.run_metric_version(run)
    seen_metrics = request.GET.get("m", "")
    final = run.is_final and not more
    context = {
        "run": run,
        "chunks": run_page.log_lines(run, chunks, after=after),
        "cursor": chunks[-1]["seq"] if chunks else after,
        "metric_version": metric_version,
        "panels": run_page.panels(request.user, run)
        if str(metric_version) != seen_metrics
        else None,
        "queue_position": selectors.queue_position(run),
        "polling": not final,
        "final": final,
        # A banner ("Run queued.", "Cancel requested") was about the status the page showed
        # (`s`); once the status moved on, it is stale and goes away.
        "clear_messages": request.GET.get("s", run.status) != run.status,
    }
    if final:
        context.update(run_page.outputs_context(request.user, run))
    response = render(
        request,
        "runs/run_detail.html#poll",
        context,
        status=HTMX_STOP_POLLING if final else 200,
    )
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_POST
def run_cancel(request, run_id):
    run = _run(request, run_id)
    try:
        run = services.run_cancel(run=run)
    except Conflict as exc:
        messages.error(request, exc.message)
    else:
        if run.is_final:
            messages.success(request, "The run was cancelled.")
        else:
            run_page.status_message(
                request,
                messages.INFO,
                "Cancel requested: the run is being stopped.",
                while_status=run.status,
            )
    return redirect("runs:detail", run_id=run.id)


@login_required
@require_POST
def run_delete(request, run_id):
    run = _run(request, run_id)
    try:
        services.run_delete(run=run)
    except Conflict as exc:
        messages.error(request, exc.message)
        return redirect("runs:detail", run_id=run.id)
    except NotFound:
        pass  # deleted meanwhile: the outcome the user asked for
    messages.success(request, f"Run {str(run.id)[:8]} was deleted with its files.")
    return redirect("runs:list")


@login_required
@require_GET
def run_log(request, run_id):
    """The whole stored log as a text download, streamed chunk by chunk."""
    run = _run(request, run_id)
    return _download(selectors.run_log_text(run), "text/plain; charset=utf-8", f"run-{run.id}.log")


@login_required
@require_GET
def run_archive(request, run_id):
    """The run's whole output folder as a streamed .tar.gz."""
    run = _run(request, run_id)
    return _download(storage.run_output_archive(run), "application/gzip", f"run-{run.id}.tar.gz")


def _download(chunks, content_type: str, filename: str) -> StreamingHttpResponse:
    """A streamed attachment; `filename` is ours (built from a run id), never a request's."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_POST
def run_continue(request, run_id):
    """Continue a finished run from its latest complete checkpoint, as a new linked run."""
    run = _run(request, run_id)
    try:
        max_steps = int(request.POST.get("max_steps", ""))
    except ValueError:
        messages.error(request, "Give the total number of steps to train to.")
        return redirect("runs:detail", run_id=run.id)
    try:
        child = services.run_resume(run=run, owner=request.user, max_steps=max_steps)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("runs:detail", run_id=run.id)
    plan = child.environment.get("plan") or {}
    what = services.plan_sentence(plan) if "from_step" in plan else ""
    run_page.status_message(
        request,
        messages.SUCCESS,
        f"Continuing from step {child.resume_from_step}: run queued. {what}".strip(),
        while_status=RunStatus.PENDING,
    )
    return redirect("runs:detail", run_id=child.id)


@login_required
@require_GET
def run_checkpoint_archive(request, run_id, step):
    """One checkpoint step's folder as a streamed .tar.gz."""
    run = _run(request, run_id)
    try:
        chunks = storage.run_checkpoint_archive(run, step)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    return _download(chunks, "application/gzip", f"run-{run.id}-step-{int(step)}.tar.gz")


@login_required
@require_POST
def run_for_real(request, run_id):
    """Queue a dry-run's exact inputs as a local run."""
    run = _run(request, run_id)
    if run.mode != RunMode.DRY_RUN:
        messages.error(request, "Only a dry-run can be run for real; use Run again.")
        return redirect("runs:detail", run_id=run.id)
    try:
        new = services.run_rerun(run=run, owner=request.user, changes={"mode": RunMode.LOCAL})
    except InvalidInput as exc:
        problems = "; ".join(f"{name}: {text}" for name, text in exc.fields.items())
        messages.error(request, f"{exc.message} {problems}".strip())
        return redirect("runs:detail", run_id=run.id)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("runs:detail", run_id=run.id)
    run_page.status_message(
        request, messages.SUCCESS, "Run queued.", while_status=RunStatus.PENDING
    )
    return redirect("runs:detail", run_id=new.id)


@login_required
@require_GET
def run_file(request, run_id, relative):
    """One file of the run's outputs; confined to the run's folder by the selector."""
    run = _run(request, run_id)
    try:
        handle = storage.run_output_file(run, relative)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    # As the API: an opaque type, so a file written by training is never rendered inline.
    return FileResponse(
        handle,
        as_attachment=True,
        filename=relative.rstrip("/").rsplit("/", 1)[-1],
        content_type="application/octet-stream",
    )


# --- comparing runs ---------------------------------------------------------------------


@login_required
@require_GET
def run_compare(request):
    runs, problems = selectors.runs_for_compare(
        user=request.user, run_ids=request.GET.getlist("run")[:50]
    )
    for problem in problems:
        messages.warning(request, problem)
    metrics = [selectors.run_metric_series(run) for run in runs]
    colors = [charts.PALETTE[i % len(charts.PALETTE)] for i in range(len(runs))]
    # Runs of different methods line up on what they share; each label says its method.
    methods = len({run.method for run in runs}) > 1
    labelled = [
        (
            (run.name[:24] or str(run.id)[:8])
            + (f" ({run.get_method_display()})" if methods else ""),
            color,
            run_metrics,
        )
        for run, color, run_metrics in zip(runs, colors, metrics, strict=True)
    ]
    only_differences = request.GET.get("only") == "diff"
    rows = selectors.run_comparison(runs) if len(runs) >= 2 else []
    context = {
        "runs": runs,
        "rows": [r for r in rows if r["differs"]] if only_differences else rows,
        "only_differences": only_differences,
        "panels": charts.compare_panels(labelled) if len(runs) >= 2 else [],
        "unshared": charts.unshared_quantities(labelled) if len(runs) >= 2 else [],
        "columns": list(zip(runs, colors, strict=True)),
    }
    return _render(request, "runs/compare.html", context, fragment="body")
