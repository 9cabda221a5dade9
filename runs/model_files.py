"""File operations on the models folder (TUNIXRT_MODELS_DIR): list the local models, stream one
as a .tar.gz, remove one. Names are single safe path segments, checked here; nothing follows a
symlink out of the folder. (runs/storage.py holds the runs' and datasets' files.)"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

from django.conf import settings

from . import storage
from .archives import Spool, add_in_blocks
from .errors import NotFound


def model_path(name: str) -> Path:
    """The folder of local:`name`, or NotFound when the name is unsafe or no such model is
    here (a symlinked folder is not a model of this folder)."""
    if not storage.is_safe_segment(name):
        raise NotFound(f"No local model {name!r}.")
    path = Path(settings.MODELS_DIR) / name
    if path.is_symlink() or not (path / "config.json").is_file():
        raise NotFound(f"No local model local:{name}.")
    return path


def _describe(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    return {
        "name": path.name,
        "model_id": f"local:{path.name}",
        "model_type": str(config.get("model_type") or ""),
        "size": storage.folder_size(path),
        "modified": path.stat().st_mtime,
        "has_card": (path / "README.md").is_file(),
    }


def local_model_list() -> list[dict[str, Any]]:
    """Every model folder (one holding config.json), by name: name, model_id, model_type,
    size in bytes, modification time."""
    root = Path(settings.MODELS_DIR)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.is_symlink() or not storage.is_safe_segment(path.name):
            continue
        if (path / "config.json").is_file():
            found.append(_describe(path))
    return found


def model_remove(name: str) -> int:
    """Delete local:`name`'s folder; returns the bytes freed."""
    return storage.remove_tree(model_path(name))


def model_archive(name: str):
    """local:`name`'s folder as a streamed .tar.gz (`NAME/...`), servable files only, read
    and compressed in blocks as runs/storage.py streams a run's folder."""
    root = model_path(name)

    def stream():
        spool = Spool()
        with tarfile.open(fileobj=spool, mode="w|gz") as archive:
            for path, info in storage._output_files(root, set()):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as handle:
                    if not storage.servable(os.fstat(handle.fileno())):
                        continue
                    member = tarfile.TarInfo(f"{root.name}/{path.relative_to(root)}")
                    member.size, member.mtime, member.mode = info.st_size, info.st_mtime, 0o644
                    yield from add_in_blocks(archive, member, handle, spool)
        yield spool.take()

    return stream()
