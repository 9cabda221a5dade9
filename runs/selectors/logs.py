"""Reads of a run's log chunks and metrics."""

from __future__ import annotations

from django.db.models import Count, Max, Min

from ..models import LogChunk, Metric, TunixRun


def run_log_chunks(run: TunixRun, *, after: int = 0, limit: int = 500) -> list:
    """Chunks after sequence number `after`, oldest first (the log-follow query)."""

    return list(
        LogChunk.objects.filter(run=run, seq__gt=after)
        .order_by("seq")
        .values("seq", "stream", "text")[:limit]
    )


def run_log_text(run: TunixRun):
    """The whole stored log, streamed chunk by chunk."""

    chunks = LogChunk.objects.filter(run=run).order_by("seq").values_list("text", flat=True)
    return chunks.iterator(chunk_size=200)


def run_log_tail(run: TunixRun, *, limit: int = 500) -> tuple[list, bool]:
    """The newest `limit` chunks, oldest first, and whether earlier chunks exist (the run
    page opens on the tail; the full log is a download)."""

    newest = list(
        LogChunk.objects.filter(run=run).order_by("-seq").values("seq", "stream", "text")[:limit]
    )
    newest.reverse()
    earlier = bool(newest) and LogChunk.objects.filter(run=run, seq__lt=newest[0]["seq"]).exists()
    return newest, earlier


def run_log_excerpt(run: TunixRun, *, head_chars: int = 8000, tail_chars: int = 8000) -> dict:
    """The beginning and the end of a run's stored log, for a summary (the admin detail).
    Reads only the chunks it needs from each end, however long the log is. Returns
    {"head", "tail", "omitted", "total_chunks"}: "omitted" says what lies between head and
    tail ("" when the head is the whole log and the tail is empty)."""

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


# The seed's `stdout`/`stderr` were the last 10 KB of each stream; so are ours.
STREAM_TAIL_BYTES = 10 * 1024


def run_stream_tail(run: TunixRun, stream: str, *, limit_bytes: int = STREAM_TAIL_BYTES):
    """The last `limit_bytes` bytes (UTF-8) of one stream of a run's stored log, and
    whether anything before them was left out (earlier output of that stream, or what the
    log cap dropped). Cut on a character boundary: never half a character."""

    chunks = LogChunk.objects.filter(run=run, stream=stream).order_by("-seq")
    taken, size, more = [], 0, False
    for text in chunks.values_list("text", flat=True).iterator(chunk_size=50):
        if size >= limit_bytes:
            more = True
            break
        taken.append(text)
        size += len(text.encode())
    data = "".join(reversed(taken)).encode()
    truncated = more or len(data) > limit_bytes or run.log_dropped_bytes > 0
    if len(data) > limit_bytes:
        data = data[-limit_bytes:]
        # Continuation bytes (10xxxxxx) at the cut belong to a character cut in half.
        start = 0
        while start < len(data) and data[start] & 0xC0 == 0x80:
            start += 1
        data = data[start:]
    return data.decode(), truncated


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
