"""The operators' admin: run history, datasets; django-q2 registers its own queue and
schedule pages. Thin like every entry point: reads with selectors, changes with services.

Runs are a record, never edited here: the detail page is read-only, and every change goes
through an action that calls a service (cancel, run again, pin/unpin, delete with
artifacts). Training output is untrusted text: everything is rendered with format_html.
"""

import json
import shlex

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation, helpers
from django.db.models import DurationField, ExpressionWrapper, F
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from runs import hyperparameters, selectors, services, storage
from runs.errors import NotFound, ServiceError
from runs.formatting import duration, human_bytes
from runs.models import TunixRun

admin.site.site_header = "tunix-rt administration"
admin.site.site_title = "tunix-rt admin"
# The app list beside every page takes a quarter of a 1280 px screen from the run list; the
# index page (Home) lists the same links.
admin.site.enable_nav_sidebar = False

EVERYWHERE = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]
# A confirmation page lists the runs it deletes; more than this is a job for prune_runs.
MAX_DELETE_AT_ONCE = 1000


def run_label(run) -> str:
    """How messages name a run: its name, or its short id when it has none."""
    return f'"{run.name}"' if run.name else str(run.id)[:8]


def _labels(runs, *, shown: int = 10) -> str:
    """A list of runs for a message: the first few by label, then how many more."""
    text = ", ".join(run_label(run) for run in runs[:shown])
    return f"{text} and {len(runs) - shown} more" if len(runs) > shown else text


def _pre(text: str):
    return format_html('<pre class="run-text">{}</pre>', text)


@admin.register(TunixRun)
class TunixRunAdmin(admin.ModelAdmin):
    # What fits a 1280 px screen beside the filters; mode, owner, pinning and the rest are on
    # the detail page.
    list_display = ("title", "status", "run_model", "run_dataset", "created", "duration")
    list_filter = (
        "status",
        "mode",
        ("created_at", admin.DateFieldListFilter),
        ("finished_at", admin.DateFieldListFilter),
        "pinned",
    )
    # `id` is matched as text (icontains), so the first characters shown in the list work.
    search_fields = ("id", "model_id", "dataset_key", "message", "name")
    search_help_text = "Run id (or part of it), model, dataset, name or message."
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    list_per_page = 50
    ordering = ("-created_at", "-id")
    actions = ("cancel_runs", "run_again", "pin_runs", "unpin_runs", "delete_with_artifacts")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "run_page",
                    "id",
                    "status",
                    "mode",
                    "name",
                    "owner",
                    "pinned",
                    "parent",
                    "message",
                    "exit_code",
                )
            },
        ),
        (
            "Input",
            {
                "fields": (
                    "dataset_key",
                    "dataset",
                    "dataset_sha256",
                    "model_id",
                    "model_family",
                    "output_dir",
                    "hyperparameters",
                    "resume_from_step",
                )
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    "created_at",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                    "duration",
                    "timeout_seconds",
                    "phase",
                    "progress",
                    "heartbeat_at",
                    "worker_host",
                    "worker_slot",
                    "devices",
                    "pid",
                    "cancel_requested_at",
                )
            },
        ),
        ("What runs", {"fields": ("config_text", "command_text", "environment_text")}),
        ("Log", {"fields": ("log_excerpt", "log_bytes", "log_dropped_bytes")}),
        ("Metrics", {"fields": ("metrics_summary",)}),
    )
    readonly_fields = (
        "run_page",
        "duration",
        "hyperparameters",
        "progress",
        "config_text",
        "command_text",
        "environment_text",
        "log_excerpt",
        "metrics_summary",
    )

    # --- permissions: a read-only record; actions need the change permission -------------

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The detail page is read-only: saving a stale copy of a run would overwrite what
        # its supervisor writes. Changes happen only through the actions below.
        return False

    def has_operate_permission(self, request):
        return request.user.has_perm("runs.change_tunixrun")

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    # --- list ----------------------------------------------------------------------------

    @admin.display(description="Run", ordering="name")
    def title(self, obj):
        short = str(obj.id)[:8]
        if not obj.name:
            return short
        return format_html('{} <span class="quiet">{}</span>', obj.name, short)

    @admin.display(description="Model", ordering="model_id")
    def run_model(self, obj):
        return obj.model_id

    @admin.display(description="Dataset", ordering="dataset_key")
    def run_dataset(self, obj):
        return obj.dataset_key

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj):
        return date_format(localtime(obj.created_at), "Y-m-d H:i")

    @admin.display(
        description="Duration",
        ordering=ExpressionWrapper(
            F("finished_at") - F("started_at"), output_field=DurationField()
        ),
    )
    def duration(self, obj):
        return duration(obj.duration_seconds)

    # --- detail --------------------------------------------------------------------------

    @admin.display(description="Run page")
    def run_page(self, obj):
        return format_html(
            '<a href="{}">Open the run page</a>', reverse("runs:detail", args=[obj.id])
        )

    @admin.display(description="Hyperparameters")
    def hyperparameters(self, obj):
        return format_html_join(
            ", ", "{}={}", ((name, getattr(obj, name)) for name in hyperparameters.HYPERPARAMETERS)
        )

    @admin.display(description="Progress")
    def progress(self, obj):
        if obj.progress_step is None:
            return "-"
        return f"step {obj.progress_step} of {obj.progress_total or '?'}"

    @admin.display(description="Config")
    def config_text(self, obj):
        return _pre(json.dumps(obj.config, indent=2, sort_keys=True))

    @admin.display(description="Command")
    def command_text(self, obj):
        return _pre(shlex.join(str(arg) for arg in obj.command))

    @admin.display(description="Environment")
    def environment_text(self, obj):
        return _pre(json.dumps(obj.environment, indent=2, sort_keys=True))

    @admin.display(description="Log (beginning and end)")
    def log_excerpt(self, obj):
        excerpt = selectors.run_log_excerpt(obj)
        if not excerpt["total_chunks"]:
            return "No log."
        if not excerpt["omitted"]:
            return _pre(excerpt["head"])
        return format_html(
            "{}<p><em>… {} not shown …</em></p>{}",
            _pre(excerpt["head"]),
            excerpt["omitted"],
            _pre(excerpt["tail"]),
        )

    @admin.display(description="Metrics")
    def metrics_summary(self, obj):
        rows = selectors.run_metric_summary(obj)
        if not rows:
            return "No metrics."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}–{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r["name"],
                    r["points"],
                    r["first_step"],
                    r["last_step"],
                    f"{r['last']:.6g}",
                    f"{r['min']:.6g}",
                    f"{r['max']:.6g}",
                )
                for r in rows
            ),
        )
        return format_html(
            "<table><thead><tr><th>name</th><th>points</th><th>steps</th><th>last</th>"
            "<th>min</th><th>max</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    # --- actions -------------------------------------------------------------------------

    def get_actions(self, request, action_location=ActionLocation.CHANGE_LIST):
        actions = super().get_actions(request, action_location=action_location)
        # Django's bulk delete removes rows only; ours removes the folders too.
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Cancel", permissions=["operate"], location=EVERYWHERE)
    def cancel_runs(self, request, queryset):
        cancelled, refused = [], []
        for run in queryset:
            try:
                services.run_cancel(run=run)
                cancelled.append(run)
            except ServiceError as exc:
                refused.append(f"{run_label(run)}: {exc.message}")
        if cancelled:
            self.message_user(request, f"Cancel requested for {_labels(cancelled)}.")
        for text in refused:
            self.message_user(request, text, messages.WARNING)

    @admin.action(description="Run again", permissions=["operate"], location=EVERYWHERE)
    def run_again(self, request, queryset):
        for run in queryset:
            try:
                new = services.run_rerun(run=run, owner=request.user)
            except ServiceError as exc:
                self.message_user(
                    request, f"{run_label(run)} not run again: {exc.message}", messages.ERROR
                )
                continue
            self.message_user(
                request,
                format_html(
                    'Run {} again as <a href="{}">{}</a> ({}).',
                    run_label(run),
                    reverse("admin:runs_tunixrun_change", args=[new.id]),
                    f"{run_label(new)} {str(new.id)[:8]}" if new.name else run_label(new),
                    new.get_status_display(),
                ),
            )

    @admin.action(description="Pin (never pruned)", permissions=["operate"], location=EVERYWHERE)
    def pin_runs(self, request, queryset):
        self._set_pinned(request, queryset, True)

    @admin.action(description="Unpin", permissions=["operate"], location=EVERYWHERE)
    def unpin_runs(self, request, queryset):
        self._set_pinned(request, queryset, False)

    def _set_pinned(self, request, queryset, pinned: bool):
        changed = []
        for run in queryset:
            try:
                services.run_set_pinned(run=run, pinned=pinned)
                changed.append(run)
            except NotFound:
                continue
        verb = "Pinned" if pinned else "Unpinned"
        self.message_user(request, f"{verb} {_labels(changed) or 'no run'}.")

    @admin.action(
        description="Delete with logs, metrics and files",
        permissions=["delete"],
        location=EVERYWHERE,
    )
    def delete_with_artifacts(self, request, queryset):
        count = queryset.count()
        if count > MAX_DELETE_AT_ONCE:
            self.message_user(
                request,
                f"{count} runs selected; delete at most {MAX_DELETE_AT_ONCE} at once here "
                "(`manage.py prune_runs` deletes old runs in bulk).",
                messages.ERROR,
            )
            return None
        changelist = reverse("admin:runs_tunixrun_changelist")
        if request.POST.get("post") == "yes":
            deleted, freed, skipped = [], 0, []
            for run in queryset:
                try:
                    freed += services.run_delete(run=run)
                    deleted.append(run)
                except ServiceError as exc:
                    skipped.append(f"{run_label(run)}: {exc.message}")
            self.message_user(
                request,
                f"Deleted {_labels(deleted) or 'no run'} and freed {human_bytes(freed)} of files.",
            )
            for text in skipped:
                self.message_user(request, text, messages.WARNING)
            return HttpResponseRedirect(changelist)

        runs = list(queryset.select_related("owner"))
        counts = selectors.runs_related_counts([run.id for run in runs])
        rows = []
        for run in runs:
            size = human_bytes(storage.run_folder_size(run))
            rows.append({"run": run, "size": size, **counts[run.id]})
        context = {
            **self.admin_site.each_context(request),
            "title": "Delete runs with their artifacts?",
            "opts": self.opts,
            "rows": [row for row in rows if not row["run"].is_active],
            "active": [row["run"] for row in rows if row["run"].is_active],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": changelist,
        }
        return TemplateResponse(request, "admin/runs/tunixrun/delete_with_artifacts.html", context)

    # The single-object delete page and any bulk delete go through the service too.
    def delete_model(self, request, obj):
        services.run_delete(run=obj)

    def delete_queryset(self, request, queryset):
        for run in queryset:
            services.run_delete(run=run)

    def get_deleted_objects(self, objs, request):
        """A summary instead of Django's list of every log chunk (there can be millions)."""
        runs = list(objs)
        counts = selectors.runs_related_counts([run.id for run in runs])
        summary = []
        for run in runs:
            summary.append(f"Run {run.id} ({run.get_status_display()})")
            summary.append(
                [
                    f"{counts[run.id]['log_chunks']} log chunks",
                    f"{counts[run.id]['metrics']} metrics",
                    f"its folder {run.output_dir}",
                ]
            )
        model_count = {
            "runs": len(runs),
            "log chunks": sum(c["log_chunks"] for c in counts.values()),
            "metrics": sum(c["metrics"] for c in counts.values()),
        }
        protected = [
            f"Run {run.id} is {run.status}; cancel it first" for run in runs if run.is_active
        ]
        return summary, model_count, set(), protected
