"""Living through a database outage: a gate that every write of the supervisor goes through.

A restart or failover of PostgreSQL, or SQLite's "database is locked" past its busy timeout,
must not end a run whose training is fine. While the database is away the gate says so, the
caller keeps its writes in memory (bounded), and the gate tries again with a growing pause
(RETRY_FIRST .. RETRY_MAX seconds). Each failure closes the connection, so the next try
opens a fresh one. No models here: callers pass the work as a function."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")

# The errors of a database that is away or locked. IntegrityError and other programming
# errors are DatabaseErrors too, but they are bugs, not outages: they propagate.
OUTAGE_ERRORS = (OperationalError, InterfaceError)
RETRY_FIRST = 0.25
RETRY_MAX = 2.0


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    # psycopg reports a server that went away mid-query as a plain DatabaseError at times
    # ("server closed the connection unexpectedly", "terminating connection ...").
    text = str(exc).lower()
    return isinstance(exc, DatabaseError) and any(
        word in text for word in ("connection", "terminating", "locked", "shutdown")
    )


class DatabaseGate:
    """Runs database work; remembers when the database went away and when to try again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.down_since: float | None = None
        self.last_ok = clock()
        self.next_try = 0.0
        self.pause = RETRY_FIRST
        self.outages = 0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def due(self) -> bool:
        """Whether work may be tried now (always when up; after the pause when down)."""
        return self.down_since is None or self.clock() >= self.next_try

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def call(self, work: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, result), or (False, None) when the database is away."""
        try:
            result = work()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._failed(exc)
            return False, None
        self._succeeded()
        return True, result

    def retry(self, work: Callable[[], T], *, patience: float) -> tuple[bool, T | None]:
        """Call `work` until it succeeds or `patience` seconds have passed."""
        deadline = self.clock() + patience
        while True:
            ok, result = self.call(work)
            if ok or self.clock() >= deadline:
                return ok, result
            time.sleep(max(0.0, min(self.next_try, deadline) - self.clock()))

    def _failed(self, exc: Exception) -> None:
        now = self.clock()
        if self.down_since is None:
            self.down_since, self.pause = now, RETRY_FIRST
            self.outages += 1
            log.warning("database unreachable, buffering and retrying: %s", exc)
        else:
            self.pause = min(self.pause * 2, RETRY_MAX)
        self.last_error = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        self.next_try = now + self.pause
        # A broken connection stays broken; a fresh one is opened on the next query.
        with contextlib.suppress(Exception):
            connection.close()

    def _succeeded(self) -> None:
        if self.down_since is not None:
            log.warning("database back after %.1f s", self.clock() - self.down_since)
        self.down_since = None
        self.last_ok = self.clock()
