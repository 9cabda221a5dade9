"""Every state change of datasets: import (validate, hash, store), delete; and the reads of a
stored file that the run services need (check, render for the launcher)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Q

from .. import storage
from ..errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from ..formatting import human_bytes
from ..models import ACTIVE_STATUSES, FINAL_STATUSES, Dataset, RunMode, TunixRun
from ..storage import UnsafePath, is_safe_segment, safe_relative
from . import rendering, validation


def _check_import_fields(name, version, declared_format, description) -> None:
    fields = {}
    if not is_safe_segment(name) or len(name) > 100:
        fields["name"] = (
            "Use 1-100 letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    if not is_safe_segment(version) or len(version) > 50:
        fields["version"] = (
            "Use 1-50 letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    if declared_format not in (None, "", *validation.FORMATS):
        fields["format"] = f"Must be one of: {', '.join(validation.FORMATS)}."
    if not isinstance(description, str) or len(description) > 2000:
        fields["description"] = "At most 2000 characters."
    elif "\x00" in description:  # PostgreSQL text cannot hold NUL
        fields["description"] = "Must not contain NUL characters."
    if fields:
        raise InvalidInput("The dataset name, version or format is not valid.", fields=fields)


def dataset_import_check(
    *, name: str, version: str, declared_format: str | None = None, description: str = ""
) -> None:
    """What an import would refuse before reading any of its file: bad fields (422) or an
    existing name-version (409). The upload page asks this as the user types; the import
    asks it again (and the unique constraint has the last word on a race)."""
    _check_import_fields(name, version, declared_format, description)
    key = f"{name}-{version}"
    if Dataset.objects.filter(Q(key=key) | Q(name=name, version=version)).exists():
        raise Conflict(
            f"Dataset {key} already exists; versions are immutable.",
            fields={"version": f"{key} already exists: choose another version or name."},
        )


def dataset_import(
    *,
    source: IO[bytes] | Iterable[bytes],
    name: str,
    version: str,
    owner=None,
    declared_format: str | None = None,
    description: str = "",
    shared: bool = False,
) -> Dataset:
    """Validate a JSONL stream and register it as dataset `name-version`.

    The bytes are validated, hashed and copied to a temporary file in one streaming pass;
    only a valid file is moved into place, and a rejected one leaves nothing behind (no
    row, no file, no folder). Errors name the line and the field (422); a file over
    DATASET_MAX_BYTES is 413; an existing key is 409 (versions are immutable).
    """
    name = name.strip() if isinstance(name, str) else name
    version = version.strip() if isinstance(version, str) else version
    dataset_import_check(
        name=name, version=version, declared_format=declared_format, description=description
    )
    key = f"{name}-{version}"

    root = Path(settings.DATASETS_DIR).resolve()
    final_path = safe_relative(root, f"{name}/{version}.jsonl")
    chunks = validation.read_chunks(source) if hasattr(source, "read") else source
    return _store(
        chunks,
        root=root,
        final_path=final_path,
        declared_format=declared_format,
        row={
            "key": key,
            "name": name,
            "version": version,
            "owner": owner,
            "description": description,
            "shared": bool(shared),
        },
    )


def _store(chunks, *, root: Path, final_path: Path, declared_format, row: dict) -> Dataset:
    """Validate, hash and copy in one streaming pass; only a valid file is moved into place
    and recorded, and a rejected one leaves nothing behind."""
    # In the root, not the dataset's folder, so a rejected file leaves no empty folder;
    # same filesystem, so the final move is an atomic rename. delete=False because a
    # valid file is renamed; the `with handle` closes it.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=root, prefix=".import-", suffix=".part", delete=False
    )
    tmp_path = Path(handle.name)
    created_folder = False
    try:
        with handle:
            report = validation.validate_stream(
                chunks,
                declared_format=declared_format or None,
                max_bytes=settings.DATASET_MAX_BYTES,
                max_line_bytes=settings.DATASET_MAX_LINE_BYTES,
                sink=handle,
            )
        _refuse_rejected(report)
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(
                    **row,
                    format=report.format,
                    file_path=str(final_path.relative_to(root)),
                    row_count=report.rows,
                    size_bytes=report.size_bytes,
                    sha256=report.sha256,
                )
                if not final_path.parent.exists():
                    final_path.parent.mkdir(mode=0o700)
                    created_folder = True
                os.replace(tmp_path, final_path)
                # With a datasets store the worker reads it from there; a failed upload
                # rolls the row back (and the file is removed below).
                storage.dataset_publish(final_path, str(final_path.relative_to(root)))
        except IntegrityError as exc:
            # Another import of the same key committed between our check and our insert.
            raise Conflict(f"Dataset {row['key']} already exists; versions are immutable.") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        if created_folder:
            final_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                final_path.parent.rmdir()
        raise
    return dataset


def _refuse_rejected(report: validation.ValidationReport) -> None:
    if report.too_large:
        limit = human_bytes(settings.DATASET_MAX_BYTES)
        raise PayloadTooLarge(
            f"The file is larger than the dataset limit of {limit}.",
            fields={"file": f"Larger than the limit of {limit}."},
        )
    if not report.ok:
        raise InvalidInput(
            f"Dataset rejected: {report.summary()}", fields={"file": report.details()}
        )


def dataset_delete(*, dataset: Dataset, user) -> None:
    """Delete a dataset: its row, then (once that has committed) its file.

    Only its owner or staff may; refused (409) while a local run refers to it, since a
    rerun or a pending run would need the file. A finished dry-run holds no file and does
    not block it. Runs keep the key and hash either way.
    """
    _check_owner(dataset, user, "delete it")
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if locked is None:
            raise NotFound("No such dataset.")
        runs = TunixRun.objects.filter(dataset=locked).exclude(
            mode=RunMode.DRY_RUN, status__in=FINAL_STATUSES
        )
        used = runs.count()
        if used:
            active = runs.filter(status__in=ACTIVE_STATUSES).count()
            detail = f", {active} of them active" if active else ""
            raise Conflict(
                f"Dataset {locked.key} is used by {used} run{'s' if used != 1 else ''}{detail}; "
                "delete those runs first."
            )
        try:
            path = storage.dataset_path(locked)
        except UnsafePath:
            path = None
        dataset_id = locked.pk  # delete() clears it
        locked.delete()

        def remove_file() -> None:
            _check_forget(dataset_id)
            if path is None:
                return
            storage.dataset_unpublish(locked.file_path)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when no other version is left in it

        transaction.on_commit(remove_file)


def _check_owner(dataset: Dataset, user, action: str) -> None:
    if not (user.is_staff or (dataset.owner_id is not None and dataset.owner_id == user.id)):
        raise Forbidden(f"Only the dataset's owner or staff can {action}.")


def dataset_set_shared(*, dataset: Dataset, user, shared: bool) -> Dataset:
    """Share a dataset with every user, or make it private to its owner (and staff) again.
    Runs that already used it keep working; new runs need to see it."""
    _check_owner(dataset, user, "share it")
    Dataset.objects.filter(pk=dataset.pk).update(shared=bool(shared))
    dataset.shared = bool(shared)
    return dataset


# A stored dataset never changes (versions are immutable), so its check is remembered.
_CHECK_CACHE_SECONDS = 7 * 24 * 3600


def _check_cache_key(dataset: Dataset, stat: os.stat_result) -> str:
    # The hash names the content; size and modification time notice a file changed on disk
    # behind the app's back without reading it again.
    return f"tunixrt:dataset-check:{dataset.pk}:{dataset.sha256}:{stat.st_size}:{stat.st_mtime_ns}"


def dataset_check(dataset: Dataset) -> validation.ValidationReport:
    """Re-read a stored dataset: does it still exist, hash the same and hold valid rows?

    The answer is remembered by (dataset, sha256, file size and mtime) in Django's cache, so
    a dry-run re-reads a file once, not on every run; deleting the dataset forgets it."""
    path = storage.dataset_local(dataset)
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        report = validation.ValidationReport(format=dataset.format)
        report.errors.append(f"the file of dataset {dataset.key} is missing")
        report.error_count = 1
        return report
    key = _check_cache_key(dataset, stat)
    cached = cache.get(key)
    if cached is not None:
        return cached
    with open(path, "rb") as handle:
        report = validation.validate_stream(
            validation.read_chunks(handle),
            declared_format=dataset.format,
            max_bytes=max(settings.DATASET_MAX_BYTES, dataset.size_bytes),
            max_line_bytes=settings.DATASET_MAX_LINE_BYTES,
        )
    if report.ok and report.sha256 != dataset.sha256:
        report.errors.append(f"the file of dataset {dataset.key} changed since it was imported")
        report.error_count += 1
    cache.set(key, report, timeout=_CHECK_CACHE_SECONDS)
    cache.set(f"tunixrt:dataset-check-key:{dataset.pk}", key, timeout=_CHECK_CACHE_SECONDS)
    return report


def _check_forget(dataset_id) -> None:
    key = cache.get(f"tunixrt:dataset-check-key:{dataset_id}")
    if key:
        cache.delete_many([key, f"tunixrt:dataset-check-key:{dataset_id}"])


def dataset_render_to(dataset: Dataset, family: str, target: Path, method: str = "sft") -> int:
    """Write the training file the launcher reads. SFT: each row as a conversation, which
    the launcher renders with the checkpoint's chat template or `family`'s built-in one (the
    dataset page's export shows that text for the built-in template). DPO/ORPO and GRPO: the
    rows rendered here with the built-in template, {prompt, chosen, rejected} and
    {prompt, answer}."""
    rows = validation.iter_rows(storage.dataset_local(dataset))
    if method == "sft":
        lines = rendering.training_lines(rows, dataset.format)
    else:
        lines = rendering.rendered_lines(rows, dataset.format, family, method=method)
    count = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private from creation
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line)
            count += 1
    return count
