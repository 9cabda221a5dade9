from django.contrib import admin

from .models import Dataset, TunixRun


@admin.register(TunixRun)
class TunixRunAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "mode", "dataset_key", "model_id", "owner", "created_at")
    list_filter = ("status", "mode")
    search_fields = ("id", "model_id", "dataset_key", "message")
    readonly_fields = [f.name for f in TunixRun._meta.fields]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("key", "format", "row_count", "size_bytes", "created_at")
    readonly_fields = ("sha256", "row_count", "size_bytes", "file_path")


from . import admin_tokens  # noqa: E402, F401  (registers the API token admin)
