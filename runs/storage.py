"""The one module that owns the filesystem: run folders, dataset files, sizes, removal,
checkpoint listings, output files and the streamed tar of a run's outputs.

Path confinement: every path a request can influence is checked here (`safe_relative`),
and checked again right before a process is launched. Imports only settings, models and
the protocol."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

from django.conf import settings

from . import protocol
from .errors import Conflict, NotFound
from .models import Dataset, TunixRun

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


def remove_tree(path: Path) -> int:
    """Delete a run's folder; returns the bytes freed. Never follows a symlink out."""
    if not path.exists():
        return 0
    # os.walk + lstat, not Path.rglob: a retention pass calls this 100,000s of times.
    freed = folder_size(path)
    shutil.rmtree(path, ignore_errors=True)
    return freed


def dataset_path(dataset: Dataset) -> Path:
    return safe_relative(Path(settings.DATASETS_DIR), dataset.file_path)


def run_checkpoints(run: TunixRun) -> list[dict[str, Any]]:
    """Checkpoints by step with their completeness marker, newest first."""
    try:
        root = run_output_path(run) / "checkpoints"
    except UnsafePath:
        return []
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink() and child.name.isdigit():
            found.append(
                {
                    "step": int(child.name),
                    "complete": (child / "commit_success.txt").is_file(),
                    "path": str(child.relative_to(run_output_path(run))),
                }
            )
    return sorted(found, key=lambda c: c["step"], reverse=True)


def run_latest_checkpoint(run: TunixRun) -> int | None:
    """The newest step whose Orbax checkpoint is complete (has commit_success.txt)."""
    steps = [c["step"] for c in run_checkpoints(run) if c["complete"]]
    return max(steps) if steps else None


def run_output_files(run: TunixRun, *, limit: int = 2000) -> list[dict]:
    """Files under the run's folder (relative paths, sizes); symlinks are not followed."""

    try:
        root = run_output_path(run)
    except Exception:
        return []
    if not root.is_dir():
        return []
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files.append({"path": str(path.relative_to(root)), "size": path.stat().st_size})
            if len(files) >= limit:
                break
    return files


def run_output_file(run: TunixRun, relative: str):
    """An existing regular file inside the run's folder, or NotFound. Confined to the folder:
    `..`, absolute paths and symlinks that leave it are refused."""

    try:
        root = run_output_path(run)
        path = safe_relative(root, relative, segment_re=READ_SEGMENT_RE)
    except UnsafePath as exc:
        raise NotFound("No such file in this run's outputs.") from exc
    if not path.is_file():
        raise NotFound("No such file in this run's outputs.")
    return path


class _Spool:
    """A write-only file object whose bytes are handed out as they accumulate."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def run_output_archive(run: TunixRun):
    """The run's whole folder as a streamed .tar.gz (memory stays at one file's buffer).
    Regular files only; symlinks are skipped so nothing outside the folder is read."""

    root = run_output_path(run)
    spool = _Spool()
    with tarfile.open(fileobj=spool, mode="w|gz") as archive:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                archive.add(path, arcname=f"{root.name}/{path.relative_to(root)}", recursive=False)
                yield spool.take()
    yield spool.take()


def run_folder_size(run: TunixRun) -> int:
    """Bytes of the regular files in the run's folder (0 when it has none)."""

    try:
        path = run_output_path(run)
    except UnsafePath:
        return 0
    return folder_size(path) if path.is_dir() else 0


def dataset_file(dataset: Dataset) -> Path:
    """The stored file of a dataset; Conflict when it has gone missing."""

    try:
        path = dataset_path(dataset)
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
# (Added beside run_output_files and run_output_archive, which the API still uses.)


def _checkpoint_step_dir(root: Path, step: int) -> Path | None:
    """`checkpoints/<step>` inside `root` when it is a real folder (not a symlink)."""
    folder = root / protocol.CHECKPOINTS_DIRNAME / str(int(step))
    if folder.is_symlink() or not folder.is_dir():
        return None
    return folder


def _files_under(folder: Path):
    """(path, size) of the regular files under `folder`, sorted; symlinks are neither
    followed nor listed."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield path, info.st_size


def _step_summaries(root: Path) -> list[dict[str, Any]]:
    """Each checkpoint step folder as one row: step, complete, size, files, newest first."""
    folder = root / protocol.CHECKPOINTS_DIRNAME
    if folder.is_symlink() or not folder.is_dir():
        return []
    rows = []
    for child in folder.iterdir():
        if child.name.isdigit() and not child.is_symlink() and child.is_dir():
            sizes = [size for _, size in _files_under(child)]
            rows.append(
                {
                    "step": int(child.name),
                    "complete": (child / protocol.CHECKPOINT_COMPLETE_MARKER).is_file(),
                    "size": sum(sizes),
                    "files": len(sizes),
                    "path": f"{protocol.CHECKPOINTS_DIRNAME}/{child.name}",
                }
            )
    return sorted(rows, key=lambda row: row["step"], reverse=True)


class _Budget:
    """How many more entries a listing may look at (a folder of 100,000 files must not
    make the run page slow); `exhausted` once it ran out."""

    def __init__(self, entries: int):
        self.left = entries
        self.exhausted = False

    def take(self) -> bool:
        if self.left <= 0:
            self.exhausted = True
            return False
        self.left -= 1
        return True


def _folder_node(folder: Path, relative: str, *, shown: int, budget: _Budget, skip=()) -> dict:
    """A folder as a tree node: its entries (folders first, at most `shown`, then how many
    more), with the number and total size of the regular files under it."""
    node = {"name": folder.name, "path": relative, "dir": True, "files": 0, "size": 0}
    children, more = [], 0
    try:
        entries = sorted(
            os.scandir(folder), key=lambda e: (not e.is_dir(follow_symlinks=False), e.name)
        )
    except OSError:
        entries = []
    for entry in entries:
        if entry.name in skip or entry.is_symlink() or not budget.take():
            continue
        path = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_dir(follow_symlinks=False):
            child = _folder_node(Path(entry.path), path, shown=shown, budget=budget)
        elif entry.is_file(follow_symlinks=False):
            child = {"name": entry.name, "path": path, "dir": False, "files": 1}
            child["size"] = entry.stat(follow_symlinks=False).st_size
        else:
            continue
        node["files"] += child["files"]
        node["size"] += child["size"]
        if len(children) < shown:
            children.append(child)
        else:
            more += 1
    node["children"], node["more"] = children, more
    return node


def run_output_tree(run: TunixRun, *, shown: int = 50, max_entries: int = 20_000) -> dict:
    """The run's folder for the run page: every checkpoint step as one row (size, files,
    complete or not), the rest as a folder tree whose folders list at most `shown` entries
    each and say how many more they hold. At most `max_entries` entries are looked at;
    `partial` says the listing stopped there. Symlinks are neither followed nor listed."""
    empty = {"checkpoints": [], "tree": None, "files": 0, "size": 0, "partial": False}
    try:
        root = run_output_path(run)
    except UnsafePath:
        return empty
    if root.is_symlink() or not root.is_dir():
        return empty
    budget = _Budget(max_entries)
    steps = _step_summaries(root)
    tree = _folder_node(root, "", shown=shown, budget=budget, skip={protocol.CHECKPOINTS_DIRNAME})
    extra = root / protocol.CHECKPOINTS_DIRNAME
    if extra.is_dir() and not extra.is_symlink():
        # What else lives beside the step folders (Orbax's temporary folders while saving).
        rest = _folder_node(
            extra,
            protocol.CHECKPOINTS_DIRNAME,
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
    try:
        folder = _checkpoint_step_dir(run_output_path(run), step)
    except UnsafePath:
        folder = None
    if folder is None:
        raise NotFound(f"This run has no checkpoint at step {int(step)}.")

    def stream():
        spool = _Spool()
        with tarfile.open(fileobj=spool, mode="w|gz") as archive:
            for path, _size in _files_under(folder):
                name = f"checkpoint-{int(step)}/{path.relative_to(folder)}"
                archive.add(path, arcname=name, recursive=False)
                yield spool.take()
        yield spool.take()

    return stream()
