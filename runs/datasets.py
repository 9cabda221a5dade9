"""Dataset files: streaming validation of JSONL rows and rendering rows into training text.

Validation reads one line at a time, so a large file never sits in memory, and reports the
first errors with their line numbers and field names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .tunix import CHAT_TEMPLATES

FORMATS = ("reasoning", "prompt_completion", "messages")
MAX_REPORTED_ERRORS = 20
_BOM = b"\xef\xbb\xbf"
_ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row that does not match its format; the message names the field."""


def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "steps" in row or "final_answer" in row:
        return "reasoning"
    if "completion" in row:
        return "prompt_completion"
    return None


def _require_str(row: dict, name: str, *, allow_empty: bool = False) -> str:
    if name not in row:
        raise RowError(f"missing field '{name}'")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(f"field '{name}' must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(f"field '{name}' must not be empty")
    return value


def check_row(row: Any, fmt: str) -> None:
    """Raise RowError naming the field when `row` is not a valid row of `fmt`."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, not {type(row).__name__}")
    if fmt == "prompt_completion":
        _require_str(row, "prompt")
        _require_str(row, "completion")
    elif fmt == "reasoning":
        _require_str(row, "prompt")
        _require_str(row, "final_answer")
        steps = row.get("steps")
        if "steps" not in row:
            raise RowError("missing field 'steps'")
        if not isinstance(steps, list) or not steps:
            raise RowError("field 'steps' must be a non-empty list")
        seen: set[int] = set()
        for n, step in enumerate(steps):
            where = f"steps[{n}]"
            if not isinstance(step, dict):
                raise RowError(f"field '{where}' must be an object")
            i = step.get("i")
            if isinstance(i, bool) or not isinstance(i, int):
                raise RowError(f"field '{where}.i' must be an integer")
            if i in seen:
                raise RowError(f"field '{where}.i' repeats step index {i}")
            seen.add(i)
            for key in ("type", "content"):
                if not isinstance(step.get(key), str):
                    raise RowError(f"field '{where}.{key}' must be a string")
        if "meta" in row and not isinstance(row["meta"], dict):
            raise RowError("field 'meta' must be an object")
    elif fmt == "messages":
        messages = row.get("messages")
        if "messages" not in row:
            raise RowError("missing field 'messages'")
        if not isinstance(messages, list) or not messages:
            raise RowError("field 'messages' must be a non-empty list")
        for n, message in enumerate(messages):
            where = f"messages[{n}]"
            if not isinstance(message, dict):
                raise RowError(f"field '{where}' must be an object")
            if message.get("role") not in _ROLES:
                raise RowError(f"field '{where}.role' must be one of {', '.join(_ROLES)}")
            if not isinstance(message.get("content"), str):
                raise RowError(f"field '{where}.content' must be a string")
        if messages[-1]["role"] != "assistant":
            raise RowError("the last of 'messages' must have role 'assistant'")
    else:
        raise RowError(f"unknown format '{fmt}'")


@dataclass
class ValidationReport:
    format: str | None = None
    rows: int = 0
    size_bytes: int = 0
    sha256: str = ""
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.rows > 0

    def summary(self) -> str:
        if self.errors:
            more = self.error_count - len(self.errors)
            tail = f" (and {more} more)" if more > 0 else ""
            return "; ".join(self.errors[:5]) + tail
        if self.rows == 0:
            return "the dataset has no rows"
        return f"{self.rows} valid rows ({self.format})"


def validate_stream(
    chunks: Iterable[bytes],
    *,
    declared_format: str | None = None,
    max_bytes: int,
    max_line_bytes: int,
    sink: IO[bytes] | None = None,
) -> ValidationReport:
    """Validate JSONL arriving as byte chunks; optionally copy the bytes to `sink`.

    Blank lines are allowed and skipped (they still count for line numbers). A UTF-8
    byte-order mark at the start is dropped. Stops reading after MAX_REPORTED_ERRORS or
    when a limit is exceeded.
    """
    report = ValidationReport(format=declared_format)
    digest = hashlib.sha256()
    for line_no, raw in _lines(chunks, report, digest, max_bytes, max_line_bytes, sink):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _error(report, f"line {line_no}: not valid UTF-8 (byte {exc.start + 1})")
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            _error(report, f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if report.format is None:
            report.format = detect_format(row)
            if report.format is None:
                _error(
                    report,
                    f"line {line_no}: cannot tell the format; expected fields 'prompt' and "
                    "'completion', 'prompt'/'steps'/'final_answer', or 'messages'",
                )
                continue
        try:
            check_row(row, report.format)
        except RowError as exc:
            _error(report, f"line {line_no}: {exc}")
            continue
        report.rows += 1
        if report.error_count >= MAX_REPORTED_ERRORS:
            break
    report.sha256 = digest.hexdigest()
    return report


def _error(report: ValidationReport, message: str) -> None:
    report.error_count += 1
    if len(report.errors) < MAX_REPORTED_ERRORS:
        report.errors.append(message)


def _lines(
    chunks: Iterable[bytes],
    report: ValidationReport,
    digest: Any,
    max_bytes: int,
    max_line_bytes: int,
    sink: IO[bytes] | None,
) -> Iterator[tuple[int, bytes]]:
    buffer = b""
    line_no = 0
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        report.size_bytes += len(chunk)
        if report.size_bytes > max_bytes:
            _error(report, f"the file is larger than the limit of {max_bytes} bytes")
            return
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            line_no += 1
            if len(line) > max_line_bytes:
                _error(report, f"line {line_no}: longer than the limit of {max_line_bytes} bytes")
                return
            yield line_no, line.rstrip(b"\r")
            if report.error_count >= MAX_REPORTED_ERRORS:
                return
        if len(buffer) > max_line_bytes:
            _error(report, f"line {line_no + 1}: longer than the limit of {max_line_bytes} bytes")
            return
    if buffer:
        yield line_no + 1, buffer.rstrip(b"\r")


def read_chunks(handle: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


def iter_rows(path) -> Iterator[dict]:
    """Rows of a stored (already validated) dataset file."""
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


# --- rendering into training text -------------------------------------------------------


def row_turns(row: dict, fmt: str) -> tuple[list[tuple[str, str]], str]:
    """(turns before the answer, the answer) of one row, before any chat template."""
    if fmt == "prompt_completion":
        return [("user", row["prompt"])], row["completion"]
    if fmt == "reasoning":
        steps = sorted(row["steps"], key=lambda s: s["i"])
        lines = [f"Step {s['i']} ({s['type']}): {s['content']}" for s in steps]
        lines.append(f"Final answer: {row['final_answer']}")
        return [("user", row["prompt"])], "\n".join(lines)
    if fmt == "messages":
        messages = row["messages"]
        return [(m["role"], m["content"]) for m in messages[:-1]], messages[-1]["content"]
    raise RowError(f"unknown format '{fmt}'")


def render_row(row: dict, fmt: str, family: str) -> dict[str, str]:
    """The exact {prompt, completion} text the launcher trains on (prompt is masked)."""
    turns, answer = row_turns(row, fmt)
    prompt, completion = CHAT_TEMPLATES[family].render(turns, answer)
    return {"prompt": prompt, "completion": completion}
