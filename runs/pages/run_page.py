"""What the run page shows besides the run itself: its charts, its log lines labelled by
level, and its outputs. Reads only (selectors and storage); the views render it."""

from __future__ import annotations

from django.contrib import messages

from runs import selectors, storage
from runs.errors import Forbidden, NotFound
from runs.pages import charts, logview

# Entries each folder of the output tree lists before it says how many more it holds.
OUTPUT_ENTRIES_SHOWN = 50
# Checkpoint steps listed, newest first (Orbax keeps a few; a run that keeps all may have many).
CHECKPOINTS_SHOWN = 20
# Chunks just before a poll's cursor, read to know whether a traceback continues.
LOG_CONTEXT_CHUNKS = 5


def panels(user, run) -> list[charts.Panel]:
    """A chart per recorded quantity, loss first. A continued run also draws its parent's
    points up to the resume step (faded), when `user` may see the parent."""
    parent = None
    if run.parent_id:
        try:
            parent_run = selectors.run_for_user(user=user, run_id=run.parent_id)
        except (NotFound, Forbidden):
            parent_run = None
        if parent_run is not None:
            parent = selectors.run_metric_series(parent_run)
    return charts.run_panels(
        selectors.run_metric_series(run), parent=parent, resume_step=run.resume_from_step
    )


def log_lines(run, chunks: list[dict], *, after: int = 0) -> list[dict]:
    """The chunks with their lines labelled by level. A poll (`after` > 0) reads the few
    chunks just before its cursor to know whether a traceback or a line continues."""
    before = []
    if after:
        first = max(0, after - LOG_CONTEXT_CHUNKS)
        before = selectors.run_log_chunks(run, after=first, limit=LOG_CONTEXT_CHUNKS)
    return logview.with_levels(chunks, before=[c for c in before if c["seq"] <= after])


def outputs_context(user, run) -> dict:
    """The outputs card: the folder tree, the step to continue from, the continuations."""
    outputs = storage.run_output_tree(run, shown=OUTPUT_ENTRIES_SHOWN)
    return {
        "outputs": outputs,
        "checkpoints_shown": outputs["checkpoints"][:CHECKPOINTS_SHOWN],
        "checkpoints_more": max(0, len(outputs["checkpoints"]) - CHECKPOINTS_SHOWN),
        "resume_step": storage.run_latest_checkpoint(run),
        "children": selectors.run_children(run, user=user),
    }


def status_message(request, level: int, text: str, *, while_status: str) -> None:
    """A banner that holds only while the run is in `while_status` ("Run queued." while
    pending): the run page leaves it out once the run has moved on, and a poll that sees
    the status change removes it from the page."""
    messages.add_message(request, level, text, extra_tags=f"while-{while_status}")


def live_messages(request, run) -> list:
    """The pending banners minus those about a status the run has left (they are consumed
    either way, so none shows up stale on a later page)."""
    shown = []
    for message in messages.get_messages(request):
        tags = message.extra_tags.split() if message.extra_tags else []
        about = [t.removeprefix("while-") for t in tags if t.startswith("while-")]
        if not about or run.status in about:
            shown.append(message)
    return shown
