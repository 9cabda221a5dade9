"""A run's folder on the local disk as the run page shows it: checkpoint steps as rows, the rest
as a folder tree with bounded listings (runs/storage.py's run_output_tree). Symlinks are
neither followed nor listed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from . import protocol


def real_folder(root: Path, relative: str) -> Path | None:
    """`root/relative` when it and each folder on the way is a real folder (no symlink)."""
    folder = root
    for part in relative.split("/"):
        folder = folder / part
        if folder.is_symlink() or not folder.is_dir():
            return None
    return folder


def files_under(folder: Path):
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


def step_summaries(root: Path, under: str) -> list[dict[str, Any]]:
    """Each checkpoint step folder as one row: step, complete, size, files, newest first."""
    folder = real_folder(root, under)
    if folder is None:
        return []
    rows = []
    for child in folder.iterdir():
        if child.name.isdigit() and not child.is_symlink() and child.is_dir():
            sizes = [size for _, size in files_under(child)]
            rows.append(
                {
                    "step": int(child.name),
                    "complete": (child / protocol.CHECKPOINT_COMPLETE_MARKER).is_file(),
                    "size": sum(sizes),
                    "files": len(sizes),
                    "path": f"{under}/{child.name}",
                }
            )
    return sorted(rows, key=lambda row: row["step"], reverse=True)


class Budget:
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


def folder_node(folder: Path, relative: str, *, shown: int, budget: Budget, skip=()) -> dict:
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
            child = folder_node(Path(entry.path), path, shown=shown, budget=budget)
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
