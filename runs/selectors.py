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
