"""Reads of runs shared by the API and the pages: visibility, filters, paging, the queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from ..errors import Conflict, Forbidden, NotFound
from ..models import LogChunk, Metric, RunKind, RunStatus, TunixRun


def runs_visible_to(user) -> QuerySet[TunixRun]:
    """Users see their own runs; staff see everyone's."""
    runs = TunixRun.objects.select_related("owner")
    return runs if user.is_staff else runs.filter(owner=user)


# The pages show 8-character ids; a prefix of at least this many hex digits finds a run.
MIN_ID_PREFIX = 6


def id_prefix_range(text: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The smallest and largest UUID that start with the hex digits of `text` (dashes
    ignored), or None when `text` is not such a prefix of at least MIN_ID_PREFIX digits.
    A range on the primary key, not a LIKE on its text, so the lookup uses the index on
    PostgreSQL (uuid) and SQLite (32 hex characters) alike."""
    digits = text.strip().replace("-", "").lower()
    if not MIN_ID_PREFIX <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def run_for_user(*, user, run_id) -> TunixRun:
    """The run by its id or by a unique prefix of it (at least MIN_ID_PREFIX hex digits,
    as the pages and the CLI show them). 404 when there is none, 409 when a prefix fits
    several of the user's runs, 403 when a full id is someone else's run."""
    runs = TunixRun.objects.select_related("owner", "dataset", "parent")
    text = str(run_id)
    try:
        run = runs.get(id=uuid.UUID(text))
    except ValueError:
        run = _run_by_prefix(runs, user=user, text=text)
    except TunixRun.DoesNotExist as exc:
        raise NotFound("No such run.") from exc
    if not user.is_staff and run.owner_id != user.id:
        raise Forbidden("This run belongs to another user.")
    return run


def _run_by_prefix(runs: QuerySet[TunixRun], *, user, text: str) -> TunixRun:
    bounds = id_prefix_range(text)
    if bounds is None:
        raise NotFound(
            f"No such run: give its id or at least {MIN_ID_PREFIX} of its first characters."
        )
    if not user.is_staff:
        runs = runs.filter(owner=user)  # a prefix only ever finds the user's own runs
    found = list(runs.filter(id__range=bounds).order_by("id")[:2])
    if not found:
        raise NotFound(f"No run's id starts with {text!r}.")
    if len(found) > 1:
        raise Conflict(
            f"More than one run's id starts with {text!r} ({found[0].id}, {found[1].id}, "
            "...): give more characters."
        )
    return found[0]


def runs_filter(
    queryset: QuerySet[TunixRun],
    *,
    status: str | None = None,
    mode: str | None = None,
    dataset_key: str | None = None,
    model_id: str | None = None,
    q: str | None = None,
    kind: str | None = RunKind.TRAIN,
) -> QuerySet[TunixRun]:
    # PostgreSQL refuses NUL in a query (a 500): no stored value holds one, so drop it.
    status, mode, dataset_key, model_id, q = (
        value.replace("\x00", "") if isinstance(value, str) else value
        for value in (status, mode, dataset_key, model_id, q)
    )
    # Evaluations and exports are runs too, listed on their run's page, not in the run list.
    if kind:
        queryset = queryset.filter(kind=kind)
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
        bounds = id_prefix_range(q)
        if bounds is not None:  # the start of a run id, as the pages show it
            text |= Q(id__range=bounds)
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


def run_children(run: TunixRun, *, user) -> list[TunixRun]:
    """The runs that continue `run` (oldest first) that `user` may see."""
    return list(runs_visible_to(user).filter(parent=run).order_by("created_at", "id")[:20])
