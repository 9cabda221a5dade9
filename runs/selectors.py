"""Read queries shared by the API and the pages."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from . import datasets, tunix
from .errors import Conflict, Forbidden, InvalidInput, NotFound
from .models import Dataset, RunStatus, TunixRun


def runs_visible_to(user) -> QuerySet[TunixRun]:
    """Users see their own runs; staff see everyone's."""
    runs = TunixRun.objects.select_related("owner")
    return runs if user.is_staff else runs.filter(owner=user)


def run_for_user(*, user, run_id) -> TunixRun:
    """The run, 404 when there is none, 403 when it is someone else's."""
    try:
        run = TunixRun.objects.select_related("owner", "dataset", "parent").get(
            id=uuid.UUID(str(run_id))
        )
    except (TunixRun.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound("No such run.") from exc
    if not user.is_staff and run.owner_id != user.id:
        raise Forbidden("This run belongs to another user.")
    return run


def runs_filter(
    queryset: QuerySet[TunixRun],
    *,
    status: str | None = None,
    mode: str | None = None,
    dataset_key: str | None = None,
    model_id: str | None = None,
    q: str | None = None,
) -> QuerySet[TunixRun]:
    if status:
        queryset = queryset.filter(status=status)
    if mode:
        queryset = queryset.filter(mode=mode)
    if dataset_key:
        queryset = queryset.filter(dataset_key=dataset_key)
    if model_id:
        queryset = queryset.filter(model_id=model_id)
    if q:
        q = q.strip()[:100]
        text = Q(name__icontains=q) | Q(model_id__icontains=q) | Q(dataset_key__icontains=q)
        text |= Q(message__icontains=q)
        with contextlib.suppress(ValueError):
            text |= Q(id=uuid.UUID(q))
        queryset = queryset.filter(text)
    return queryset.order_by("-created_at", "-id")


@dataclass
class Page:
    items: list
    count: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.count // self.page_size))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    def as_dict(self) -> dict:
        """The shape of every paged API answer."""
        return {
            "items": self.items,
            "count": self.count,
            "page": self.page,
            "page_size": self.page_size,
            "pages": self.pages,
        }


def paginate(queryset: QuerySet, *, page: int = 1, page_size: int = 25) -> Page:
    page = max(1, page)
    page_size = max(1, min(page_size, 200))
    offset = (page - 1) * page_size
    return Page(list(queryset[offset : offset + page_size]), queryset.count(), page, page_size)


def queue_position(run: TunixRun) -> int | None:
    """1 for the next pending local run to start, 2 for the one after, and so on."""
    if run.status != RunStatus.PENDING:
        return None
    ahead = TunixRun.objects.filter(
        status=RunStatus.PENDING, mode=run.mode, created_at__lt=run.created_at
    ).count()
    return ahead + 1


def datasets_all() -> QuerySet[Dataset]:
    return Dataset.objects.order_by("name", "version")


def run_log_chunks(run: TunixRun, *, after: int = 0, limit: int = 500) -> list:
    """Chunks after sequence number `after`, oldest first (the log-follow query)."""
    from .models import LogChunk

    return list(
        LogChunk.objects.filter(run=run, seq__gt=after)
        .order_by("seq")
        .values("seq", "stream", "text")[:limit]
    )


def run_log_text(run: TunixRun):
    """The whole stored log, streamed chunk by chunk."""
    from .models import LogChunk

    chunks = LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True)
    return chunks.iterator(chunk_size=200)


def run_metric_series(run: TunixRun) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} ordered by step."""
    from .models import Metric

    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in (
        Metric.objects.filter(run=run).order_by("name", "step").values_list("name", "step", "value")
    ):
        series.setdefault(name, []).append((step, value))
    return series


def run_output_files(run: TunixRun, *, limit: int = 2000) -> list[dict]:
    """Files under the run's folder (relative paths, sizes); symlinks are not followed."""
    from . import services

    try:
        root = services.run_output_path(run)
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
    from . import services
    from .paths import READ_SEGMENT_RE, UnsafePath, safe_relative

    try:
        root = services.run_output_path(run)
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
    import tarfile

    from . import services

    root = services.run_output_path(run)
    spool = _Spool()
    with tarfile.open(fileobj=spool, mode="w|gz") as archive:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                archive.add(path, arcname=f"{root.name}/{path.relative_to(root)}", recursive=False)
                yield spool.take()
    yield spool.take()


# --- pages ------------------------------------------------------------------------------


def run_log_tail(run: TunixRun, *, limit: int = 500) -> tuple[list, bool]:
    """The newest `limit` chunks, oldest first, and whether earlier chunks exist (the run
    page opens on the tail; the full log is a download)."""
    from .models import LogChunk

    newest = list(
        LogChunk.objects.filter(run=run).order_by("-seq").values("seq", "stream", "text")[:limit]
    )
    newest.reverse()
    earlier = bool(newest) and LogChunk.objects.filter(run=run, seq__lt=newest[0]["seq"]).exists()
    return newest, earlier


def run_metric_count(run: TunixRun) -> int:
    """How many metric points a run has: the run page redraws its chart when this changes."""
    from .models import Metric

    return Metric.objects.filter(run=run).count()


def run_filter_options(queryset: QuerySet[TunixRun], *, limit: int = 200) -> dict[str, list]:
    """Dataset keys and model ids that occur among `queryset`, for the run list's filters."""
    return {
        "datasets": list(
            queryset.order_by("dataset_key")
            .values_list("dataset_key", flat=True)
            .distinct()[:limit]
        ),
        "models": list(
            queryset.order_by("model_id").values_list("model_id", flat=True).distinct()[:limit]
        ),
    }


def runs_for_compare(*, user, run_ids: list[str], limit: int = 10) -> tuple[list, list[str]]:
    """The runs to compare, in the order given, and a message for each id that is unknown or
    not visible to `user`. Duplicates are dropped."""
    runs, problems, seen = [], [], set()
    for run_id in run_ids:
        if run_id in seen:
            continue
        seen.add(run_id)
        if len(runs) >= limit:
            problems.append(f"At most {limit} runs can be compared at once.")
            break
        try:
            runs.append(run_for_user(user=user, run_id=run_id))
        except (NotFound, Forbidden):
            problems.append(f"Run {str(run_id)[:40]} was not found.")
    return runs, problems


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def run_comparison(runs: list[TunixRun], metrics: list[dict] | None = None) -> list[dict]:
    """Rows of a side-by-side table: the run's inputs and outcome, then every config key
    (flattened, `training.learning_rate`), each with one value per run and whether the
    values differ. `metrics` (run_metric_series of each run) is read when not given."""
    summaries = []
    for index, run in enumerate(runs):
        series = metrics[index] if metrics is not None else run_metric_series(run)
        summary = {
            "status": run.status,
            "mode": run.mode,
            "model_id": run.model_id,
            "dataset_key": run.dataset_key,
            "created_at": run.created_at.isoformat(timespec="seconds"),
            "duration_seconds": run.duration_seconds,
            "exit_code": run.exit_code,
            "steps": run.progress_step,
            "final train/loss": series["train/loss"][-1][1] if series.get("train/loss") else None,
            "final eval/loss": series["eval/loss"][-1][1] if series.get("eval/loss") else None,
        }
        config = {k: v for k, v in (run.config or {}).items() if k != "schema"}
        summary.update({f"config.{k}": v for k, v in _flatten(config).items()})
        summaries.append(summary)
    keys: list[str] = []
    for summary in summaries:
        keys.extend(k for k in summary if k not in keys)
    rows = []
    missing = object()
    for key in keys:
        values = [summary.get(key, missing) for summary in summaries]
        rows.append(
            {
                "key": key,
                "values": [None if v is missing else v for v in values],
                "differs": any(v != values[0] for v in values[1:]),
            }
        )
    return rows


# --- datasets ---------------------------------------------------------------------------


def dataset_get(key: str) -> Dataset:
    """The dataset by key (looked up, never joined into a path), or NotFound."""
    key = str(key)[:160]
    dataset = None
    if "\x00" not in key:  # PostgreSQL refuses NUL in a query; no key holds one
        dataset = (
            Dataset.objects.select_related("owner")
            .annotate(run_count=Count("tunixrun"))
            .filter(key=key)
            .first()
        )
    if dataset is None:
        raise NotFound(f"No dataset '{key}'.")
    return dataset


def datasets_list(*, q: str | None = None, format: str | None = None) -> QuerySet[Dataset]:
    """Datasets by name and version, each with the number of runs that use it."""
    datasets = Dataset.objects.select_related("owner").annotate(run_count=Count("tunixrun"))
    if format:
        datasets = datasets.filter(format=format)
    if q:
        q = q.replace("\x00", "").strip()[:100]
        datasets = datasets.filter(Q(key__icontains=q) | Q(description__icontains=q))
    return datasets.order_by("name", "version")


def dataset_choices() -> list[tuple[str, str]]:
    """(key, label) pairs for the run form's dataset field:
    ("sample-v1", "sample-v1 (240 rows, Reasoning traces)")."""
    return [
        (key, f"{key} ({rows} row{'s' if rows != 1 else ''}, {dict(Dataset.Format.choices)[fmt]})")
        for key, rows, fmt in datasets_all().values_list("key", "row_count", "format")
    ]


def dataset_file(dataset: Dataset) -> Path:
    """The stored file of a dataset; Conflict when it has gone missing."""
    from . import services
    from .paths import UnsafePath

    try:
        path = services.dataset_path(dataset)
    except UnsafePath:
        path = None
    if path is None or not path.is_file():
        raise Conflict(f"The file of dataset {dataset.key} is missing from the datasets folder.")
    return path


@contextlib.contextmanager
def _reading(dataset: Dataset):
    """Turn a stored file that no longer parses (edited after import) into Conflict."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as exc:
        raise Conflict(
            f"The file of dataset {dataset.key} changed since it was imported "
            f"({type(exc).__name__}); import it again as a new version."
        ) from exc


def dataset_target(
    *, family: str | None = None, model_id: str | None = None
) -> tuple[str, tunix.ModelRef | None]:
    """The family whose chat template renders the rows, and the model (if one was named)
    whose tokenizer counts them. A named model decides the family."""
    if model_id:
        try:
            model = tunix.parse_model_ref(model_id)
        except tunix.ModelRefError as exc:
            raise InvalidInput(str(exc), fields={"model_id": str(exc)}) from exc
        return model.family, model
    if family and family not in tunix.SUPPORTED_FAMILIES:
        message = f"Must be one of: {', '.join(tunix.SUPPORTED_FAMILIES)}."
        raise InvalidInput("Unknown model family.", fields={"family": message})
    return family or tunix.SUPPORTED_FAMILIES[0], None


def dataset_preview_rows(dataset: Dataset, *, family: str, limit: int = 5) -> list[dict]:
    """The first rows as stored and as the exact training text (prompt masked)."""
    rows = []
    with _reading(dataset):
        for line, row in datasets.iter_numbered_rows(dataset_file(dataset)):
            rendered = datasets.render_row(row, dataset.format, family)
            rows.append({"line": line, "data": row, **rendered})
            if len(rows) >= limit:
                break
    return rows


def dataset_rendered_lines(dataset: Dataset, *, family: str) -> Iterator[str]:
    """The training JSONL of `dataset` for `family`, streamed: byte for byte what
    services.dataset_render_to writes for the launcher."""
    return datasets.rendered_lines(
        datasets.iter_rows(dataset_file(dataset)), dataset.format, family
    )


_tokenizers: OrderedDict[tuple, Any] = OrderedDict()
_length_stats: OrderedDict[tuple, datasets.LengthStats] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(cache: OrderedDict, key: tuple, make, size: int):
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _cache_lock:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


def model_tokenizer(model: tunix.ModelRef | None) -> tuple[Any, str]:
    """(tokenizer or None, how lengths are counted, in words). Only a local model's
    tokenizer.json is used, and only when the `tokenizers` package is importable here (it
    comes with the tunix extra; the web process never imports Tunix or JAX)."""
    if model is None:
        return None, "Counted in characters: no model chosen, so no tokenizer."
    if model.source != "local":
        return None, (
            f"Counted in characters: {model.model_id} is not a local model, so its "
            "tokenizer is not on this machine."
        )
    path = Path(model.path) / "tokenizer.json"
    try:
        stat = path.stat()
    except OSError:
        return None, f"Counted in characters: {model.model_id} has no tokenizer.json."
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None, (
            "Counted in characters: the tokenizers package is not installed for the web "
            "process (it comes with the tunix extra)."
        )
    try:
        tokenizer = _cached(
            _tokenizers,
            (str(path), stat.st_mtime_ns, stat.st_size),
            lambda: Tokenizer.from_file(str(path)),
            size=4,
        )
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        return None, (
            f"Counted in characters: the tokenizer of {model.model_id} cannot be loaded "
            f"({str(exc)[:200]})."
        )
    return tokenizer, f"Counted in tokens with the tokenizer of {model.model_id}."


def dataset_length_stats(
    dataset: Dataset, *, family: str, model: tunix.ModelRef | None = None
) -> tuple[datasets.LengthStats, str]:
    """Lengths of every rendered row, in tokens when the model's tokenizer is available,
    else in characters; (stats, how they were counted). One streaming pass over the file,
    remembered per file hash, template and tokenizer, so changing max_seq_length is free."""
    tokenizer, note = model_tokenizer(model)
    tokenizer_key = None
    every = 1
    if tokenizer is not None:
        stat = (Path(model.path) / "tokenizer.json").stat()
        tokenizer_key = (model.path, stat.st_mtime_ns, stat.st_size)
        # Tokenizing runs at thousands of rows a second, not hundreds of thousands: past a
        # bound, an evenly spaced sample keeps a page or a dry-run to seconds.
        every = max(1, -(-dataset.row_count // max(1, settings.DATASET_STATS_MAX_TOKENIZED_ROWS)))

    def measure() -> datasets.LengthStats:
        rows = datasets.iter_rows(dataset_file(dataset))
        with _reading(dataset):
            if tokenizer is None:
                return datasets.measure_lengths(rows, dataset.format, family)
            return datasets.measure_lengths(
                rows,
                dataset.format,
                family,
                count=datasets.token_counter(tokenizer),
                unit="tokens",
                every=every,
            )

    key = (dataset.pk, dataset.sha256, dataset.format, family, tokenizer_key, every)
    return _cached(_length_stats, key, measure, size=32), note


def dataset_truncation(
    dataset: Dataset,
    *,
    family: str,
    model: tunix.ModelRef | None = None,
    max_seq_length: int,
    bins: int = 20,
) -> dict[str, Any]:
    """Statistics of the rendered rows at `max_seq_length`: how many the launcher would
    truncate (longer than it) and drop (the prompt alone fills it), the length
    distribution and a histogram, with the unit they are counted in."""
    stats, note = dataset_length_stats(dataset, family=family, model=model)
    truncated, dropped = stats.truncated(max_seq_length), stats.dropped(max_seq_length)
    share = truncated / stats.rows if stats.rows else 0.0
    rows = stats.rows
    if stats.every > 1:
        # A sample: scale to the whole file, and say so.
        rows = dataset.row_count
        note += f" Estimated from every {ordinal(stats.every)} row ({stats.rows} rows tokenized)."
        truncated = round(share * rows)
        dropped = round(dropped / stats.rows * rows) if stats.rows else 0
    return {
        "rows": rows,
        "measured_rows": stats.rows,
        "unit": stats.unit,
        "counted_with": note,
        "family": family,
        "max_seq_length": max_seq_length,
        "truncated_rows": truncated,
        "truncated_share": round(share, 4),
        "dropped_rows": dropped,
        "min": min(stats.totals) if stats.rows else 0,
        "median": stats.percentile(0.5),
        "p95": stats.percentile(0.95),
        "max": max(stats.totals) if stats.rows else 0,
        "histogram": [
            {"start": start, "end": end, "count": count}
            for start, end, count in stats.histogram(bins)
        ],
    }


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def truncation_sentence(figures: dict[str, Any]) -> str:
    """'3 of 240 rows (1.2%) would be truncated at max_seq_length=512 (characters) ...'."""
    rows, truncated = figures["rows"], figures["truncated_rows"]
    sentence = (
        f"{truncated} of {rows} rows ({100 * figures['truncated_share']:.1f}%) would be "
        f"truncated at max_seq_length={figures['max_seq_length']} ({figures['unit']})"
    )
    if figures["dropped_rows"]:
        dropped = figures["dropped_rows"]
        sentence += (
            f", and {dropped} of them dropped because the prompt alone fills it"
            if dropped != 1
            else ", and 1 of them dropped because its prompt alone fills it"
        )
    return f"{sentence}. {figures['counted_with']}"


def run_log_excerpt(run: TunixRun, *, head_chars: int = 8000, tail_chars: int = 8000) -> dict:
    """The beginning and the end of a run's stored log, for a summary (the admin detail).
    Reads only the chunks it needs from each end, however long the log is. Returns
    {"head", "tail", "omitted", "total_chunks"}: "omitted" says what lies between head and
    tail ("" when the head is the whole log and the tail is empty)."""
    from .models import LogChunk

    chunks = LogChunk.objects.filter(run=run)
    total = chunks.count()
    first = _chunks_up_to(chunks.order_by("seq"), head_chars)
    last = _chunks_up_to(chunks.order_by("-seq"), tail_chars)
    seen = dict(first + last)
    if len(seen) == total:
        whole = "".join(seen[seq] for seq in sorted(seen))
        if len(whole) <= head_chars + tail_chars:
            return {"head": whole, "tail": "", "omitted": "", "total_chunks": total}
        gap = len(whole) - head_chars - tail_chars
        return {
            "head": whole[:head_chars],
            "tail": whole[-tail_chars:],
            "omitted": f"{gap} characters",
            "total_chunks": total,
        }
    return {
        "head": "".join(text for _, text in first)[:head_chars],
        "tail": "".join(text for _, text in reversed(last))[-tail_chars:],
        "omitted": f"{total - len(seen)} chunks and the cut parts of others",
        "total_chunks": total,
    }


def _chunks_up_to(ordered, chars: int, *, most: int = 200) -> list[tuple[int, str]]:
    taken, size = [], 0
    for seq, text in ordered.values_list("seq", "text")[:most]:
        taken.append((seq, text))
        size += len(text)
        if size >= chars:
            break
    return taken


def run_metric_summary(run: TunixRun) -> list[dict]:
    """Per metric name: how many points, the step range, min, max and the last value."""
    from django.db.models import Count, Max, Min

    from .models import Metric

    rows = list(
        Metric.objects.filter(run=run)
        .values("name")
        .annotate(
            points=Count("id"),
            first_step=Min("step"),
            last_step=Max("step"),
            min=Min("value"),
            max=Max("value"),
        )
        .order_by("name")
    )
    for row in rows:
        row["last"] = (
            Metric.objects.filter(run=run, name=row["name"], step=row["last_step"])
            .values_list("value", flat=True)
            .first()
        )
    return rows


def runs_related_counts(run_ids: list) -> dict:
    """{run_id: {"log_chunks": n, "metrics": m}}, for a delete confirmation."""
    from django.db.models import Count

    from .models import LogChunk, Metric

    counts = {run_id: {"log_chunks": 0, "metrics": 0} for run_id in run_ids}
    for model, key in ((LogChunk, "log_chunks"), (Metric, "metrics")):
        for run_id, number in (
            model.objects.filter(run_id__in=run_ids)
            .values("run_id")
            .annotate(number=Count("id"))
            .values_list("run_id", "number")
        ):
            counts[run_id][key] = number
    return counts


def run_folder_size(run: TunixRun) -> int:
    """Bytes of the regular files in the run's folder (0 when it has none)."""
    from . import services
    from .paths import UnsafePath
    from .retention import folder_size

    try:
        path = services.run_output_path(run)
    except UnsafePath:
        return 0
    return folder_size(path) if path.is_dir() else 0
