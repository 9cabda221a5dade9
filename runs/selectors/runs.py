"""Reads of runs shared by the API and the pages: visibility, filters, paging, the queue."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery

from ..errors import Conflict, Forbidden, InvalidInput, NotFound
from ..models import LogChunk, Metric, RunKind, RunMode, RunStatus, TunixRun

# What a list row shows. The big JSON columns (config, command, environment) and the
# message stay in the database: a list page of 50 runs is a few KB, not 150.
LIST_COLUMNS = (
    "id",
    "owner_id",
    "owner__username",
    "name",
    "status",
    "mode",
    "dataset_key",
    "model_id",
    "created_at",
    "started_at",
    "finished_at",
    "phase",
    "progress_step",
    "progress_total",
    "pinned",
)
LIST_VALUES = (*(c for c in LIST_COLUMNS if c != "owner_id"), "final_loss")
# Past this many matches a list says "more than N" instead of counting them all: the count
# reads at most N+1 index entries, whatever the table's size.
COUNT_CAP = 1000
# Page numbers (offset paging) still work this deep; further, follow `next_cursor`.
MAX_OFFSET = 10_000


def database_reachable() -> bool:
    """One round trip to the database (readiness)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except DatabaseError:
        return False


def runs_visible_to(user) -> QuerySet[TunixRun]:
    """Users see their own runs; staff see everyone's."""
    runs = TunixRun.objects.select_related("owner")
    return runs if user.is_staff else runs.filter(owner=user)


def runs_to_start_from(user, *, model_id: str = "", limit: int = 50) -> list[TunixRun]:
    """The user's completed local LoRA training runs, newest first, of `model_id` when
    given: what the run form offers to start from (the service checks the checkpoint)."""
    runs = TunixRun.objects.filter(
        owner=user,
        kind=RunKind.TRAIN,
        mode=RunMode.LOCAL,
        status=RunStatus.COMPLETED,
        lora_rank__gt=0,
    )
    if model_id:
        runs = runs.filter(model_id=model_id)
    return list(
        runs.order_by("-created_at").only("id", "name", "method", "model_id", "max_steps")[:limit]
    )


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


def run_for_user(*, user, run_id, related=("owner", "dataset", "parent"), columns=None) -> TunixRun:
    """The run by its id or by a unique prefix of it (at least MIN_ID_PREFIX hex digits,
    as the pages and the CLI show them). 404 when there is none, 409 when a prefix fits
    several of the user's runs, 403 when a full id is someone else's run. `related` rows
    are joined; `columns` limits what is read (the others load on first access)."""
    runs = TunixRun.objects.select_related(*related)
    if columns:
        runs = runs.only(*columns)
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


def runs_for_list(queryset: QuerySet[TunixRun]) -> QuerySet[TunixRun]:
    """Only the columns a list shows, with the last train/loss reported (one index probe per
    row on metric_run_name_step, read backwards)."""
    last_loss = (
        Metric.objects.filter(run=OuterRef("pk"), name="train/loss")
        .order_by("-step")
        .values("value")[:1]
    )
    return queryset.only(*LIST_COLUMNS).annotate(final_loss=Subquery(last_loss))


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


def count_capped(queryset: QuerySet, *, cap: int) -> tuple[int, bool]:
    """(count, exact): the exact count up to `cap`, else (cap, False), "more than cap".
    SELECT count(*) FROM (... LIMIT cap + 1): never reads more than cap + 1 rows."""
    found = queryset.order_by()[: cap + 1].count()
    return (found, True) if found <= cap else (cap, False)


def _position(item) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) of a run or of a row from .values()."""
    if isinstance(item, dict):
        return item["created_at"], item["id"]
    return item.created_at, item.id


def cursor_encode(item) -> str:
    """An opaque position in the newest-first order: (created_at, id) of a run."""
    created_at, run_id = _position(item)
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str, *, field: str = "cursor") -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, run_id = raw.split("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, uuid.UUID(run_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "Not a cursor of this list.", fields={field: "Not a cursor of this list."}
        ) from exc


@dataclass
class RunPage:
    """One page of a run list in newest-first order. `next_cursor` leads to older runs,
    `prev_cursor` to newer ones (None at either end). `page` is set for offset paging."""

    items: list
    page_size: int
    count: int
    count_exact: bool
    next_cursor: str | None = None
    prev_cursor: str | None = None
    page: int | None = None

    @property
    def pages(self) -> int | None:
        if not self.count_exact or self.page is None:
            return None
        return max(1, -(-self.count // self.page_size))

    def as_dict(self) -> dict:
        return {
            "items": self.items,
            "count": self.count,
            "count_exact": self.count_exact,
            "next_cursor": self.next_cursor,
            "prev_cursor": self.prev_cursor,
            "page": self.page,
            "page_size": self.page_size,
            "pages": self.pages,
        }


def _older(when: datetime, run_id: uuid.UUID) -> Q:
    # (created_at, id) < (when, run_id). `created_at <= when` is the index range condition
    # (a row comparison written as OR would be a filter on every row from the top).
    return Q(created_at__lte=when) & (Q(created_at__lt=when) | Q(id__lt=run_id))


def _newer(when: datetime, run_id: uuid.UUID) -> Q:
    return Q(created_at__gte=when) & (Q(created_at__gt=when) | Q(id__gt=run_id))


def runs_page(
    queryset: QuerySet[TunixRun],
    *,
    page_size: int = 25,
    cursor: str | None = None,
    before: str | None = None,
    page: int = 1,
    rows: bool = False,
) -> RunPage:
    """A page of `queryset` (newest first): after `cursor` (older runs), before `before`
    (newer runs), or by page number (offset, for small offsets). Keyset pages cost the same
    at any depth; the count is capped (see count_capped). `rows`: items are dicts of
    LIST_VALUES instead of model instances (no model or getter overhead, for the API)."""
    count, exact = count_capped(queryset, cap=COUNT_CAP)
    listed = runs_for_list(queryset)
    if rows:
        listed = listed.values(*LIST_VALUES)
    result = RunPage(items=[], page_size=page_size, count=count, count_exact=exact)
    if cursor:
        rows = list(listed.filter(_older(*cursor_decode(cursor)))[: page_size + 1])
        result.items = rows[:page_size]
        more_newer = bool(result.items) and queryset.filter(_newer_than(result.items[0])).exists()
        more_older = len(rows) > page_size
    elif before:
        rows = list(
            listed.filter(_newer(*cursor_decode(before, field="before"))).order_by(
                "created_at", "id"
            )[: page_size + 1]
        )
        result.items = rows[:page_size][::-1]
        more_newer = len(rows) > page_size
        more_older = bool(result.items) and queryset.filter(_older_than(result.items[-1])).exists()
    else:
        offset = (page - 1) * page_size
        if offset > MAX_OFFSET:
            message = f"Page numbers reach {MAX_OFFSET} runs deep; follow next_cursor instead."
            raise InvalidInput(message, fields={"page": message})
        rows = list(listed[offset : offset + page_size + 1])
        result.items, result.page = rows[:page_size], page
        more_newer, more_older = page > 1, len(rows) > page_size
    if result.items and more_older:
        result.next_cursor = cursor_encode(result.items[-1])
    if result.items and more_newer:
        result.prev_cursor = cursor_encode(result.items[0])
    return result


def _newer_than(item) -> Q:
    return _newer(*_position(item))


def _older_than(item) -> Q:
    return _older(*_position(item))


def queue_position(run: TunixRun) -> int | None:
    """1 for the next pending local run to start, 2 for the one after, and so on."""
    if run.status != RunStatus.PENDING:
        return None
    ahead = TunixRun.objects.filter(
        status=RunStatus.PENDING, mode=run.mode, created_at__lt=run.created_at
    ).count()
    return ahead + 1


# The filter menus of the run list change rarely, and DISTINCT over everyone's runs reads a
# whole index (staff): each process keeps them this long.
FILTER_OPTIONS_SECONDS = 30


def run_filter_options(user, *, limit: int = 200) -> dict[str, list]:
    """Dataset keys and model ids among the runs `user` sees, for the run list's filters."""
    key = "tunixrt:run-filter-options:" + ("staff" if user.is_staff else str(user.pk))
    return cache.get_or_set(
        key, lambda: _filter_options(runs_visible_to(user), limit), FILTER_OPTIONS_SECONDS
    )


def _filter_options(queryset: QuerySet[TunixRun], limit: int) -> dict[str, list]:
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
