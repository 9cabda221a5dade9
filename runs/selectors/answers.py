"""Answers about finished runs, kept in Django's cache (each process's memory by default).

A finished run's record no longer changes, except for a few columns: `pinned` (pin/unpin),
`parent_id` (its parent deleted) and the owner's username. Each cached answer is stored
with those values (its version); a request first reads them with the permission check
(one light query on the primary key) and serves the cached answer only when they match.
So a deleted run is a 404 at once (the light query finds nothing), a pin shows at once, and
a process whose cache another process cannot reach never serves a stale answer. Deleting a
run also drops its entry here to free the memory.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.cache import cache

from ..models import TunixRun
from .runs import run_for_user

VERSION_COLUMNS = ("id", "owner_id", "owner__username", "status", "finished_at", "pinned")
CACHE_SECONDS = 3600


def _key(run_id) -> str:
    return f"tunixrt:run-answer:{run_id}"


def _version(run: TunixRun) -> tuple:
    return (run.status, run.finished_at, run.pinned, run.parent_id, run.owner.username)


def run_answer(*, user, run_id, render: Callable[[TunixRun], bytes]) -> bytes:
    """`render(run)` of the run `user` may see (NotFound, Forbidden otherwise), from the
    cache when the run is final and unchanged since it was rendered."""
    head = run_for_user(
        user=user, run_id=run_id, related=("owner",), columns=(*VERSION_COLUMNS, "parent_id")
    )
    if not head.is_final:
        return render(run_for_user(user=user, run_id=run_id, related=("owner",)))
    cached = cache.get(_key(head.id))
    if cached is not None and cached[0] == _version(head):
        return cached[1]
    run = run_for_user(user=user, run_id=run_id, related=("owner",))
    body = render(run)
    if run.is_final:
        cache.set(_key(run.id), (_version(run), body), CACHE_SECONDS)
    return body


def run_answer_forget(run_id) -> None:
    cache.delete(_key(run_id))
