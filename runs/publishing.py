"""The worker's side of the object store (runs/objectstore.py): a run's folder is written into
the worker's local scratch folder (TUNIXRT_ARTIFACTS_DIR) as it always was, and published to
the store; the checkpoints a run, a job or a prompt reads are staged from the store first.
Only runs/storage.py imports this module.

- Publishing: a thread uploads each checkpoint step once Orbax marks it complete, and the
  whole folder when the run ends (then the scratch copy is removed). An export's model folder
  is uploaded with its job's folder, under `model/`.
- Staging: a resumed run gets its parent's newest complete step, an evaluation or export gets
  its source run's, and the playground's server gets it when it has not loaded the model
  yet: one step, downloaded into staging/<id> under the local artifacts folder, removed when
  the run, job or prompt is done."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import stat
import threading
from pathlib import Path

from django.conf import settings

from . import protocol
from .objectstore import artifacts, run_checkpoints

log = logging.getLogger(__name__)

# Where an export's model folder goes inside its job's folder in the store.
EXPORT_PREFIX = "model"
# How often the publisher looks for newly completed checkpoint steps.
PUBLISH_POLL_SECONDS = 3.0


def staging_folder(key) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "staging" / str(key)


def stage_parent_checkpoint(
    parent_output_dir: str, target: Path, *, method: str = "sft"
) -> int | None:
    """Download a run's newest complete checkpoint step into `target/<step>`
    (`target/actor/<step>` for GRPO, where its launcher looks); the step, or None when the
    store holds no complete step of it. Only that step's objects are read."""
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


def stage_source(output_dir: str, method: str, key) -> dict | None:
    """A trained run's newest complete step staged into staging/<key>: the job config's
    `source` fields that point at it ({"checkpoint_dir", "step"}), or None when the store
    holds no complete step."""
    target = staging_folder(key) / protocol.CHECKPOINTS_DIRNAME
    step = stage_parent_checkpoint(output_dir, target, method=method)
    if step is None:
        return None
    tail = protocol.checkpoint_folder(method).split("/")[1:]
    return {"checkpoint_dir": str(target.joinpath(*tail)), "step": step}


@contextlib.contextmanager
def staged_source(output_dir: str, method: str, key):
    """stage_source for the length of a block (a playground prompt); None without a store."""
    try:
        yield stage_source(output_dir, method, key) if artifacts() else None
    finally:
        shutil.rmtree(staging_folder(key), ignore_errors=True)


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
    removed only once everything is uploaded; on an upload error it stays, and says so.
    `extra` maps a folder name inside the run's prefix to a local folder uploaded with it at
    the end and left in place (an export's model folder)."""

    def __init__(
        self,
        local: Path,
        output_dir: str,
        *,
        under: str = protocol.CHECKPOINTS_DIRNAME,
        extra: dict[str, Path] | None = None,
    ):
        self.local, self.output_dir, self.under = local, output_dir, under
        self.extra = extra or {}
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
        folder = self.local.joinpath(*self.under.split("/"))
        if not folder.is_dir():
            return []
        done = []
        for child in sorted(folder.iterdir()):
            marker = child / protocol.CHECKPOINT_COMPLETE_MARKER
            if not child.name.isdigit() or int(child.name) in self.sent or not marker.is_file():
                continue
            base = f"{self.output_dir}/{self.under}/{child.name}"
            files = sorted(_local_files(child), key=lambda f: f[1] == marker.name)
            for path, relative in files:  # the marker last: complete only once all is there
                self.store.put(path, f"{base}/{relative}")
            self.sent.add(int(child.name))
            done.append(int(child.name))
        return done

    def finish(self) -> bool:
        """Upload the whole folder (and the extra folders), mirror deletions, remove the
        scratch copy."""
        if not self.local.is_dir():
            return True
        try:
            local = {rel: path for path, rel in _local_files(self.local)}
            for name, folder in self.extra.items():
                if folder.is_dir() and not folder.is_symlink():
                    local |= {f"{name}/{rel}": path for path, rel in _local_files(folder)}
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


def _moved(value, old: str, new: str):
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def localize(run, local: Path, parent_local: Path | None) -> dict:
    """The run's config for this host. The recorded paths are those of the host that planned
    the run; a worker that does not mount that folder at the same path writes into its own
    (`local`), so the config's folders and the command's config path move there (`run.command`
    in memory only). With a store, what the run reads from another run's folder is staged
    into staging/<run id> first: a resumed run's parent checkpoint, a job's source
    checkpoint (the newest complete step, which the job would load)."""
    config = copy.deepcopy(run.config)
    old = (config.get("output") or {}).get("dir")
    if old and old != str(local):
        for section in ("dataset", "output"):
            for name, value in (config.get(section) or {}).items():
                config[section][name] = _moved(value, old, str(local))
        run.command = [_moved(arg, old, str(local)) for arg in run.command]
    try:
        if isinstance(config.get("source"), dict) and run.source is not None and artifacts():
            staged = stage_source(run.source.output_dir, run.source.method, run.id)
            config["source"] |= staged or {}
        resume = config.get("resume") or {}
        if run.parent is None or not resume.get("checkpoint_dir"):
            return config
        target = parent_local / protocol.CHECKPOINTS_DIRNAME
        if artifacts():
            target = staging_folder(run.id) / target.name
            stage_parent_checkpoint(run.parent.output_dir, target, method=run.parent.method)
    except Exception as exc:  # the store is away or refuses: the run fails to prepare
        shutil.rmtree(staging_folder(run.id), ignore_errors=True)
        raise OSError(f"reading a checkpoint from the object store failed: {exc}") from exc
    config["resume"] = {**resume, "checkpoint_dir": str(target)}
    return config


@contextlib.contextmanager
def publishing(
    local: Path, output_dir: str, run_id, *, under: str, extra: dict[str, Path] | None = None
):
    if not artifacts():
        yield
        return
    try:
        with Publisher(local, output_dir, under=under, extra=extra):
            yield
    finally:
        shutil.rmtree(staging_folder(run_id), ignore_errors=True)
