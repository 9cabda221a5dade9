"""Read queries shared by the API and the pages."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from .errors import Forbidden, NotFound
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
