"""Reads of runs shared by the API and the pages: visibility, filters, paging, the queue."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from ..errors import Forbidden, NotFound
from ..models import LogChunk, Metric, RunStatus, TunixRun


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


def runs_related_counts(run_ids: list) -> dict:
    """{run_id: {"log_chunks": n, "metrics": m}}, for a delete confirmation."""

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


def run_chain(run: TunixRun, *, limit: int = 10) -> list[TunixRun]:
    """The runs this one starts from, oldest first (base model -> run A -> run B -> run)."""
    chain, current, seen = [], run, {run.id}
    while current.base_run_id and len(chain) < limit:
        current = TunixRun.objects.filter(id=current.base_run_id).first()
        if current is None or current.id in seen:
            break
        seen.add(current.id)
        chain.append(current)
    return chain[::-1]


def run_samples(run: TunixRun, *, limit: int = 20) -> list[dict]:
    """The latest sample completions a GRPO run sent (its `sample` events), newest last."""
    events = (run.environment or {}).get("events", [])
    return [e for e in events if e.get("event") == "sample"][-limit:]
