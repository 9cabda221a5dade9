"""The file-system half of deleting runs: their folders go after their rows have committed.

A `FolderDeletion` record names the folders of rows deleted in the same transaction; a
`FolderRemover` removes them on worker threads and then drops the record. A record whose
removal never finished (the process died) is taken over by a later pass once its claim has
expired (`finish_leftovers`), and a `runs/<uuid>` folder whose row is gone by other means
is an orphan (`remove_orphans`). Used by `retention` (pruning) and `deletion` (one run).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import storage
from ..models import FolderDeletion, TunixRun
from ..storage import folder_size, is_safe_segment, remove_tree

# Threads removing folders side by side, and how many committed batches may wait for them.
REMOVE_THREADS = 8
MAX_BATCHES_IN_FLIGHT = 4
RECORDS_PER_DELETE = 16
# A pass removes the folders of its own batch seconds after the commit. A claim older than
# this belongs to a pass that died (or whose removal failed): a later pass takes it over.
CLAIM_LEASE = timedelta(hours=1)
# A folder under runs/ with no run row is an orphan (rows deleted by other means, e.g. a
# shell). Only folders untouched this long are removed, in case something creates a run's
# folder just before its row becomes visible.
ORPHAN_GRACE = timedelta(hours=1)


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
        self.done_records: list[int] = []
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
            # Read here, on the thread that owns the database connection.
            work = [
                (path, path in in_use, storage.run_folders_inside(path, chosen=self.chosen))
                for path in deletion.paths
            ]
            # A few futures per batch, each a slice of its folders: one per folder would
            # cost more in thread hand-offs than many folders take to remove.
            step = max(1, -(-len(work) // REMOVE_THREADS))
            futures = [
                self.pool.submit(self._remove_slice, work[start : start + step], parents)
                for start in range(0, len(work), step)
            ]
            self.pending.append((deletion, futures))

    def collect(self, *, wait: bool = False) -> tuple[int, int]:
        """(folders, bytes) of the batches finished since the last call; with `wait`, of
        all. Records of finished batches are dropped a few at a time (each statement is a
        commit, a wait for the disk); one that a crash leaves names folders that are gone,
        which a later pass drops."""
        finished = freed = 0
        while self.pending and (
            wait
            or len(self.pending) > MAX_BATCHES_IN_FLIGHT
            or all(f.done() for f in self.pending[0][1])
        ):
            deletion, futures = self.pending.popleft()
            results = [result for f in futures for result in f.result()]
            left = [p for p, (_, gone) in zip(deletion.paths, results, strict=True) if not gone]
            if left:
                FolderDeletion.objects.filter(id=deletion.id).update(paths=left)
            else:
                self.done_records.append(deletion.id)
            finished += len(deletion.paths) - len(left)
            freed += sum(size for size, _ in results)
        if self.done_records and (wait or len(self.done_records) >= RECORDS_PER_DELETE):
            records = FolderDeletion.objects.filter(id__in=self.done_records)
            records._raw_delete(records.db)
            self.done_records = []
        return finished, freed

    def _remove_slice(self, work: list[tuple[str, bool, set[str]]], parents: dict) -> list:
        return [self._remove(*item, parents) for item in work]

    def _remove(
        self, relative: str, in_use: bool, inside: set[str], parents: dict
    ) -> tuple[int, bool]:
        """Remove one folder, never the live runs' folders inside it: (bytes freed, gone)."""
        path = None if in_use else safe_folder(relative, root=self.root, parents=parents)
        if path is None:
            return 0, True
        if inside:
            freed = remove_tree(path, keep=storage.artifacts_paths(inside))
            return freed + storage.stored_folder_remove(relative), True
        freed, gone = remove_folder(path)
        return freed + storage.stored_folder_remove(relative), gone


def remove_folder(path: Path) -> tuple[int, bool]:
    """Remove a folder and everything in it in one walk, by file descriptors, never
    following a symlink (one inside is removed as a link): (bytes of regular files freed,
    gone). What cannot be removed stays, and then the folder is not gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0, True
    except OSError:  # not a folder, or a symlink now
        return 0, False
    try:
        freed = _empty_folder(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return freed, False
    return freed, True


def _empty_folder(dir_fd: int) -> int:
    freed = 0
    with os.scandir(dir_fd) as scan:
        entries = list(scan)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                fd = os.open(entry.name, flags, dir_fd=dir_fd)
                try:
                    freed += _empty_folder(fd)
                finally:
                    os.close(fd)
                os.rmdir(entry.name, dir_fd=dir_fd)
            else:
                info = entry.stat(follow_symlinks=False)
                os.unlink(entry.name, dir_fd=dir_fd)
                freed += info.st_size if stat.S_ISREG(info.st_mode) else 0
        except OSError:
            continue  # left in place: the folder is then not gone, and is tried again
    return freed


def record_folder_deletion(run: TunixRun, *, now: datetime | None = None) -> list[FolderDeletion]:
    """For a single delete (services.run_delete), inside its transaction: the record a
    retention batch writes, claimed by the caller. Empty when the run has no folder."""
    path = safe_folder(run.output_dir)
    if path is None or not (path.exists() or settings.ARTIFACTS_URL):
        return []
    return [FolderDeletion.objects.create(paths=[run.output_dir], claimed_at=now or timezone.now())]


def _stale_claims(now: datetime) -> Q:
    return Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_LEASE)


def finish_leftovers(*, now: datetime, dry_run: bool, batch_size: int = 20) -> tuple[int, int]:
    """Folders whose rows were deleted by a pass that died before removing them:
    (folders, bytes) removed, or that would be."""
    folders = freed = 0
    if dry_run:
        for deletion in FolderDeletion.objects.filter(_stale_claims(now)).iterator():
            for relative in deletion.paths:
                path = safe_folder(relative)
                if path is not None and path.is_dir():
                    folders += 1
                    freed += folder_size(path)
        return folders, freed
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
            return folders, freed
        finished, size = remove_folders(list(FolderDeletion.objects.filter(id__in=ids)))
        folders += finished
        freed += size


def remove_orphans(*, now: datetime, dry_run: bool, batch_size: int = 500) -> tuple[int, int]:
    """Folders named runs/<uuid> (the default output folder) whose run row is gone:
    (folders, bytes) removed, or that would be. Symlinks, other names and anything outside
    the artifacts root are never touched."""
    runs_root = Path(settings.ARTIFACTS_DIR).resolve() / "runs"
    if not runs_root.is_dir() or runs_root.is_symlink():
        return 0, 0
    old_enough = (now - ORPHAN_GRACE).timestamp()
    candidates: list[str] = []
    chosen: list[str] | None = None  # read once, when the first candidate turns up
    folders = freed = 0
    with os.scandir(runs_root) as entries:
        for entry in entries:
            if _looks_like_run_folder(entry) and _modified_before(entry, old_enough):
                candidates.append(f"runs/{entry.name}")
            if len(candidates) >= batch_size:
                chosen = storage.chosen_folders() if chosen is None else chosen
                found, size = _remove_orphan_batch(candidates, chosen, dry_run)
                folders, freed, candidates = folders + found, freed + size, []
    if candidates:
        chosen = storage.chosen_folders() if chosen is None else chosen
        found, size = _remove_orphan_batch(candidates, chosen, dry_run)
        folders, freed = folders + found, freed + size
    return folders, freed


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


def _remove_orphan_batch(
    candidates: list[str], chosen: list[str], dry_run: bool
) -> tuple[int, int]:
    ids = [uuid.UUID(c.split("/", 1)[1]) for c in candidates]
    known = set(
        TunixRun.objects.filter(output_dir__in=candidates).values_list("output_dir", flat=True)
    )
    known |= {f"runs/{i}" for i in TunixRun.objects.filter(id__in=ids).values_list("id", flat=True)}
    folders = freed = 0
    for relative in candidates:
        # Never a folder that holds a live run's folder (one that chose runs/<uuid>/x).
        if relative in known or storage.run_folders_inside(relative, chosen=chosen):
            continue
        path = safe_folder(relative)
        if path is None:
            continue
        folders += 1
        freed += folder_size(path) if dry_run else remove_folder(path)[0]
    return folders, freed


def safe_folder(
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
