"""Run folders and dataset files in an object store (`s3://bucket/prefix`, any S3-compatible
service, or `gs://bucket/prefix`), for hosts that share no mount. Only runs/storage.py
(and runs/publishing.py, the worker's side) imports this module: storage stays the one place
that owns files, and chooses this backend when TUNIXRT_ARTIFACTS_URL / TUNIXRT_DATASETS_URL
name a store.

How a run uses it (see README, "Object store"): the launcher writes into the worker's local
scratch folder (TUNIXRT_ARTIFACTS_DIR) as it always did and the worker publishes it
(runs/publishing.py); the web process lists, streams and deletes through `Store`, and
retention sweeps the prefixes no run owns.

Confinement: every key is built by `Store.key` from a relative path whose segments are
checked (no `..`, no empty or hidden segment, no backslash or NUL) under the configured
prefix, so no request can name an object outside it."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import re
import tarfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import protocol
from .archives import Spool, add_in_blocks
from .errors import NotFound

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs")
# Names training may write (Orbax's `_CHECKPOINT_METADATA`, `ocdbt.process_0`, ...): no
# hidden names, no `..`, no separators inside a segment. The same rule as storage's.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@=+-]{0,254}$")


class UnsafeKey(ValueError):
    pass


def parse_url(url: str) -> tuple[str, str]:
    """(scheme, bucket/prefix) of an object-store URL; ImproperlyConfigured otherwise."""
    scheme, sep, rest = url.partition("://")
    rest = rest.strip("/")
    if not sep or scheme not in SCHEMES or not rest or ".." in rest.split("/"):
        raise ImproperlyConfigured(
            f"{url!r} is not an object-store URL: use s3://bucket/prefix or gs://bucket/prefix"
        )
    return scheme, rest


class Store:
    """One bucket prefix through fsspec (s3fs or gcsfs). Listing caches are off: the web
    process must see what a worker uploaded a moment ago."""

    def __init__(self, url: str):
        import fsspec  # the `objectstore` extra; imported only when a store is configured

        self.url = url
        self.scheme, self.root = parse_url(url)
        options: dict = {"skip_instance_cache": True}
        if self.scheme == "s3":
            options["use_listings_cache"] = False
            if settings.S3_ENDPOINT_URL:
                options["client_kwargs"] = {"endpoint_url": settings.S3_ENDPOINT_URL}
        else:
            options["cache_timeout"] = 0
        self.fs = fsspec.filesystem(self.scheme, **options)

    def key(self, relative: str = "") -> str:
        """The object key of `relative` under the prefix; UnsafeKey for anything that could
        name an object outside it."""
        if not isinstance(relative, str) or len(relative) > 1024:
            raise UnsafeKey("must be a relative path of at most 1024 characters")
        if "\x00" in relative or "\\" in relative or relative.startswith("/"):
            raise UnsafeKey("must be relative, without NUL or backslashes")
        parts = [p for p in relative.split("/") if p] if relative else []
        if relative and len(parts) != len(relative.strip("/").split("/")):
            raise UnsafeKey("must not contain empty segments")
        for part in parts:
            if part in (".", "..") or not SEGMENT_RE.match(part):
                raise UnsafeKey(f"segment '{part[:40]}' is not allowed")
        return "/".join([self.root, *parts])

    def files(self, relative: str) -> list[tuple[str, int]]:
        """(path relative to `relative`, size) of every object under it, in path order."""
        base = self.key(relative)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        rows = []
        for name, info in found.items():
            name = name.removeprefix(f"{self.scheme}://")
            if info.get("type") == "directory" or not name.startswith(base + "/"):
                continue
            rows.append((name[len(base) + 1 :], int(info.get("size") or 0)))
        return sorted(rows)

    def folders(self, relative: str) -> list[str]:
        """Names of the folders (common prefixes) directly under `relative`."""
        base = self.key(relative)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in entries
            if entry.get("type") == "directory"
        )

    def usage(self, relative: str) -> tuple[int, float | None]:
        """(bytes, when the newest object was written, as a timestamp) under `relative`;
        the time is None when there is no object or the store does not say."""
        base = self.key(relative)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return 0, None
        size, times = 0, []
        for name, info in found.items():
            name = name.removeprefix(f"{self.scheme}://")
            if info.get("type") == "directory" or not name.startswith(base + "/"):
                continue
            size += int(info.get("size") or 0)
            times.append(_modified(info))
        known = [t for t in times if t is not None]
        return size, (max(known) if known and len(known) == len(times) else None)

    def open(self, relative: str):
        try:
            return self.fs.open(self.key(relative), "rb")
        except (FileNotFoundError, UnsafeKey) as exc:
            raise NotFound("No such file in this run's outputs.") from exc

    def size(self, relative: str) -> int | None:
        try:
            return int(self.fs.info(self.key(relative)).get("size") or 0)
        except FileNotFoundError:
            return None

    def remove(self, relative: str) -> int:
        """Delete every object under `relative`; the bytes freed."""
        rows = self.files(relative)
        if rows:
            base = self.key(relative)
            self.fs.rm([f"{base}/{name}" for name, _ in rows])
        return sum(size for _, size in rows)

    def remove_object(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(relative))

    def put(self, local: Path, relative: str) -> None:
        self.fs.put_file(str(local), self.key(relative))

    def get(self, relative: str, local: Path) -> None:
        """Download to `local` atomically (a partial download never looks complete)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        try:
            self.fs.get_file(self.key(relative), str(part))
        except FileNotFoundError as exc:
            part.unlink(missing_ok=True)
            raise NotFound(f"{relative} is not in the object store") from exc
        os.replace(part, local)


def _modified(info: dict) -> float | None:
    """An object's modification time from a listing: s3fs says LastModified (a datetime),
    gcsfs `updated` (ISO 8601 text)."""
    value = info.get("LastModified") or info.get("updated") or info.get("mtime")
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


@functools.cache
def _store(url: str, endpoint: str, pid: int) -> Store:
    return Store(url)  # one per process (fsspec's clients do not survive a fork)


def artifacts() -> Store | None:
    """The artifacts store, or None when run folders live in the local folder."""
    url = settings.ARTIFACTS_URL
    return _store(url, settings.S3_ENDPOINT_URL, os.getpid()) if url else None


def datasets() -> Store | None:
    url = settings.DATASETS_URL
    return _store(url, settings.S3_ENDPOINT_URL, os.getpid()) if url else None


# --- the web side: a run's folder as the run page and the API show it ----------------------


def run_files(output_dir: str) -> list[tuple[str, int]]:
    return artifacts().files(output_dir)


def run_checkpoints(
    output_dir: str, rows=None, *, under: str = protocol.CHECKPOINTS_DIRNAME
) -> list[dict]:
    """Checkpoint steps newest first, in the shape of storage's local listing; `under` is
    the run's protocol.checkpoint_folder."""
    rows = run_files(output_dir) if rows is None else rows
    steps: dict[int, dict] = {}
    prefix = under + "/"
    for name, size in rows:
        step, _, rest = name.removeprefix(prefix).partition("/")
        if not name.startswith(prefix) or not step.isdigit() or not rest:
            continue
        row = steps.setdefault(
            int(step),
            {"step": int(step), "complete": False, "size": 0, "files": 0, "path": prefix + step},
        )
        row["size"] += size
        row["files"] += 1
        row["complete"] |= rest == protocol.CHECKPOINT_COMPLETE_MARKER
    return sorted(steps.values(), key=lambda r: r["step"], reverse=True)


def run_tree(
    output_dir: str, *, shown: int, max_entries: int, under: str = protocol.CHECKPOINTS_DIRNAME
) -> dict:
    """storage.run_output_tree's answer, from the object listing."""
    rows = run_files(output_dir)
    partial = len(rows) > max_entries
    rows = rows[:max_entries]
    steps = run_checkpoints(output_dir, rows, under=under)
    in_steps = {row["path"] + "/" for row in steps}
    root = {"name": output_dir.rsplit("/", 1)[-1], "path": "", "dir": True, "files": 0, "size": 0}
    root |= {"children": [], "more": 0}
    for name, size in rows:
        if any(name.startswith(step) for step in in_steps):
            continue
        node, parts = root, name.split("/")
        for depth, part in enumerate(parts):
            node["files"] += 1
            node["size"] += size
            last = depth == len(parts) - 1
            child = next((c for c in node["children"] if c["name"] == part), None)
            if child is None:
                child = {"name": part, "path": "/".join(parts[: depth + 1]), "dir": not last}
                child |= {"files": 0, "size": 0} if not last else {"files": 1, "size": size}
                if not last:
                    child |= {"children": [], "more": 0}
                if len(node["children"]) < shown:
                    node["children"].append(child)
                else:
                    node["more"] += 1
            node = child
    for node in _walk(root):
        node["children"].sort(key=lambda c: (not c["dir"], c["name"]))
    return {
        "checkpoints": steps,
        "tree": root,
        "files": root["files"] + sum(row["files"] for row in steps),
        "size": root["size"] + sum(row["size"] for row in steps),
        "partial": partial,
    }


def _walk(node: dict):
    if node.get("dir"):
        yield node
        for child in node["children"]:
            yield from _walk(child)


def run_archive(output_dir: str, name: str, *, under: str = ""):
    """The objects under `output_dir/under` as a streamed .tar.gz whose members start with
    `name/`; each object is read in blocks, so memory stays flat."""
    store = artifacts()
    base = f"{output_dir}/{under}" if under else output_dir
    spool = Spool()
    with tarfile.open(fileobj=spool, mode="w|gz") as archive:
        for relative, size in store.files(base):
            member = tarfile.TarInfo(f"{name}/{relative}")
            member.size, member.mode = size, 0o644
            with store.open(f"{base}/{relative}") as handle:
                yield from add_in_blocks(archive, member, handle, spool)
    yield spool.take()


# --- what runs/storage.py hands on to the services ------------------------------------------


def stored_folder_remove(relative: str) -> int:
    """Remove a run folder's objects from the store (0 without one); the bytes freed."""
    store = artifacts()
    return store.remove(relative) if store else 0


def stored_run_folders() -> list[str]:
    """The `runs/<name>` prefixes in the artifacts store ([] without one): the candidates of
    retention's orphan sweep, which checks each against the runs."""
    store = artifacts()
    return [f"runs/{name}" for name in store.folders("runs")] if store else []


def stored_folder_usage(relative: str) -> tuple[int, float | None]:
    """(bytes, newest object's timestamp) of a folder's objects; (0, None) without a store."""
    store = artifacts()
    return store.usage(relative) if store else (0, None)


def dataset_fetch(path: Path, relative: str, size: int) -> Path:
    """With a datasets store: download the file into the local cache when it is missing
    there or has another size (a key deleted and imported again)."""
    store = datasets()
    if store and not (path.is_file() and path.stat().st_size == size):
        with contextlib.suppress(NotFound):
            store.get(relative, path)
    return path


def dataset_publish(path: Path, relative: str) -> None:
    if store := datasets():
        store.put(path, relative)


def dataset_unpublish(relative: str) -> None:
    if store := datasets():
        store.remove_object(relative)
