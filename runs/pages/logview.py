"""The training log as the run page shows it: each line coloured by its level, not by the
stream it came on (Tunix logs INFO through absl to stderr, so stderr is no sign of trouble).

Pure functions over chunk dicts ({"seq", "stream", "text"}). The text stays plain text: the
template escapes it; here it is only split into lines and each line labelled with a level.

Levels: "error" (absl E/F lines, the launcher's "<time> E name: ..." lines, ERROR, CRITICAL,
FATAL, Python tracebacks from "Traceback (most recent call last):" to the exception line),
"warning" (W lines, WARNING, Python's `file.py:N: SomeWarning:` lines), "info" (I lines,
INFO), "debug" (D lines, DEBUG), "note" (what tunix-rt itself wrote into the log: the system
stream), and "plain" for anything else. A line with no level of its own that continues an
indented block (a multi-line message, a warning's source line) keeps the level above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LEVELS = ("plain", "debug", "info", "warning", "error", "note")

# absl: "I0612 12:34:56.789012 140234 trainer.py:123] message" (also "E", "W", "F", "D").
_ABSL = re.compile(r"^([DIWEF])\d{4} \d{2}:\d{2}:\d+(?:\.\d+)?\s")
_ABSL_LEVEL = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "error"}
# The launcher's format ("%(asctime)s %(levelname).1s %(name)s: ...") and the like:
# "2026-12-01 21:38:43,269 I absl: ...", "2026-12-01 21:38:43 WARNING name ...".
_STAMPED = re.compile(
    r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d+)?\s+\[?"
    r"(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|[DIWEFC])\b"
)
# Python logging: "WARNING:absl:...", "[ERROR] ...", "2024-06-12 ... - name - ERROR - ...",
# "ERROR ..." at the start of a line, "... | WARNING | ...".
_PY_LEVEL = re.compile(
    r"^\[?(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b[\]:]?"
    r"|[\s|\]-](DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\s+[-|:]"
)
_PY_LEVEL_NAME = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "WARN": "warning",
    "ERROR": "error",
    "CRITICAL": "error",
    "FATAL": "error",
}
# warnings.warn output: "/path/file.py:12: DeprecationWarning: message".
_PY_WARNING = re.compile(r":\d+: \w*Warning: ")
_TRACEBACK_START = "Traceback (most recent call last):"
_TRACEBACK_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
# The exception line that ends a traceback: "ValueError: bad", "jax.errors.X", "KeyError".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?::|$)")


@dataclass
class LogState:
    """What the lines read so far leave behind for the next one."""

    level: str = "plain"  # the level of the last line
    traceback: bool = False  # inside a traceback block
    open: bool = False  # the last line had no newline yet: the next text continues it


def line_level(line: str, state: LogState) -> str:
    """The level of one complete or partial line, updating `state` for the next line."""
    body = line.rstrip("\r\n")
    if state.open:
        return state.level
    if body.startswith(_TRACEBACK_START):
        state.traceback = True
        return "error"
    if state.traceback:
        if not body or body[0] in " \t" or body in _TRACEBACK_CHAIN:
            return "error"
        if _EXCEPTION_LINE.match(body):
            state.traceback = False
            return "error"
        state.traceback = False
    absl = _ABSL.match(body)
    if absl:
        return _ABSL_LEVEL[absl.group(1)]
    stamped = _STAMPED.match(body)
    if stamped:
        name = stamped.group(1)
        return _PY_LEVEL_NAME.get(name) or _ABSL_LEVEL.get(name, "error")
    named = _PY_LEVEL.search(body[:120])
    if named:
        return _PY_LEVEL_NAME[named.group(1) or named.group(2)]
    if _PY_WARNING.search(body):
        return "warning"
    if body and body[0] in " \t" and state.level in ("warning", "error", "debug", "info"):
        return state.level  # the indented rest of the message above
    return "plain"


def chunk_lines(chunk: dict, state: LogState) -> list[tuple[str, str]]:
    """(level, text) runs of one chunk, consecutive lines of one level joined."""
    runs: list[tuple[str, str]] = []
    for line in chunk["text"].splitlines(keepends=True):
        if chunk.get("stream") == "system":
            level = "note"
            state.traceback = False
        else:
            level = line_level(line, state)
        state.level = level
        state.open = not line.endswith(("\n", "\r"))
        if runs and runs[-1][0] == level:
            runs[-1] = (level, runs[-1][1] + line)
        else:
            runs.append((level, line))
    return runs


def with_levels(chunks: list[dict], *, before: list[dict] = ()) -> list[dict]:
    """`chunks` with a "lines" list of (level, text) each. `before` are the chunks just ahead
    of them (already shown), read only to know whether a traceback or a line continues."""
    state = LogState()
    for chunk in before:
        chunk_lines(chunk, state)
    return [{**chunk, "lines": chunk_lines(chunk, state)} for chunk in chunks]
