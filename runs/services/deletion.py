"""Deleting runs: one run with its folder, retention's pruning, pinning."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from ..errors import Conflict, NotFound
from ..models import ACTIVE_STATUSES, TunixRun
from ..selectors.answers import run_answer_forget
from . import retention

log = logging.getLogger(__name__)


def run_delete(*, run: TunixRun) -> int:
    """Delete a finished run: its rows first (logs and metrics cascade), then, once that has
    committed, its folder. Returns the bytes freed. Active runs are refused (409)."""
    with transaction.atomic():
        locked = TunixRun.objects.select_for_update().filter(id=run.id).first()
        if locked is None:
            raise NotFound("No such run.")
        if locked.is_active:
            raise Conflict(f"The run is {locked.status}; cancel it before deleting it.")
        jobs = list(TunixRun.objects.select_for_update().filter(source=locked))
        if any(job.is_active for job in jobs):
            raise Conflict("An evaluation or export of this run is active; cancel it first.")
        child = locked.children.filter(status__in=ACTIVE_STATUSES).first()
        if child is not None:
            # The child reads its checkpoint from this run's folder.
            raise Conflict(
                f"Run {child.id} continues from this run's checkpoint and is {child.status}; "
                "wait for it to finish or cancel it before deleting this run."
            )
        # Recorded in the same transaction: if we die before the folder is gone, the next
        # retention pass removes it (runs/retention.py). Its evaluations and exports (the
        # rows cascade) go with it; an exported model in the models folder stays.
        deletions = retention.record_folder_deletion(locked)
        for job in jobs:
            deletions += retention.record_folder_deletion(job)
        locked.delete()
    run_answer_forget(run.id)
    return retention.remove_folders(deletions)[1]


def runs_prune(
    *,
    older_than_days: int,
    dry_run: bool = False,
    batch_size: int = retention.DEFAULT_BATCH_SIZE,
    progress: retention.Progress | None = None,
    now=None,
) -> retention.PruneSummary:
    """Delete finished, unpinned runs that finished more than `older_than_days` ago
    (finished_at < now - N days), with their log chunks, metrics and folders, in batches of
    `batch_size` runs, each its own short transaction. Pending and running runs are never
    touched. Also finishes folder removals a previous pass left behind and removes
    orphaned `runs/<uuid>` folders. `dry_run` counts the same things and changes nothing.
    `progress(done, total)` is called after each batch. Safe to run twice and concurrently:
    every run is deleted by exactly one pass. Must not be called inside a transaction."""
    return retention.prune(
        older_than_days=older_than_days,
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
        now=now,
    )


def runs_prune_expired() -> str:
    """The daily retention task: prune runs older than TUNIXRT_RETENTION_DAYS (0: off)."""
    if settings.RETENTION_DAYS <= 0:
        return "retention is off (TUNIXRT_RETENTION_DAYS=0)"
    summary = runs_prune(older_than_days=settings.RETENTION_DAYS)
    log.info("retention: %s", summary)
    return str(summary)


def run_set_pinned(*, run: TunixRun, pinned: bool) -> TunixRun:
    """Pin a run (retention never deletes it) or unpin it. A pin racing a retention pass
    either lands first (the pass re-checks under its lock and keeps the run) or finds the
    run gone (404)."""
    if not TunixRun.objects.filter(id=run.id).update(pinned=bool(pinned)):
        raise NotFound("No such run.")
    run.pinned = bool(pinned)
    return run
