"""Retention: finished runs older than N days are deleted with their logs, metrics and folders.

Rows and files cannot share a transaction, so each batch is two steps:
1. One short transaction re-checks and locks the batch's runs, deletes their log chunks,
   metrics and rows, and records their folders in one `FolderDeletion`.
2. After it commits, the folders are removed, then their records.
A crash between the two leaves records that a later pass finishes; a crash before the
commit changes nothing. A run is never half-deleted: either all its rows exist (and its
folder), or none do and its folder is queued for removal.

Memory stays flat: runs are read in keyset-paged batches of ids, and log chunks are deleted
with one DELETE per batch, never loaded. Transactions last one batch, so the database is
never locked for long. Entry points call `services.runs_prune`, not this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import (
    CASCADE,
    DO_NOTHING,
    SET_NULL,
    BooleanField,
    Exists,
    OuterRef,
    Q,
    QuerySet,
    signals,
)
from django.db.models.deletion import Collector
from django.db.models.expressions import RawSQL
from django.utils import timezone

from ..errors import InvalidInput
from ..formatting import human_bytes
from ..models import ACTIVE_STATUSES, FINAL_STATUSES, FolderDeletion, LogChunk, Metric, TunixRun
from ..storage import folder_size
from .folder_removal import (
    CLAIM_LEASE,
    ORPHAN_GRACE,
    FolderRemover,
    finish_leftovers,
    record_folder_deletion,
    remove_folders,
    remove_orphans,
    safe_folder,
)
from .store_sweep import remove_stored_orphans

__all__ = ["CLAIM_LEASE", "record_folder_deletion", "remove_folders"]  # for deletion, tests

DEFAULT_BATCH_SIZE = 500

Progress = Callable[[int, int], None]


@dataclass
class PruneSummary:
    cutoff: datetime
    dry_run: bool = False
    runs: int = 0
    log_chunks: int = 0
    metrics: int = 0
    log_bytes: int = 0
    file_bytes: int = 0
    # Folders of earlier deletions (a pass that died after its commit) finished by this pass.
    leftovers: int = 0
    # Folders under runs/ (local, and in the object store) whose run row no longer exists.
    orphans: int = 0

    @property
    def bytes_freed(self) -> int:
        return self.log_bytes + self.file_bytes

    def __str__(self) -> str:
        verb = "Would delete" if self.dry_run else "Deleted"
        freed = "would free" if self.dry_run else "freed"
        text = (
            f"{verb} {self.runs} runs finished before {self.cutoff:%Y-%m-%d %H:%M %Z}: "
            f"{self.log_chunks} log chunks, {self.metrics} metrics; {freed} "
            f"{human_bytes(self.bytes_freed)} ({human_bytes(self.file_bytes)} of files, "
            f"{human_bytes(self.log_bytes)} of logs)."
        )
        if self.leftovers or self.orphans:
            verb = "would remove" if self.dry_run else "removed"
            text += (
                f" Also {verb} {self.leftovers} folders of earlier deletions and "
                f"{self.orphans} orphaned run folders."
            )
        return text

    def as_dict(self) -> dict:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "runs": self.runs,
            "log_chunks": self.log_chunks,
            "metrics": self.metrics,
            "log_bytes": self.log_bytes,
            "file_bytes": self.file_bytes,
            "bytes_freed": self.bytes_freed,
            "leftovers": self.leftovers,
            "orphans": self.orphans,
        }


def prunable(cutoff: datetime) -> QuerySet[TunixRun]:
    """Runs retention may delete: finished before `cutoff`, not pinned, and with no pending
    or running child continuing from their checkpoint and no pending or running evaluation
    or export reading it (a later pass takes them). Active runs have no finished_at (and
    are excluded by status even if they had one)."""
    active_child = TunixRun.objects.filter(parent=OuterRef("pk"), status__in=ACTIVE_STATUSES)
    active_job = TunixRun.objects.filter(source=OuterRef("pk"), status__in=ACTIVE_STATUSES)
    return (
        TunixRun.objects.filter(status__in=FINAL_STATUSES, pinned=False, finished_at__lt=cutoff)
        .exclude(Exists(active_child))
        .exclude(Exists(active_job))
    )


def prune(
    *,
    older_than_days: int,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> PruneSummary:
    if not isinstance(older_than_days, int) or older_than_days < 1:
        raise InvalidInput(
            "older_than_days must be a whole number of days, at least 1.",
            fields={"older_than_days": "At least 1."},
        )
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 5000:
        raise InvalidInput(
            "batch_size must be between 1 and 5000.", fields={"batch_size": "1-5000"}
        )
    now = now or timezone.now()
    # Older than N days: finished strictly before now - N days. A run that finished exactly
    # N days ago is kept until the next pass.
    cutoff = now - timedelta(days=older_than_days)
    summary = PruneSummary(cutoff=cutoff, dry_run=dry_run)
    summary.leftovers, summary.file_bytes = finish_leftovers(now=now, dry_run=dry_run)

    total = prunable(cutoff).count()
    done = 0
    if progress:
        progress(0, total)
    if dry_run:
        for batch in _batches(cutoff, batch_size):
            _count_batch(batch, summary)
            done += len(batch)
            if progress:
                progress(min(done, total), total)
    else:
        with FolderRemover() as remover:
            after = None
            while True:
                after, count, deletions = delete_batch(
                    cutoff=cutoff, after=after, batch_size=batch_size, summary=summary, now=now
                )
                if after is None:
                    break
                # This batch's folders are removed while the next batch's rows go. Rows
                # just deleted cannot be in use again: no run may take an existing folder.
                remover.submit(deletions, check_in_use=False)
                summary.file_bytes += remover.collect()[1]
                done += count
                if progress:
                    # Another pass may take runs we counted: never report more than the total.
                    progress(min(done, total), total)
            summary.file_bytes += remover.collect(wait=True)[1]

    orphans, orphan_bytes = remove_orphans(now=now, dry_run=dry_run)
    summary.orphans += orphans
    summary.file_bytes += orphan_bytes
    remove_stored_orphans(summary, now=now, grace=ORPHAN_GRACE)
    return summary


def _oldest_first(runs: QuerySet[TunixRun], after: tuple | None) -> QuerySet[TunixRun]:
    """Keyset paging on (finished_at, id), which the run_finished index serves; runs a
    batch passed over (locked by another pass) are not read again."""
    runs = runs.order_by("finished_at", "id")
    if after is not None:
        runs = runs.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], id__gt=after[1]))
    return runs


def _batches(cutoff: datetime, batch_size: int):
    """Ids of prunable runs, oldest first, `batch_size` at a time (for a dry run)."""
    after = None
    while True:
        rows = list(
            _oldest_first(prunable(cutoff), after).values_list("finished_at", "id")[:batch_size]
        )
        if not rows:
            return
        after = rows[-1]
        yield [run_id for _, run_id in rows]


def _count_batch(run_ids: list[uuid.UUID], summary: PruneSummary) -> None:
    rows = list(
        prunable(summary.cutoff).filter(id__in=run_ids).values_list("output_dir", "log_bytes")
    )
    summary.runs += len(rows)
    summary.log_bytes += sum(log_bytes for _, log_bytes in rows)
    summary.log_chunks += LogChunk.objects.filter(run_id__in=run_ids).count()
    summary.metrics += Metric.objects.filter(run_id__in=run_ids).count()
    for output_dir, _ in rows:
        path = safe_folder(output_dir)
        if path is not None and path.is_dir():
            summary.file_bytes += folder_size(path)


def delete_batch(
    *, cutoff: datetime, after: tuple | None, batch_size: int, summary: PruneSummary, now: datetime
) -> tuple[tuple | None, int, list[FolderDeletion]]:
    """Step 1 of a batch, one transaction: take the next `batch_size` prunable runs after
    the keyset position `after`, delete their rows (and their evaluations' and exports')
    and record their folders. Returns the new position (None when nothing was left), the
    number of runs and the records, claimed by this pass, for the FolderRemover once this
    has committed. Durable: it must really commit before any file is removed, so it
    refuses to run inside another transaction."""
    while True:
        try:
            return _delete_batch(cutoff, after, batch_size, summary, now)
        except _JobStarted:
            pass  # rolled back; the next try's selection sees the new job and skips its run


class _JobStarted(Exception):
    """An evaluation or export of a run in the batch was created after the batch was read."""


def _delete_batch(
    cutoff: datetime, after: tuple | None, batch_size: int, summary: PruneSummary, now: datetime
) -> tuple[tuple | None, int, list[FolderDeletion]]:
    with transaction.atomic(durable=True):
        # Selected and locked in one statement. SKIP LOCKED (PostgreSQL) leaves runs that
        # another pass or a pin holds to them; a row changed meanwhile (pinned) is checked
        # against the filter again. SQLite serialises the whole transaction instead.
        rows = list(
            _oldest_first(prunable(cutoff), after)
            .select_for_update(skip_locked=True)
            .values_list("finished_at", "id", "output_dir", "log_bytes")[:batch_size]
        )
        if not rows:
            return None, 0, []
        doomed = [(run_id, output_dir, log_bytes) for _, run_id, output_dir, log_bytes in rows]
        doomed += _jobs_of([run_id for run_id, _, _ in doomed])
        _delete_runs([run_id for run_id, _, _ in doomed], summary)
        summary.log_bytes += sum(log_bytes for *_, log_bytes in doomed)
        # Every folder is recorded, existing or not: no file system work inside the lock.
        deletion = FolderDeletion.objects.create(
            paths=[output_dir for _, output_dir, _ in doomed if output_dir], claimed_at=now
        )
    return rows[-1][:2], len(rows), [deletion]


def _jobs_of(run_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, str, int]]:
    """(id, output_dir, log_bytes) of the runs that go with `run_ids` (the model cascades
    them: evaluations and exports, and theirs), locked. Raises _JobStarted when one is
    active: a job created after `prunable` read the batch (its selection excludes runs
    with active jobs)."""
    fields = [
        rel.field.name
        for rel in TunixRun._meta.related_objects
        if rel.related_model is TunixRun and rel.on_delete is CASCADE
    ]
    seen, frontier, found = set(run_ids), list(run_ids), []
    while frontier and fields:
        match = Q()
        for name in fields:
            match |= Q(_in(TunixRun, name, frontier))
        jobs = list(
            TunixRun.objects.select_for_update()
            .filter(match)
            .exclude(_in(TunixRun, "id", list(seen)))
            .values_list("id", "output_dir", "log_bytes", "status")
        )
        if any(status in ACTIVE_STATUSES for *_, status in jobs):
            raise _JobStarted
        found += [job[:3] for job in jobs]
        frontier = [job[0] for job in jobs]
        seen.update(frontier)
    return found


def _delete_runs(run_ids: list[uuid.UUID], summary: PruneSummary) -> None:
    """Delete runs and what hangs off them with one statement per table, loading nothing:
    a batch can hold millions of log chunks. Relations are read from the model, so one
    added later is honoured; one this cannot do in plain SQL (PROTECT, signal receivers,
    many-to-many) sends the batch through the ORM's collector instead."""
    db = TunixRun.objects.db
    summary.log_chunks += LogChunk.objects.filter(_in(LogChunk, "run", run_ids))._raw_delete(db)
    summary.metrics += Metric.objects.filter(_in(Metric, "run", run_ids))._raw_delete(db)
    plan = _sql_delete_plan(db)
    if plan is None:
        _, per_model = TunixRun.objects.filter(id__in=run_ids).delete()
        summary.runs += per_model.get(TunixRun._meta.label, 0)
        return
    set_null, cascade = plan
    for rel in set_null:
        rows = rel.related_model._base_manager.using(db)
        rows.filter(_in(rel.related_model, rel.field.name, run_ids)).update(
            **{rel.field.name: None}
        )
    for rel in cascade:
        rows = rel.related_model._base_manager.using(db)
        rows.filter(_in(rel.related_model, rel.field.name, run_ids))._raw_delete(db)
    summary.runs += TunixRun.objects.filter(_in(TunixRun, "id", run_ids))._raw_delete(db)


def _in(model, name: str, ids: list) -> Q | RawSQL:
    """`name IN ids` for a filter. On PostgreSQL the ids go as one array parameter
    (`= ANY(%s)`): as 500 parameters, Django and psycopg spend milliseconds preparing each
    statement of a batch, more than the database takes to run it."""
    if connection.vendor != "postgresql":
        return Q(**{f"{name}__in": ids})
    quote = connection.ops.quote_name
    column = f"{quote(model._meta.db_table)}.{quote(model._meta.get_field(name).column)}"
    # Names from the model, quoted; the ids are a parameter.
    return RawSQL(f"{column} = ANY(%s)", [ids], output_field=BooleanField())  # noqa: S611


def _sql_delete_plan(db: str):
    """(relations to set NULL, relations to delete) when runs can be deleted in plain SQL,
    else None."""
    collector = Collector(using=db)
    if (
        signals.pre_delete.has_listeners(TunixRun)
        or signals.post_delete.has_listeners(TunixRun)
        or TunixRun._meta.many_to_many
        or TunixRun._meta.private_fields
    ):
        return None
    set_null, cascade = [], []
    for rel in TunixRun._meta.related_objects:
        if rel.many_to_many:
            return None
        if rel.on_delete is SET_NULL:
            set_null.append(rel)
        elif rel.on_delete is CASCADE and rel.related_model is TunixRun:
            pass  # evaluations and exports: delete_batch puts them in the batch itself
        elif rel.on_delete is CASCADE and collector.can_fast_delete(rel.related_model):
            if rel.related_model not in (LogChunk, Metric):  # those are already gone
                cascade.append(rel)
        elif rel.on_delete is not DO_NOTHING:
            return None
    return set_null, cascade
