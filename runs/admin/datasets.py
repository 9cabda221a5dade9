"""Admin for datasets: list and read-only detail; delete through the dataset service."""

from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from runs.datasets import services as dataset_services
from runs.formatting import human_bytes
from runs.models import Dataset, TunixRun


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("key", "format", "row_count", "size", "owner", "runs", "created_at")
    list_filter = ("format",)
    search_fields = ("key", "name", "description")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    # A dataset's file is fixed when it is imported: only the description can change.
    fields = (
        "key",
        "name",
        "version",
        "format",
        "description",
        "file_path",
        "row_count",
        "size_bytes",
        "sha256",
        "owner",
        "created_at",
        "runs",
    )
    # A dataset version is immutable: only its description may be edited here.
    readonly_fields = tuple(name for name in fields if name != "description")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(run_count=Count("tunixrun"))

    def has_add_permission(self, request):
        # Imported through the API or `manage.py import_dataset`, which validate the file.
        return False

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, obj):
        return human_bytes(obj.size_bytes)

    @admin.display(description="Runs", ordering="run_count")
    def runs(self, obj):
        count = getattr(obj, "run_count", None)
        if count is None:
            count = obj.tunixrun_set.count()
        url = reverse("admin:runs_tunixrun_changelist") + f"?dataset__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, count)

    def delete_model(self, request, obj):
        dataset_services.dataset_delete(dataset=obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for dataset in queryset:
            dataset_services.dataset_delete(dataset=dataset, user=request.user)

    def get_deleted_objects(self, objs, request):
        """Datasets that runs still use are shown as protected, as Django does for PROTECT."""
        datasets = list(objs)
        protected = []
        for dataset in datasets:
            using = TunixRun.objects.filter(dataset=dataset)
            total = using.count()
            for run in using.only("id", "status")[:20]:
                protected.append(f"Run {run.id} ({run.status}) uses {dataset.key}")
            if total > 20:
                protected.append(f"… and {total - 20} more runs use {dataset.key}")
        deleted = [f"Dataset {d.key} and its file {d.file_path}" for d in datasets]
        return deleted, {"datasets": len(datasets)}, set(), protected
