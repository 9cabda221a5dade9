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
