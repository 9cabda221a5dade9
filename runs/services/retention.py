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

import os
import stat
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import CASCADE, DO_NOTHING, SET_NULL, Exists, OuterRef, Q, QuerySet, signals
from django.db.models.deletion import Collector
from django.utils import timezone

from .. import storage
from ..errors import InvalidInput
from ..formatting import human_bytes
from ..models import ACTIVE_STATUSES, FINAL_STATUSES, FolderDeletion, LogChunk, Metric, TunixRun
from ..storage import folder_size, is_safe_segment, remove_tree
from .store_sweep import remove_stored_orphans

DEFAULT_BATCH_SIZE = 500
# Threads removing folders side by side, and how many committed batches may wait for them.
REMOVE_THREADS = 8
MAX_BATCHES_IN_FLIGHT = 4
# A pass removes the folders of its own batch seconds after the commit. A claim older than
# this belongs to a pass that died (or whose removal failed): a later pass takes it over.
CLAIM_LEASE = timedelta(hours=1)
# A folder under runs/ with no run row is an orphan (rows deleted by other means, e.g. a
# shell). Only folders untouched this long are removed, in case something creates a run's
# folder just before its row becomes visible.
ORPHAN_GRACE = timedelta(hours=1)

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
    or running child continuing from their checkpoint (a later pass takes them). Active
    runs have no finished_at (and are excluded by status even if they had one)."""
    active_child = TunixRun.objects.filter(parent=OuterRef("pk"), status__in=ACTIVE_STATUSES)
    return TunixRun.objects.filter(
        status__in=FINAL_STATUSES, pinned=False, finished_at__lt=cutoff
    ).exclude(Exists(active_child))


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
    _finish_leftovers(summary, now=now)

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

    _remove_orphans(summary, now=now)
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
        path = _folder(output_dir)
        if path is not None and path.is_dir():
            summary.file_bytes += folder_size(path)


def delete_batch(
    *, cutoff: datetime, after: tuple | None, batch_size: int, summary: PruneSummary, now: datetime
) -> tuple[tuple | None, int, list[FolderDeletion]]:
    """Step 1 of a batch, one transaction: take the next `batch_size` prunable runs after
    the keyset position `after`, delete their rows and record their folders. Returns the
    new position (None when nothing was left), the number of runs and the records, claimed
    by this pass, for the FolderRemover once this has committed. Durable: it must really
    commit before any file is removed, so it refuses to run inside another transaction."""
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
        _delete_runs([run_id for _, run_id, _, _ in rows], summary)
        summary.log_bytes += sum(log_bytes for *_, log_bytes in rows)
        # Every folder is recorded, existing or not: no file system work inside the lock.
        deletion = FolderDeletion.objects.create(
            paths=[output_dir for _, _, output_dir, _ in rows if output_dir], claimed_at=now
        )
    return rows[-1][:2], len(rows), [deletion]


def _delete_runs(run_ids: list[uuid.UUID], summary: PruneSummary) -> None:
    """Delete runs and what hangs off them with one statement per table, loading nothing:
    a batch can hold millions of log chunks. Relations are read from the model, so one
    added later is honoured; one this cannot do in plain SQL (PROTECT, signal receivers,
    many-to-many) sends the batch through the ORM's collector instead."""
    db = TunixRun.objects.db
    summary.log_chunks += LogChunk.objects.filter(run_id__in=run_ids)._raw_delete(db)
    summary.metrics += Metric.objects.filter(run_id__in=run_ids)._raw_delete(db)
    plan = _sql_delete_plan(db)
    if plan is None:
        _, per_model = TunixRun.objects.filter(id__in=run_ids).delete()
        summary.runs += per_model.get(TunixRun._meta.label, 0)
        return
    set_null, cascade = plan
    for rel in set_null:
        rel.related_model._base_manager.using(db).filter(
            **{f"{rel.field.name}__in": run_ids}
        ).update(**{rel.field.name: None})
    for rel in cascade:
        rel.related_model._base_manager.using(db).filter(
            **{f"{rel.field.name}__in": run_ids}
        )._raw_delete(db)
    summary.runs += TunixRun.objects.filter(id__in=run_ids)._raw_delete(db)


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
        elif rel.on_delete is CASCADE and collector.can_fast_delete(rel.related_model):
            if rel.related_model not in (LogChunk, Metric):  # those are already gone
                cascade.append(rel)
        elif rel.on_delete is not DO_NOTHING:
            return None
    return set_null, cascade


def remove_folders(deletions: list[FolderDeletion]) -> tuple[int, int]:
    """Step 2, after the rows are committed: remove the folders, then their records.
    Returns (folders finished, bytes freed). Folders that are still there afterwards stay
    in their record, so a later pass tries again once the claim has expired."""
    with FolderRemover() as remover:
        remover.submit(deletions)
        return remover.collect(wait=True)


class FolderRemover:
    """Removes the folders of committed batches on worker threads while the caller goes on
    with the next batch; `collect` updates the records of finished batches (on the caller's
    thread, which owns the database connection). Removing a folder is mostly waiting on the
    file system's journal, so side by side a batch goes many times faster. At most
    MAX_BATCHES_IN_FLIGHT batches wait, so memory stays flat."""

    def __init__(self):
        self.root = Path(settings.ARTIFACTS_DIR).resolve()
        self.pool = ThreadPoolExecutor(max_workers=REMOVE_THREADS, thread_name_prefix="rm")
        self.pending: deque[tuple[FolderDeletion, list[Future]]] = deque()
        # Runs that chose their folder (before every run wrote to runs/<id>) can sit inside
        # a folder removed here: read once, so a batch costs no query per folder.
        self.chosen = storage.chosen_folders()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        # On an error the records stay: a later pass finishes those folders.
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, deletions: list[FolderDeletion], *, check_in_use: bool = True) -> None:
        for deletion in deletions:
            # A folder that is a run's folder again (its name reused after an earlier
            # removal, for an old record) is never touched; only the record forgets it.
            in_use = set()
            if check_in_use and deletion.paths:
                in_use = set(
                    TunixRun.objects.filter(output_dir__in=deletion.paths).values_list(
                        "output_dir", flat=True
                    )
                )
            parents: dict[Path, bool] = {}
            futures = [
                self.pool.submit(
                    self._remove,
                    path,
                    path in in_use,
                    parents,
                    storage.artifacts_paths(storage.run_folders_inside(path, chosen=self.chosen)),
                )
                for path in deletion.paths
            ]
            self.pending.append((deletion, futures))

    def collect(self, *, wait: bool = False) -> tuple[int, int]:
        finished = freed = 0
        while self.pending and (
            wait
            or len(self.pending) > MAX_BATCHES_IN_FLIGHT
            or all(f.done() for f in self.pending[0][1])
        ):
            deletion, futures = self.pending.popleft()
            results = [f.result() for f in futures]
            left = [p for p, (_, gone) in zip(deletion.paths, results, strict=True) if not gone]
            if left:
                FolderDeletion.objects.filter(id=deletion.id).update(paths=left)
            else:
                FolderDeletion.objects.filter(id=deletion.id)._raw_delete(FolderDeletion.objects.db)
            finished += len(deletion.paths) - len(left)
            freed += sum(size for size, _ in results)
        return finished, freed

    def _remove(
        self, relative: str, in_use: bool, parents: dict, keep: set[Path]
    ) -> tuple[int, bool]:
        """Remove one folder, never the live runs' folders inside it (`keep`)."""
        path = None if in_use else _folder(relative, root=self.root, parents=parents)
        if path is None:
            return 0, True
        freed = remove_tree(path, keep=keep) + storage.stored_folder_remove(relative)
        return freed, bool(keep) or not os.path.lexists(path)


def record_folder_deletion(run: TunixRun, *, now: datetime | None = None) -> list[FolderDeletion]:
    """For a single delete (services.run_delete), inside its transaction: the record a
    retention batch writes, claimed by the caller. Empty when the run has no folder."""
    path = _folder(run.output_dir)
    if path is None or not (path.exists() or settings.ARTIFACTS_URL):
        return []
    return [FolderDeletion.objects.create(paths=[run.output_dir], claimed_at=now or timezone.now())]


def _stale_claims(now: datetime) -> Q:
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_LEASE)


def _finish_leftovers(summary: PruneSummary, *, now: datetime, batch_size: int = 20) -> None:
    """Folders whose rows were deleted by a pass that died before removing them."""
    if summary.dry_run:
        for deletion in FolderDeletion.objects.filter(_stale_claims(now)).iterator():
            for relative in deletion.paths:
                path = _folder(relative)
                if path is not None and path.is_dir():
                    summary.leftovers += 1
                    summary.file_bytes += folder_size(path)
        return
    while True:
        with transaction.atomic(durable=True):
            ids = list(
                FolderDeletion.objects.select_for_update(skip_locked=True)
                .filter(_stale_claims(now))
                .values_list("id", flat=True)[:batch_size]
            )
            # Claimed now: a concurrent pass skips them, and this loop does not see them
            # again even if a folder cannot be removed.
            FolderDeletion.objects.filter(id__in=ids).update(claimed_at=now)
        if not ids:
            return
        finished, freed = remove_folders(list(FolderDeletion.objects.filter(id__in=ids)))
        summary.leftovers += finished
        summary.file_bytes += freed


def _remove_orphans(summary: PruneSummary, *, now: datetime, batch_size: int = 500) -> None:
    """Folders named runs/<uuid> (the default output folder) whose run row is gone.
    Symlinks, other names and anything outside the artifacts root are never touched."""
    runs_root = Path(settings.ARTIFACTS_DIR).resolve() / "runs"
    if not runs_root.is_dir() or runs_root.is_symlink():
        return
    old_enough = (now - ORPHAN_GRACE).timestamp()
    candidates: list[str] = []
    with os.scandir(runs_root) as entries:
        for entry in entries:
            if _looks_like_run_folder(entry) and _modified_before(entry, old_enough):
                candidates.append(f"runs/{entry.name}")
                if len(candidates) >= batch_size:
                    _remove_orphan_batch(candidates, summary)
                    candidates = []
    if candidates:
        _remove_orphan_batch(candidates, summary)


def _modified_before(entry: os.DirEntry, moment: float) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime < moment
    except FileNotFoundError:
        return False  # another pass (or a run delete) removed it while we were listing


def _looks_like_run_folder(entry: os.DirEntry) -> bool:
    if not entry.is_dir(follow_symlinks=False):
        return False
    try:
        return str(uuid.UUID(entry.name)) == entry.name
    except ValueError:
        return False


def _remove_orphan_batch(candidates: list[str], summary: PruneSummary) -> None:

    ids = [uuid.UUID(c.split("/", 1)[1]) for c in candidates]
    known = set(
        TunixRun.objects.filter(output_dir__in=candidates).values_list("output_dir", flat=True)
    )
    known |= {f"runs/{i}" for i in TunixRun.objects.filter(id__in=ids).values_list("id", flat=True)}
    chosen = storage.chosen_folders()
    for relative in candidates:
        # Never a folder that holds a live run's folder (one that chose runs/<uuid>/x).
        if relative in known or storage.run_folders_inside(relative, chosen=chosen):
            continue
        path = _folder(relative)
        if path is None:
            continue
        summary.orphans += 1
        if summary.dry_run:
            summary.file_bytes += folder_size(path)
        else:
            summary.file_bytes += remove_tree(path)


def _folder(
    output_dir: str, *, root: Path | None = None, parents: dict[Path, bool] | None = None
) -> Path | None:
    """The run's folder under the artifacts root, or None when the stored path would leave
    it or passes through a symlink (which could lead to another run's folder): such a
    folder is never removed. The same rules as paths.safe_relative, plus "no symlink on
    the way"; `parents` caches the check of shared parent folders (runs/) for one batch."""
    root = root or Path(settings.ARTIFACTS_DIR).resolve()
    parts = output_dir.strip("/").split("/") if isinstance(output_dir, str) else []
    if not parts or len(output_dir) > 1024 or not all(is_safe_segment(p) for p in parts):
        return None
    target = root.joinpath(*parts)
    parent = target.parent
    if parents is None or parent not in parents:
        # resolve() follows every symlink: equal means there is none between root and here.
        verdict = parent.resolve() == parent and (parent == root or parent.is_relative_to(root))
        if parents is None:
            parents = {}
        parents[parent] = verdict
    if not parents[parent]:
        return None
    try:
        if stat.S_ISLNK(os.lstat(target).st_mode):
            return None
    except FileNotFoundError:
        pass
    return target
