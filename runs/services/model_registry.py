"""The models folder as a registry: the local base models and the exported ones, with their
lineage (base -> run -> export), and deletion, refused while runs use the model."""

from __future__ import annotations

from typing import Any

from .. import model_files
from ..errors import Conflict
from ..models import RunKind, RunStatus, TunixRun


def model_catalogue() -> list[dict[str, Any]]:
    """Every local model with: the export that made it (and its run and base model), and the
    runs that used it (training runs whose model it is), newest first."""
    entries = model_files.local_model_list()
    names = [e["name"] for e in entries]
    exports = {
        job.name: job
        for job in TunixRun.objects.filter(
            kind=RunKind.EXPORT, status=RunStatus.COMPLETED, name__in=names
        )
        .select_related("source")
        .order_by("created_at")
    }
    used: dict[str, list[TunixRun]] = {}
    for run in TunixRun.objects.filter(
        kind=RunKind.TRAIN, model_id__in=[e["model_id"] for e in entries]
    ).order_by("-created_at")[:2000]:
        used.setdefault(run.model_id, []).append(run)
    for entry in entries:
        export = exports.get(entry["name"])
        entry["export"] = export
        entry["source_run"] = export.source if export else None
        entry["base_model"] = export.source.model_id if export and export.source else None
        entry["family"] = export.model_family if export else entry["model_type"]
        entry["runs"] = used.get(entry["model_id"], [])
    return entries


def model_delete(*, name: str) -> int:
    """Remove local:`name`'s folder (bytes freed); Conflict while runs use it."""
    path = model_files.model_path(name)  # NotFound first
    users = TunixRun.objects.filter(kind=RunKind.TRAIN, model_id=f"local:{path.name}")
    count = users.count()
    if count:
        raise Conflict(
            f"local:{path.name} is used by {count} run{'s' if count != 1 else ''}; "
            "delete those runs first."
        )
    return model_files.model_remove(path.name)
