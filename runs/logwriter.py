"""A run's output as log chunks with a storage cap (head, rolling tail, a marker between),
written by the supervisor. Every write is safe to repeat after a database error."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .models import LogChunk


@dataclass
class LogWriter:
    """Writes output as chunks with a storage cap: the head is kept, then a rolling tail;
    a marker chunk between them says how much was dropped. The pipe is always drained."""

    run_id: object
    cap: int
    seq: int = 0
    stored: int = 0
    head_full: bool = False
    marker_id: int | None = None
    dropped: int = 0
    tail: list[tuple[int, int]] = field(default_factory=list)  # (chunk id, size) oldest first
    tail_bytes: int = 0

    # Housekeeping a failed write still owes: tail chunks to delete, a marker to update.
    owed_drops: list[int] = field(default_factory=list)
    marker_stale: bool = False

    def write(self, stream: str, text: str) -> None:
        """Store `text`. A database error propagates with nothing of `text` stored, so
        the caller may simply try again; cleanup that fails after the insert is owed and
        settled by a later write."""
        if not text:
            return
        self._settle()
        size = len(text.encode("utf-8", "replace"))
        head_cap = self.cap // 2
        if not self.head_full and self.stored + size <= head_cap:
            self._insert(stream, text)
            self.stored += size
            return
        if not self.head_full:
            marker = LogChunk.objects.create(
                run_id=self.run_id, seq=self._next(), stream="system", text=self._marker_text()
            )
            self.marker_id, self.head_full = marker.id, True
        # Rolling tail: keep at most cap/2 bytes of the newest output.
        tail_cap = self.cap - head_cap
        dropped = 0
        if size > tail_cap:
            dropped = size - tail_cap
            text = text.encode("utf-8", "replace")[-tail_cap:].decode("utf-8", "ignore")
            size = len(text.encode("utf-8"))
        chunk_id = self._insert(stream, text)
        self.dropped += dropped
        self.tail.append((chunk_id, size))
        self.tail_bytes += size
        while self.tail_bytes > tail_cap and self.tail:
            old_id, old_size = self.tail.pop(0)
            self.owed_drops.append(old_id)
            self.tail_bytes -= old_size
            self.dropped += old_size
        self.marker_stale = bool(self.dropped)
        with contextlib.suppress(Exception):
            self._settle()

    def _settle(self) -> None:
        if self.owed_drops:
            LogChunk.objects.filter(id__in=self.owed_drops).delete()
            self.owed_drops = []
        if self.marker_stale:
            LogChunk.objects.filter(id=self.marker_id).update(text=self._marker_text())
            self.marker_stale = False

    def _marker_text(self) -> str:
        return (
            f"[tunix-rt] log storage cap of {self.cap} bytes reached: the first part is kept "
            f"above and the newest output below; {self.dropped} bytes in between were dropped.\n"
        )

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _insert(self, stream: str, text: str) -> int:
        # PostgreSQL text cannot hold NUL; keep the rest of the line.
        text = text.replace("\x00", "\ufffd")
        return LogChunk.objects.create(
            run_id=self.run_id, seq=self._next(), stream=stream, text=text
        ).id
