"""The one module that owns the filesystem: run folders, dataset files, sizes, removal,
checkpoint listings, output files and the streamed tar of a run's outputs.

Path confinement: every path a request can influence is checked here (`safe_relative`),
and checked again right before a process is launched. Imports only settings, models and
the protocol."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

from django.conf import settings

from . import objectstore, protocol, publishing
from .archives import Spool, add_in_blocks
from .errors import Conflict, NotFound
from .folder_tree import Budget, files_under, folder_node, real_folder, step_summaries
from .models import Dataset, RunKind, TunixRun
from .objectstore import (
    dataset_publish,
    dataset_unpublish,
    stored_folder_remove,
    stored_folder_usage,
    stored_run_folders,
)

__all__ = [
    "dataset_publish",
    "dataset_unpublish",
    "stored_folder_remove",
    "stored_folder_usage",
    "stored_run_folders",
]

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Files that training wrote (Orbax uses names like `_CHECKPOINT_METADATA`): looser, for
# reading inside a run's folder only. Still no hidden names, `..` or separators.
READ_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@=+-]{0,254}$")


class UnsafePath(ValueError):
    pass


def safe_relative(root: Path, relative: str, *, segment_re: re.Pattern = _SEGMENT_RE) -> Path:
    """Resolve `relative` under `root`, refusing anything that could land outside it.

    Refused: empty, absolute, NUL, backslashes, `..` or odd segments, and anything whose
    resolved path (symlinks followed) is not strictly inside the resolved root.
    """
    if not isinstance(relative, str) or not relative or len(relative) > 1024:
        raise UnsafePath("must be a relative path of 1 to 1024 characters")
    if "\x00" in relative or "\\" in relative:
        raise UnsafePath("must not contain NUL or backslashes")
    if relative.startswith("/"):
        raise UnsafePath("must be relative to the artifacts folder, not absolute")
    parts = relative.strip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath("must not contain empty, '.' or '..' segments")
        if not segment_re.match(part):
            raise UnsafePath(
                f"segment '{part[:40]}' may only use letters, digits, '.', '_' and '-', "
                "and must start with a letter or digit"
            )
    root = root.resolve()
    target = root.joinpath(*parts).resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePath("must stay inside the artifacts folder")
    return target


def is_safe_segment(value: str) -> bool:
    return isinstance(value, str) and bool(_SEGMENT_RE.match(value))


def run_output_path(run: TunixRun) -> Path:
    return safe_relative(Path(settings.ARTIFACTS_DIR), run.output_dir)


def remove_tree(path: Path, *, keep: set[Path] | frozenset = frozenset()) -> int:
    """Delete a run's folder; returns the bytes freed. Never follows a symlink out, and
    never removes the folders in `keep` (other runs' folders inside this one)."""
    if not path.exists():
        return 0
    if any(kept.is_relative_to(path) for kept in keep):
        return _remove_around(path, keep)
    # os.walk + lstat, not Path.rglob: a retention pass calls this 100,000s of times.
    freed = folder_size(path)
    shutil.rmtree(path, ignore_errors=True)
    return freed


def _remove_around(path: Path, keep: set[Path] | frozenset) -> int:
    """Remove everything under `path` except the kept folders (and the folders above them)."""
    if path in keep:
        return 0
    freed = 0
    with os.scandir(path) as entries:
        for entry in list(entries):
            child = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                freed += remove_tree(child, keep=keep)
            else:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    os.unlink(child)
                    freed += info.st_size if stat.S_ISREG(info.st_mode) else 0
    if not any(kept.is_relative_to(path) for kept in keep):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return freed


# The folder of every run recorded since runs could no longer choose one: runs/<uuid>.
STANDARD_FOLDER = r"^runs/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def chosen_folders() -> list[str]:
    """Folders of runs recorded before that rule, which chose their own (and so may contain,
    or sit inside, another run's folder). A full scan, once per retention pass."""
    return list(
        TunixRun.objects.exclude(output_dir__regex=STANDARD_FOLDER).values_list(
            "output_dir", flat=True
        )
    )


def run_folders_inside(relative: str, *, chosen: list[str] | None = None) -> set[str]:
    """Recorded runs' folders strictly inside `relative` (relative to the artifacts root).
    A standard runs/<uuid> folder can hold only chosen ones; given `chosen`, no query."""
    prefix = relative.strip("/") + "/"
    if chosen is not None and re.match(STANDARD_FOLDER, relative):
        return {folder for folder in chosen if folder.startswith(prefix)}
    return set(
        TunixRun.objects.filter(output_dir__startswith=prefix).values_list("output_dir", flat=True)
    )


def artifacts_paths(relatives) -> set[Path]:
    root = Path(settings.ARTIFACTS_DIR).resolve()
    return {root.joinpath(*r.strip("/").split("/")) for r in relatives}


def dataset_path(dataset: Dataset) -> Path:
    return safe_relative(Path(settings.DATASETS_DIR), dataset.file_path)


def run_checkpoints(run: TunixRun) -> list[dict[str, Any]]:
    """Checkpoints by step with their completeness marker, newest first."""
    under = protocol.checkpoint_folder(run.method)
    if objectstore.artifacts():
        return objectstore.run_checkpoints(run.output_dir, under=under)
    try:
        root = real_folder(run_output_path(run), under)
    except UnsafePath:
        return []
    found = [
        {
            "step": int(child.name),
            "complete": (child / protocol.CHECKPOINT_COMPLETE_MARKER).is_file(),
            "path": f"{under}/{child.name}",
        }
        for child in (root.iterdir() if root else ())
        if child.is_dir() and not child.is_symlink() and child.name.isdigit()
    ]
    return sorted(found, key=lambda c: c["step"], reverse=True)


def run_latest_checkpoint(run: TunixRun) -> int | None:
    """The newest step whose Orbax checkpoint is complete (has commit_success.txt)."""
    steps = [c["step"] for c in run_checkpoints(run) if c["complete"]]
    return max(steps) if steps else None


def foreign_folders(run: TunixRun) -> set[Path]:
    """Other runs' folders inside this run's folder. New runs always write to runs/<id>, so
    only runs recorded before that rule (which chose their folder) can have any; every file
    operation on this run leaves them alone."""
    return artifacts_paths(run_folders_inside(run.output_dir) - {run.output_dir})


def servable(info: os.stat_result) -> bool:
    """A regular file with one link. A hard link (st_nlink > 1) could be another file of
    this host that the training child linked into its folder: never served, listed or
    archived. Symlinks are refused by the callers (lstat / O_NOFOLLOW)."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def _output_files(root: Path, skip: set[Path]):
    """(path, lstat) of the servable files under `root` in path order, without following
    symlinks and without descending into `skip` (other runs' folders)."""
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            if path not in skip:
                yield from _output_files(path, skip)
        elif servable(info):
            yield path, info


def run_output_files(run: TunixRun, *, limit: int = 2000) -> list[dict]:
    """Files under the run's folder (relative paths, sizes); symlinks are not followed."""
    if objectstore.artifacts():
        rows = objectstore.run_files(run.output_dir)[:limit]
        return [{"path": path, "size": size} for path, size in rows]
    try:
        root = run_output_path(run)
    except Exception:
        return []
    if not root.is_dir():
        return []
    files = []
    for path, info in _output_files(root, foreign_folders(run)):
        files.append({"path": str(path.relative_to(root)), "size": info.st_size})
        if len(files) >= limit:
            break
    return files


def run_output_file(run: TunixRun, relative: str):
    """An open (binary) regular file inside the run's folder, or NotFound. Confined to the
    folder: `..`, absolute paths, symlinks, hard links and other runs' folders are refused.
    The checks are made on the opened file, so it cannot be swapped after them."""

    missing = NotFound("No such file in this run's outputs.")
    if store := objectstore.artifacts():
        return store.open(f"{run.output_dir}/{relative}")  # the key is checked there
    try:
        root = run_output_path(run)
        path = safe_relative(root, relative, segment_re=READ_SEGMENT_RE)
    except UnsafePath as exc:
        raise missing from exc
    unresolved = root.joinpath(*relative.strip("/").split("/"))
    if path != unresolved or any(path.is_relative_to(other) for other in foreign_folders(run)):
        raise missing  # reached through a symlink, or another run's file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise missing from exc
    if not servable(os.fstat(fd)):
        os.close(fd)
        raise missing
    return os.fdopen(fd, "rb")


def run_output_archive(run: TunixRun):
    """The run's whole folder as a streamed .tar.gz. Each file is read and compressed in
    blocks of ARCHIVE_BLOCK, and what is compressed is handed out block by block, so
    memory stays flat whatever the sizes. Servable files only (no symlinks, hard links or
    other runs' folders); a file that grows while it is read is cut at its listed size."""

    root = run_output_path(run)
    if objectstore.artifacts():
        yield from objectstore.run_archive(run.output_dir, root.name)
        return
    spool = Spool()
    with tarfile.open(fileobj=spool, mode="w|gz") as archive:
        if root.is_dir():
            for path, info in _output_files(root, foreign_folders(run)):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as handle:
                    if not servable(os.fstat(handle.fileno())):
                        continue
                    member = tarfile.TarInfo(f"{root.name}/{path.relative_to(root)}")
                    member.size, member.mtime, member.mode = info.st_size, info.st_mtime, 0o644
                    yield from add_in_blocks(archive, member, handle, spool)
    yield spool.take()


def run_folder_size(run: TunixRun) -> int:
    """Bytes of the regular files in the run's folder (0 when it has none)."""
    if objectstore.artifacts():
        return sum(size for _, size in objectstore.run_files(run.output_dir))
    try:
        path = run_output_path(run)
    except UnsafePath:
        return 0
    return folder_size(path) if path.is_dir() else 0


def dataset_file(dataset: Dataset) -> Path:
    """The stored file of a dataset; Conflict when it has gone missing."""

    try:
        path = dataset_local(dataset)
    except UnsafePath:
        path = None
    if path is None or not path.is_file():
        raise Conflict(f"The file of dataset {dataset.key} is missing from the datasets folder.")
    return path


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


# --- the run page's view of a run's folder --------------------------------------------------
# (Beside run_output_files and run_output_archive, which the API uses; the listing itself is
# runs/folder_tree.py.)


def run_output_tree(run: TunixRun, *, shown: int = 50, max_entries: int = 20_000) -> dict:
    """The run's folder for the run page: every checkpoint step as one row (size, files,
    complete or not), the rest as a folder tree whose folders list at most `shown` entries
    each and say how many more they hold. At most `max_entries` entries are looked at;
    `partial` says the listing stopped there. Symlinks are neither followed nor listed."""
    under = protocol.checkpoint_folder(run.method)
    if objectstore.artifacts():
        return objectstore.run_tree(
            run.output_dir, shown=shown, max_entries=max_entries, under=under
        )
    empty = {"checkpoints": [], "tree": None, "files": 0, "size": 0, "partial": False}
    try:
        root = run_output_path(run)
    except UnsafePath:
        return empty
    if root.is_symlink() or not root.is_dir():
        return empty
    budget = Budget(max_entries)
    steps = step_summaries(root, under)
    tree = folder_node(root, "", shown=shown, budget=budget, skip={protocol.CHECKPOINTS_DIRNAME})
    extra = real_folder(root, under)
    if extra is not None:
        # What else lives beside the step folders (Orbax's temporary folders while saving).
        rest = folder_node(
            extra,
            under,
            shown=shown,
            budget=budget,
            skip={str(row["step"]) for row in steps},
        )
        if rest["children"] or rest["more"]:
            tree["children"].insert(0, rest)
            tree["files"] += rest["files"]
            tree["size"] += rest["size"]
    return {
        "checkpoints": steps,
        "tree": tree,
        "files": tree["files"] + sum(row["files"] for row in steps),
        "size": tree["size"] + sum(row["size"] for row in steps),
        "partial": budget.exhausted,
    }


def run_checkpoint_archive(run: TunixRun, step: int):
    """One checkpoint step's folder as a streamed .tar.gz (`checkpoint-<step>/...`), regular
    files only; NotFound when the run has no such step."""
    name, under = f"checkpoint-{int(step)}", f"{protocol.checkpoint_folder(run.method)}/{int(step)}"
    if objectstore.artifacts():
        if not any(row["step"] == int(step) for row in run_checkpoints(run)):
            raise NotFound(f"This run has no checkpoint at step {int(step)}.")
        return objectstore.run_archive(run.output_dir, name, under=under)
    try:
        folder = real_folder(run_output_path(run), under)
    except UnsafePath:
        folder = None
    if folder is None:
        raise NotFound(f"This run has no checkpoint at step {int(step)}.")

    def stream():
        spool = Spool()
        with tarfile.open(fileobj=spool, mode="w|gz") as archive:
            for path, _size in files_under(folder):
                name = f"checkpoint-{int(step)}/{path.relative_to(folder)}"
                archive.add(path, arcname=name, recursive=False)
                yield spool.take()
        yield spool.take()

    return stream()


# --- the object store (objectstore.py), for hosts that share no mount -----------------------


def run_published(run: TunixRun):
    """With a store: upload the run's folder while it runs and when it ends; an export's
    model folder goes up with it, under model/ (runs/publishing.py)."""
    extra = None
    if run.kind == RunKind.EXPORT and (run.config.get("export") or {}).get("dir"):
        extra = {publishing.EXPORT_PREFIX: Path(run.config["export"]["dir"])}
    under = protocol.checkpoint_folder(run.method)
    return publishing.publishing(
        run_output_path(run), run.output_dir, run.id, under=under, extra=extra
    )


def run_localized(run: TunixRun) -> dict:
    """The run's config with this host's paths (see publishing.localize)."""
    parent = run_output_path(run.parent) if run.parent is not None else None
    return publishing.localize(run, run_output_path(run), parent)


def run_checkpoint_staged(run: TunixRun, key):
    """With a store, a context whose value is the `source` fields pointing at the run's
    newest complete step, staged on this host for its length (None without a store)."""
    return publishing.staged_source(run.output_dir, run.method, key)


def dataset_local(dataset: Dataset) -> Path:
    """The dataset's file on this host (with a store: fetched into the local cache)."""
    return objectstore.dataset_fetch(dataset_path(dataset), dataset.file_path, dataset.size_bytes)
