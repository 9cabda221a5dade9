"""The run page's use of a trained run: its evaluations by generation (scores fine-tuned vs
base, the rows with filters, "Evaluate") and its exports ("Export", status, .tar.gz). Each
evaluation or export is a run of its own, with its own run page (log, progress, cancel); the
panels here poll (htmx) while one is active."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from runs import model_files, selectors, services
from runs.datasets.selectors import dataset_get
from runs.errors import NotFound, ServiceError
from runs.models import RunKind, RunStatus
from runs.pages.model_panels import evaluation_context, exports_context, playground_prompt
from runs.pages.rendering import HTMX_STOP_POLLING, login_required
from runs.pages.views import _download, _run
from runs.services.jobs import GENERATION_BOUNDS


def _poll_status(active: bool) -> int:
    return 200 if active else HTMX_STOP_POLLING


@login_required
@require_GET
def evaluation_panel(request, run_id):
    """The evaluation card alone (htmx: filters, choosing an evaluation, polling)."""
    run = _run(request, run_id)
    if not request.htmx:
        return redirect("runs:detail", run_id=run.id)
    context = evaluation_context(
        request.user,
        run,
        evaluation_id=request.GET.get("evaluation", "")[:40],
        change=request.GET.get("change", "")[:16],
    )
    polled = request.GET.get("poll") == "1"
    status = _poll_status(context["eval_polling"]) if polled else 200
    return render(request, "runs/model_panel.html#evaluation", context, status=status)


@login_required
@require_GET
def exports_panel(request, run_id):
    run = _run(request, run_id)
    if not request.htmx:
        return redirect("runs:detail", run_id=run.id)
    context = exports_context(run)
    return render(
        request,
        "runs/model_panel.html#exports",
        context,
        status=_poll_status(context["exports_polling"]),
    )


@login_required
@require_POST
def run_evaluate(request, run_id):
    """Queue an evaluation of the run with the form's dataset and decoding settings."""
    run = _run(request, run_id)
    generation = {name: request.POST.get(name, "") for name in GENERATION_BOUNDS}
    key = request.POST.get("dataset_key", "")
    try:
        dataset = dataset_get(key, user=request.user) if key else None
        if dataset is not None and dataset.pk == run.dataset_id:
            dataset = None  # the run's own dataset: its held-out rows
        job = services.evaluation_create(
            run=run, owner=request.user, dataset=dataset, generation=generation
        )
    except ServiceError as exc:
        problems = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in exc.fields.items())
        messages.error(request, f"{exc.message} {problems}".strip())
    else:
        messages.success(request, f"Evaluation {str(job.id)[:8]} queued.")
    return redirect(reverse("runs:detail", args=[run.id]) + "#evaluation")


@login_required
@require_POST
def run_export(request, run_id):
    """Queue the export of the run as local:NAME."""
    run = _run(request, run_id)
    try:
        job = services.export_create(
            run=run, owner=request.user, name=request.POST.get("name", "").strip()[:100]
        )
    except ServiceError as exc:
        problems = "; ".join(exc.fields.values())
        messages.error(request, f"{exc.message} {problems}".strip())
    else:
        messages.success(request, f"Export to local:{job.name} queued.")
    return redirect(reverse("runs:detail", args=[run.id]) + "#exports")


@login_required
@require_GET
def export_archive(request, run_id, job_id):
    """The exported model folder as a streamed .tar.gz."""
    run = _run(request, run_id)
    job = selectors.run_jobs(run, RunKind.EXPORT).filter(id=job_id).first()
    if job is None or job.status != RunStatus.COMPLETED:
        raise Http404("No such completed export.")
    try:
        chunks = model_files.model_archive(job.name)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    return _download(chunks, "application/gzip", f"{job.name}.tar.gz")


# --- the playground ---------------------------------------------------------------------


def _prompt_settings(request) -> dict:
    return {
        name: request.POST.get(name, "")
        for name in ("max_new_tokens", "temperature", "top_p", "seed")
    }


@login_required
@require_POST
def playground_submit(request, run_id):
    """Record a prompt and queue its answer; htmx gets the answer card, which polls."""
    run = _run(request, run_id)
    try:
        record = services.prompt_submit(
            run=run,
            owner=request.user,
            prompt=request.POST.get("prompt", ""),
            generation=_prompt_settings(request),
        )
    except ServiceError as exc:
        problems = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in exc.fields.items())
        if request.htmx:
            context = {"error": f"{exc.message} {problems}".strip()}
            # 200: htmx swaps only successful answers into the page.
            return render(request, "runs/model_panel.html#prompt_error", context)
        messages.error(request, f"{exc.message} {problems}".strip())
        return redirect(reverse("runs:detail", args=[run.id]) + "#playground")
    if not request.htmx:
        return redirect(reverse("runs:detail", args=[run.id]) + "#playground")
    # `asked`: the card also hides the rendered prompt shown for the text asked before.
    context = playground_prompt(run, record) | {"asked": True}
    return render(request, "runs/model_panel.html#prompt", context)


@login_required
@require_GET
def playground_prompt_view(request, run_id, prompt_id):
    """One prompt's answer card; polled until it is answered (then 286)."""
    run = _run(request, run_id)
    record = selectors.run_prompts(run).filter(id=prompt_id).first()
    if record is None:
        raise Http404("No such prompt.")
    if not request.htmx:
        return redirect(reverse("runs:detail", args=[run.id]) + "#playground")
    context = playground_prompt(run, record)
    return render(
        request,
        "runs/model_panel.html#prompt",
        context,
        status=_poll_status(context["prompt"].status == "pending"),
    )


@login_required
@require_POST
def playground_render(request, run_id):
    """The raw prompt the models would be given (the run's chat template applied)."""
    run = _run(request, run_id)
    rendered = services.render_prompt(run, request.POST.get("prompt", "")[:20_000])
    return render(request, "runs/model_panel.html#rendered", {"rendered": rendered})


# --- the models page --------------------------------------------------------------------


@login_required
@require_GET
def model_list(request):
    """Local base models and exported ones, with lineage, family, size and their runs."""
    context = {"models": services.model_catalogue(), "section": "models"}
    return render(request, "runs/models.html", context)


@login_required
@require_POST
def model_delete(request, name):
    try:
        services.model_delete(name=name)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("runs:models")
    messages.success(request, f"local:{name} was deleted.")
    return redirect("runs:models")
