"""Run folders and dataset files in an object store (`s3://bucket/prefix`, any S3-compatible
service, or `gs://bucket/prefix`), for hosts that share no mount. Only runs/storage.py
imports this module: it stays the one place that owns files, and chooses this backend when
TUNIXRT_ARTIFACTS_URL / TUNIXRT_DATASETS_URL name a store.

How a run uses it (see README, "Object store"): the launcher writes into the worker's local
scratch folder (TUNIXRT_ARTIFACTS_DIR) as it always did; a publisher thread uploads each
checkpoint step once Orbax marks it complete, and the whole folder when the run ends (then
removes the scratch copy). A resumed run gets its parent's newest complete step downloaded
first. The web process lists, streams and deletes through `Store`.

Confinement: every key is built by `Store.key` from a relative path whose segments are
checked (no `..`, no empty or hidden segment, no backslash or NUL) under the configured
prefix, so no request can name an object outside it."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import re
import shutil
import stat
import tarfile
import threading
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
# How often the publisher looks for newly completed checkpoint steps.
PUBLISH_POLL_SECONDS = 3.0


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


# --- the worker side: staging a parent's checkpoint, publishing a run's folder -------------


def stage_parent_checkpoint(
    parent_output_dir: str, target: Path, *, method: str = "sft"
) -> int | None:
    """Download the parent run's newest complete checkpoint step into `target/<step>`
    (`target/actor/<step>` for GRPO, where its launcher looks); the step, or None when the
    store holds no complete step of it."""
    store = artifacts()
    under = protocol.checkpoint_folder(method)
    complete = [r for r in run_checkpoints(parent_output_dir, under=under) if r["complete"]]
    if not complete:
        return None
    step = complete[0]["step"]
    prefix = f"{parent_output_dir}/{under}/{step}"
    local = target.joinpath(*under.split("/")[1:], str(step))
    for relative, _size in store.files(prefix):
        store.get(f"{prefix}/{relative}", local / relative)
    return step


def _local_files(root: Path):
    """(path, relative) of the regular, single-link files under `root`; symlinks are
    neither followed nor uploaded (the same rule as storage.servable)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    yield path, path.relative_to(root).as_posix()


class Publisher:
    """Uploads a run's folder from the worker's scratch copy while the run trains (each
    checkpoint step once it is complete) and when it ends (everything, then objects the run
    removed locally, e.g. pruned steps, are removed from the store too). The scratch copy is
    removed only once everything is uploaded; on an upload error it stays, and says so."""

    def __init__(self, local: Path, output_dir: str):
        self.local, self.output_dir = local, output_dir
        self.store = artifacts()
        self.sent: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="publish", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()
        self.finish()

    def _loop(self) -> None:
        while not self.stop.wait(PUBLISH_POLL_SECONDS):
            try:
                self.publish_steps()
            except Exception:  # the store is away: the final upload tries again
                log.exception("uploading checkpoints of %s failed", self.output_dir)

    def publish_steps(self) -> list[int]:
        folder = self.local / protocol.CHECKPOINTS_DIRNAME
        if not folder.is_dir():
            return []
        done = []
        for child in sorted(folder.iterdir()):
            marker = child / protocol.CHECKPOINT_COMPLETE_MARKER
            if not child.name.isdigit() or int(child.name) in self.sent or not marker.is_file():
                continue
            base = f"{self.output_dir}/{protocol.CHECKPOINTS_DIRNAME}/{child.name}"
            files = sorted(_local_files(child), key=lambda f: f[1] == marker.name)
            for path, relative in files:  # the marker last: complete only once all is there
                self.store.put(path, f"{base}/{relative}")
            self.sent.add(int(child.name))
            done.append(int(child.name))
        return done

    def finish(self) -> bool:
        """Upload the whole folder, mirror deletions, remove the scratch copy."""
        if not self.local.is_dir():
            return True
        try:
            local = dict((rel, path) for path, rel in _local_files(self.local))
            marker = protocol.CHECKPOINT_COMPLETE_MARKER
            for relative in sorted(local, key=lambda r: r.endswith("/" + marker)):
                self.store.put(local[relative], f"{self.output_dir}/{relative}")
            stale = [r for r, _ in self.store.files(self.output_dir) if r not in local]
            for relative in stale:
                self.store.remove_object(f"{self.output_dir}/{relative}")
        except Exception:
            log.exception("uploading %s failed; its scratch copy stays", self.output_dir)
            return False
        shutil.rmtree(self.local, ignore_errors=True)
        return True


# --- what runs/storage.py hands on to the services ------------------------------------------


def _moved(value, old: str, new: str):
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def localize(run, local: Path, parent_local: Path | None) -> dict:
    """The run's config for this host. The recorded paths are those of the host that planned
    the run; a worker that does not mount that folder at the same path writes into its own
    (`local`), so the config's folders and the command's config path move there (`run.command`
    in memory only). A resumed run reads its parent's checkpoint from `parent_local`, or,
    with a store, from the parent's newest complete step downloaded into staging/<run id>."""
    config = copy.deepcopy(run.config)
    old = (config.get("output") or {}).get("dir")
    if old and old != str(local):
        for section in ("dataset", "output"):
            for name, value in (config.get(section) or {}).items():
                config[section][name] = _moved(value, old, str(local))
        run.command = [_moved(arg, old, str(local)) for arg in run.command]
    resume = config.get("resume") or {}
    if run.parent is None or not resume.get("checkpoint_dir"):
        return config
    target = parent_local / protocol.CHECKPOINTS_DIRNAME
    if artifacts():
        target = Path(settings.ARTIFACTS_DIR) / "staging" / str(run.id) / target.name
        stage_parent_checkpoint(run.parent.output_dir, target, method=run.parent.method)
    config["resume"] = {**resume, "checkpoint_dir": str(target)}
    return config


@contextlib.contextmanager
def publishing(local: Path, output_dir: str, run_id):
    if not artifacts():
        yield
        return
    try:
        with Publisher(local, output_dir):
            yield
    finally:
        shutil.rmtree(Path(settings.ARTIFACTS_DIR) / "staging" / str(run_id), ignore_errors=True)


def stored_folder_remove(relative: str) -> int:
    """Remove a run folder's objects from the store (0 without one); the bytes freed."""
    store = artifacts()
    return store.remove(relative) if store else 0


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
