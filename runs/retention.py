"""Retention: finished runs older than N days are deleted with their logs, metrics and folders.

Rows and files cannot share a transaction, so each batch is two steps:
1. One short transaction re-checks and locks the batch's runs, deletes their log chunks,
   metrics and rows, and records each folder as a `FolderDeletion`.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .errors import InvalidInput
from .models import FINAL_STATUSES, FolderDeletion, LogChunk, Metric, TunixRun
from .paths import UnsafePath, safe_relative

DEFAULT_BATCH_SIZE = 500
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
    # Folders under runs/ whose run row no longer exists.
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


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def prunable(cutoff: datetime) -> QuerySet[TunixRun]:
    """Runs retention may delete: finished before `cutoff`, not pinned. Active runs have no
    finished_at (and are excluded by status even if they had one)."""
    return TunixRun.objects.filter(status__in=FINAL_STATUSES, pinned=False, finished_at__lt=cutoff)


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
    for batch in _batches(cutoff, batch_size):
        if dry_run:
            _count_batch(batch, summary)
        else:
            deletions = delete_rows(batch, cutoff=cutoff, summary=summary, now=now)
            summary.file_bytes += remove_folders(deletions)[1]
        done += len(batch)
        if progress:
            # Another pass may delete runs we counted: never report more than the total.
            progress(min(done, total), total)

    _remove_orphans(summary, now=now)
    return summary


def _batches(cutoff: datetime, batch_size: int):
    """Ids of prunable runs, oldest first, `batch_size` at a time. Keyset paging on
    (finished_at, id) uses the run_finished index and skips runs a batch left alone
    (pinned or locked meanwhile) instead of reading them again."""
    last = None
    while True:
        runs = prunable(cutoff).order_by("finished_at", "id")
        if last is not None:
            runs = runs.filter(Q(finished_at__gt=last[0]) | Q(finished_at=last[0], id__gt=last[1]))
        rows = list(runs.values_list("finished_at", "id")[:batch_size])
        if not rows:
            return
        last = rows[-1]
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


def delete_rows(
    run_ids: list[uuid.UUID], *, cutoff: datetime, summary: PruneSummary, now: datetime
) -> list[FolderDeletion]:
    """Step 1 of a batch, one transaction: delete the runs' rows and record their folders.
    Returns the records, claimed by this pass, for `remove_folders` once it has committed.
    Durable: it must really commit before any file is removed, so it refuses to run inside
    another transaction."""
    with transaction.atomic(durable=True):
        # Re-checked under the lock: a run pinned since it was listed stays. SKIP LOCKED
        # (PostgreSQL) leaves runs another pass or a pin is working on to them; SQLite
        # serialises the whole transaction instead.
        rows = list(
            prunable(cutoff)
            .filter(id__in=run_ids)
            .select_for_update(skip_locked=True)
            .values_list("id", "output_dir", "log_bytes")
        )
        if not rows:
            return []
        found = [run_id for run_id, _, _ in rows]
        # One DELETE each, without loading rows: a batch can hold millions of log chunks.
        summary.log_chunks += LogChunk.objects.filter(run_id__in=found)._raw_delete(
            LogChunk.objects.db
        )
        summary.metrics += Metric.objects.filter(run_id__in=found)._raw_delete(Metric.objects.db)
        # The runs themselves go through the ORM so relations added later (SET_NULL on
        # children, anything that cascades) are honoured; there are only batch_size of them.
        _, per_model = TunixRun.objects.filter(id__in=found).delete()
        summary.runs += per_model.get(TunixRun._meta.label, 0)
        summary.log_bytes += sum(log_bytes for _, _, log_bytes in rows)
        deletions = [
            FolderDeletion(path=output_dir, run_id=run_id, claimed_at=now)
            for run_id, output_dir, _ in rows
            if (path := _folder(output_dir)) is not None and path.exists()
        ]
        return FolderDeletion.objects.bulk_create(deletions)


def remove_folders(deletions: list[FolderDeletion]) -> tuple[int, int]:
    """Step 2, after the rows are committed: remove the folders, then their records.
    Returns (records finished, bytes freed). A folder that is still there afterwards keeps
    its record, so a later pass tries again once the claim has expired."""
    if not deletions:
        return 0, 0
    from .services import remove_tree

    # A folder that is a run's folder again (its name reused after an earlier removal) is
    # never touched; only its stale record goes.
    in_use = set(
        TunixRun.objects.filter(output_dir__in=[d.path for d in deletions]).values_list(
            "output_dir", flat=True
        )
    )
    freed = 0
    done = []
    for deletion in deletions:
        path = _folder(deletion.path)
        if path is not None and deletion.path not in in_use:
            freed += remove_tree(path)
            if path.exists():
                continue
        done.append(deletion.id)
    FolderDeletion.objects.filter(id__in=done).delete()
    return len(done), freed


def record_folder_deletion(run: TunixRun, *, now: datetime | None = None) -> list[FolderDeletion]:
    """For a single delete (services.run_delete), inside its transaction: the same record a
    retention batch writes, claimed by the caller. Empty when the run has no folder."""
    path = _folder(run.output_dir)
    if path is None or not path.exists():
        return []
    deletion = FolderDeletion.objects.create(
        path=run.output_dir, run_id=run.id, claimed_at=now or timezone.now()
    )
    return [deletion]


def _stale_claims(now: datetime) -> Q:
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_LEASE)


def _finish_leftovers(summary: PruneSummary, *, now: datetime, batch_size: int = 200) -> None:
    """Folders whose rows were deleted by a pass that died before removing them."""
    if summary.dry_run:
        for deletion in FolderDeletion.objects.filter(_stale_claims(now)).iterator():
            path = _folder(deletion.path)
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
            # again even if their folder cannot be removed.
            FolderDeletion.objects.filter(id__in=ids).update(claimed_at=now)
        if not ids:
            return
        finished, freed = remove_folders(list(FolderDeletion.objects.filter(id__in=ids)))
        summary.leftovers += finished
        summary.file_bytes += freed


def _remove_orphans(summary: PruneSummary, *, now: datetime, batch_size: int = 500) -> None:
    """Folders named runs/<uuid> (the default output folder) whose run row is gone and that
    no pending FolderDeletion covers. Symlinks, other names and anything outside the
    artifacts root are never touched."""
    runs_root = Path(settings.ARTIFACTS_DIR).resolve() / "runs"
    if not runs_root.is_dir() or runs_root.is_symlink():
        return
    old_enough = (now - ORPHAN_GRACE).timestamp()
    candidates: list[str] = []
    with os.scandir(runs_root) as entries:
        for entry in entries:
            if (
                _looks_like_run_folder(entry)
                and entry.stat(follow_symlinks=False).st_mtime < old_enough
            ):
                candidates.append(f"runs/{entry.name}")
                if len(candidates) >= batch_size:
                    _remove_orphan_batch(candidates, summary)
                    candidates = []
    if candidates:
        _remove_orphan_batch(candidates, summary)


def _looks_like_run_folder(entry: os.DirEntry) -> bool:
    if not entry.is_dir(follow_symlinks=False):
        return False
    try:
        return str(uuid.UUID(entry.name)) == entry.name
    except ValueError:
        return False


def _remove_orphan_batch(candidates: list[str], summary: PruneSummary) -> None:
    from .services import remove_tree

    ids = [uuid.UUID(c.split("/", 1)[1]) for c in candidates]
    known = set(
        TunixRun.objects.filter(output_dir__in=candidates).values_list("output_dir", flat=True)
    )
    known |= {f"runs/{i}" for i in TunixRun.objects.filter(id__in=ids).values_list("id", flat=True)}
    known |= set(FolderDeletion.objects.filter(path__in=candidates).values_list("path", flat=True))
    for relative in candidates:
        if relative in known:
            continue
        path = _folder(relative)
        if path is None:
            continue
        summary.orphans += 1
        if summary.dry_run:
            summary.file_bytes += folder_size(path)
        else:
            summary.file_bytes += remove_tree(path)


def _folder(output_dir: str) -> Path | None:
    """The run's folder under the artifacts root, or None when the stored path would leave
    it (such a folder is never removed)."""
    try:
        return safe_relative(Path(settings.ARTIFACTS_DIR), output_dir)
    except UnsafePath:
        return None


def folder_size(path: Path) -> int:
    """Bytes of the regular files under `path`; symlinks are neither counted nor followed."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                info = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total
