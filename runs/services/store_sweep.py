"""Retention's orphan sweep of the object store (runs/retention.py sweeps the local folder the
same way): prefixes named runs/<uuid> in the artifacts store that no run owns are removed once
their newest object is older than the grace. Never touched: a prefix that is a run's folder
(by folder or by id), that holds a run's folder or sits inside one, that a pending
FolderDeletion names or holds (retention's leftover pass owns those), and one whose objects'
times the store does not report."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from .. import storage
from ..models import FolderDeletion, TunixRun


def _run_id(relative: str) -> uuid.UUID | None:
    name = relative.split("/", 1)[1]
    try:
        value = uuid.UUID(name)
    except ValueError:
        return None
    return value if str(value) == name else None


def _pending_deletions() -> set[str]:
    """Every folder a FolderDeletion still names (few: a backlog of unfinished removals)."""
    return {p for paths in FolderDeletion.objects.values_list("paths", flat=True) for p in paths}


def remove_stored_orphans(
    summary, *, now: datetime, grace: timedelta, batch_size: int = 500
) -> None:
    """Count (a dry run) or remove the orphaned prefixes into `summary.orphans` and
    `summary.file_bytes`. Without a store there is nothing to list."""
    folders = [f for f in storage.stored_run_folders() if _run_id(f) is not None]
    if not folders:
        return
    pending = _pending_deletions()
    chosen = storage.chosen_folders()
    old_enough = (now - grace).timestamp()
    for start in range(0, len(folders), batch_size):
        batch = folders[start : start + batch_size]
        owned = set(
            TunixRun.objects.filter(output_dir__in=batch).values_list("output_dir", flat=True)
        )
        ids = TunixRun.objects.filter(id__in=[_run_id(f) for f in batch]).values_list("id")
        owned |= {f"runs/{run_id}" for (run_id,) in ids}
        for relative in batch:
            inside = relative + "/"
            if (
                relative in owned
                or any(p == relative or p.startswith(inside) for p in pending)
                or any(c.startswith(inside) or inside.startswith(c + "/") for c in chosen)
            ):
                continue
            size, newest = storage.stored_folder_usage(relative)
            if newest is None or newest >= old_enough:
                continue
            summary.orphans += 1
            if not summary.dry_run:
                size = storage.stored_folder_remove(relative)
            summary.file_bytes += size
