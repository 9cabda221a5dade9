"""Worker hosts as they registered themselves: read-only (a host rewrites its row as it beats)."""

from django.contrib import admin
from django.utils import timezone

from runs.models import RunStatus, TunixRun, WorkerHost


@admin.register(WorkerHost)
class WorkerHostAdmin(admin.ModelAdmin):
    list_display = ("name", "slot_layout", "accelerator_summary", "busy", "heartbeat_at")
    readonly_fields = (
        "name",
        "queue",
        "slot_layout",
        "accelerator_summary",
        "busy",
        "probed_at",
        "started_at",
        "heartbeat_at",
    )
    fields = readonly_fields

    @admin.display(description="slots")
    def slot_layout(self, obj):
        return "; ".join(",".join(devices) or "all devices" for devices in obj.slots) or "—"

    @admin.display(description="accelerators")
    def accelerator_summary(self, obj):
        found = obj.accelerators or {}
        if "error" in found:
            return found["error"]
        if not found:
            return "not probed"
        memory = found.get("memory_bytes")
        each = f", {memory / 2**30:.0f} GiB each" if memory else ""
        return f"{found.get('count')} × {found.get('kind')} ({found.get('platform')}{each})"

    @admin.display(description="running runs")
    def busy(self, obj):
        running = TunixRun.objects.filter(status=RunStatus.RUNNING, worker_host=obj.name).count()
        stale = (timezone.now() - obj.heartbeat_at).total_seconds()
        seen = f" (last seen {stale:.0f} s ago)" if stale > 60 else ""
        return f"{running} of {len(obj.slots)}{seen}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
