"""Dataset files: streaming validation of JSONL rows and reading stored rows back.
Rendering rows into training text and its length statistics are in `rendering`.

Validation reads the bytes in chunks and one line at a time, so a large file never sits in
memory, and reports the first errors with their line numbers and field names. Nothing here
imports Django: the same code checks an upload, a stored file and a file on the command line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from runs.datasets import fastcheck
from runs.formatting import human_bytes

FORMATS = ("reasoning", "prompt_completion", "messages", "preference", "prompt_answer")
MAX_REPORTED_ERRORS = 20
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row that does not match its format; the message names the field."""


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages a user can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "messages" in row:
        return "messages"
    if "steps" in row or "final_answer" in row:
        return "reasoning"
    if "completion" in row:
        return "prompt_completion"
    if "answer" in row and "prompt" in row:
        return "prompt_answer"
    return None


def _require_str(row: dict, name: str, *, allow_empty: bool = False) -> str:
    if name not in row:
        raise RowError(f"missing field '{name}'")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(f"field '{name}' must be a string, not {json_type(value)}")
    if not allow_empty and not value.strip():
        raise RowError(f"field '{name}' must not be empty")
    return value


def _check_prompt_completion(row: dict) -> None:
    _require_str(row, "prompt")
    _require_str(row, "completion")


def _check_reasoning(row: dict) -> None:
    _require_str(row, "prompt")
    if "steps" not in row:
        raise RowError("missing field 'steps'")
    steps = row["steps"]
    if not isinstance(steps, list):
        raise RowError(f"field 'steps' must be an array, not {json_type(steps)}")
    if not steps:
        raise RowError("field 'steps' must not be empty")
    seen: dict[int, int] = {}
    for n, step in enumerate(steps):
        _check_step(step, n, seen)
    _require_str(row, "final_answer")
    if "meta" in row and not isinstance(row["meta"], dict):
        raise RowError(f"field 'meta' must be an object, not {json_type(row['meta'])}")


def _check_step(step: Any, n: int, seen: dict[int, int]) -> None:
    where = f"steps[{n}]"
    if not isinstance(step, dict):
        raise RowError(f"field '{where}' must be an object, not {json_type(step)}")
    if "i" not in step:
        raise RowError(f"missing field '{where}.i'")
    i = step["i"]
    if isinstance(i, bool) or not isinstance(i, int):
        raise RowError(f"field '{where}.i' must be an integer, not {json_type(i)}")
    if i in seen:
        raise RowError(
            f"field '{where}.i' repeats step index {i} (already used by steps[{seen[i]}])"
        )
    seen[i] = n
    for key in ("type", "content"):
        if key not in step:
            raise RowError(f"missing field '{where}.{key}'")
        if not isinstance(step[key], str):
            raise RowError(f"field '{where}.{key}' must be a string, not {json_type(step[key])}")


def _check_message_list(messages: Any, name: str) -> None:
    if not isinstance(messages, list):
        raise RowError(f"field '{name}' must be an array, not {json_type(messages)}")
    if not messages:
        raise RowError(f"field '{name}' must not be empty")
    for n, message in enumerate(messages):
        where = f"{name}[{n}]"
        if not isinstance(message, dict):
            raise RowError(f"field '{where}' must be an object, not {json_type(message)}")
        if "role" not in message:
            raise RowError(f"missing field '{where}.role'")
        if message["role"] not in _ROLES:
            raise RowError(f"field '{where}.role' must be one of {', '.join(_ROLES)}")
        if "content" not in message:
            raise RowError(f"missing field '{where}.content'")
        if not isinstance(message["content"], str):
            raise RowError(
                f"field '{where}.content' must be a string, not {json_type(message['content'])}"
            )


def _check_messages(row: dict) -> None:
    if "messages" not in row:
        raise RowError("missing field 'messages'")
    messages = row["messages"]
    _check_message_list(messages, "messages")
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RowError(f"field 'messages[{last}].role' must be 'assistant' (the answer)")
    if not messages[last]["content"].strip():
        raise RowError(f"field 'messages[{last}].content' must not be empty")


def _check_prompt_answer(row: dict) -> None:
    _require_str(row, "prompt")
    _require_str(row, "answer")


def _check_response(row: dict, name: str) -> None:
    """`chosen` / `rejected`: a string, or a list holding the one assistant message."""
    if name not in row:
        raise RowError(f"missing field '{name}'")
    value = row[name]
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field '{name}' must not be empty")
        return
    if not isinstance(value, list):
        raise RowError(f"field '{name}' must be a string or an array, not {json_type(value)}")
    _check_message_list(value, name)
    if len(value) != 1 or value[0]["role"] != "assistant":
        raise RowError(f"field '{name}' must hold exactly one message, with role 'assistant'")
    if not value[0]["content"].strip():
        raise RowError(f"field '{name}[0].content' must not be empty")


def _check_preference(row: dict) -> None:
    if "prompt" not in row:
        raise RowError("missing field 'prompt'")
    if isinstance(row["prompt"], list):
        _check_message_list(row["prompt"], "prompt")
        last = len(row["prompt"]) - 1
        if row["prompt"][last]["role"] == "assistant":
            raise RowError(f"field 'prompt[{last}].role' must not be 'assistant'")
    else:
        _require_str(row, "prompt")
    _check_response(row, "chosen")
    _check_response(row, "rejected")


# format -> the check of one row (each raises RowError naming the field).
ROW_CHECKS = {
    "reasoning": _check_reasoning,
    "prompt_completion": _check_prompt_completion,
    "messages": _check_messages,
    "preference": _check_preference,
    "prompt_answer": _check_prompt_answer,
}


def check_row(row: Any, fmt: str) -> None:
    """Raise RowError naming the field when `row` is not a valid row of `fmt`."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, not {json_type(row)}")
    if fmt not in ROW_CHECKS:
        raise RowError(f"unknown format '{fmt}'")
    ROW_CHECKS[fmt](row)


def _unpaired_surrogate(value: Any, where: str) -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (from a `\\udXXX`
    escape). Such text cannot be written as UTF-8, so no page, export or tokenizer could
    use it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(row)"
        return None
    if isinstance(value, dict):
        items = value.items()
        return next(
            (p for k, v in items if (p := _unpaired_surrogate(v, f"{where}.{k}".lstrip(".")))),
            None,
        )
    if isinstance(value, list):
        return next(
            (p for n, v in enumerate(value) if (p := _unpaired_surrogate(v, f"{where}[{n}]"))),
            None,
        )
    return None


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and the API could not echo them.
    raise ValueError(f"{name} is not valid JSON")


def parse_line(text: str) -> Any:
    """json.loads with the deliberate refusals: NaN/Infinity, absurd nesting, huge integers
    and unpaired surrogates all raise RowError with a message fit for the user."""
    try:
        row = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Unexpected UTF-8 BOM"):
            raise RowError("a byte-order mark in the middle of the file") from None
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RowError("not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise RowError(f"not valid JSON ({exc})") from None
    if "\\u" in text and (where := _unpaired_surrogate(row, "")):
        raise RowError(f"field '{where}' holds an unpaired surrogate escape (not valid text)")
    return row


@dataclass
class ValidationReport:
    format: str | None = None
    format_line: int | None = None  # where the format was detected; None when declared
    rows: int = 0
    size_bytes: int = 0
    sha256: str = ""
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    blank_lines: int = 0
    had_bom: bool = False
    too_large: bool = False  # the file exceeded the size limit (HTTP 413, not a row problem)
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.rows > 0

    def summary(self, limit: int = 5) -> str:
        if self.errors:
            shown = self.errors[:limit]
            more = self.error_count - len(shown)
            tail = ""
            if self.stopped_early:
                tail = f" (stopped reading after {self.error_count} errors)"
            elif more > 0:
                tail = f" (and {more} more)"
            return "; ".join(shown) + tail
        if self.rows == 0:
            return "the dataset has no rows"
        return f"{self.rows} valid rows ({self.format})"

    def details(self) -> str:
        """Every reported error, one per line (for field errors and the command line)."""
        if not self.errors:
            return self.summary()
        lines = list(self.errors)
        if self.stopped_early:
            lines.append(f"(stopped reading after {self.error_count} errors)")
        return "\n".join(lines)


def validate_stream(
    chunks: Iterable[bytes],
    *,
    declared_format: str | None = None,
    max_bytes: int,
    max_line_bytes: int,
    sink: IO[bytes] | None = None,
) -> ValidationReport:
    """Validate JSONL arriving as byte chunks; optionally copy the bytes to `sink`.

    Deliberate choices: blank (or whitespace-only) lines are skipped but still count for
    line numbers; a UTF-8 byte-order mark at the start is ignored (the stored bytes and the
    hash keep it), one elsewhere is an error; a UTF-16 file is refused as a whole; CRLF line
    ends are accepted. Reading stops after MAX_REPORTED_ERRORS errors or at a limit.
    """
    report = ValidationReport(format=declared_format or None)
    copier = fastcheck.Copier(sink)
    try:
        for line_no, block in _blocks(chunks, report, copier, max_bytes, max_line_bytes):
            if not _check_block(report, line_no, block):
                break
    finally:
        report.sha256 = copier.close()
    return report


def _check_block(report: ValidationReport, first_line_no: int, lines: list[bytes]) -> bool:
    """Check consecutive lines (CR still on), counting rows and recording errors; False
    once MAX_REPORTED_ERRORS is reached. Once the format is known, a line the fast path
    (orjson and one boolean check) accepts is a row; any other line takes the detailed
    path, which alone words errors (see `fastcheck`)."""
    row_ok = fastcheck.ROW_OK.get(report.format)
    parse, failed = fastcheck.parse, fastcheck.JSONDecodeError
    rows = 0
    for line_no, raw in enumerate(lines, first_line_no):
        if row_ok is not None:
            try:
                row = parse(raw)  # a trailing CR is whitespace to JSON
            except failed:
                pass
            else:
                if type(row) is dict and row_ok(row):
                    rows += 1
                    continue
        _check_line(report, line_no, raw[:-1] if raw.endswith(b"\r") else raw)
        row_ok = fastcheck.ROW_OK.get(report.format)  # known after the first row
        if report.error_count >= MAX_REPORTED_ERRORS:
            report.rows += rows
            report.stopped_early = True
            return False
    report.rows += rows
    return True


def _check_line(report: ValidationReport, line_no: int, raw: bytes) -> None:
    """Check one line (without its line end) in detail: a row, or its error worded."""
    if not raw.strip():
        report.blank_lines += 1
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _error(report, f"line {line_no}: not valid UTF-8 (byte {exc.start + 1} of the line)")
        return
    try:
        row = parse_line(text)
    except RowError as exc:
        _error(report, f"line {line_no}: {exc}")
        return
    if report.format is None:
        report.format = detect_format(row)
        report.format_line = line_no
        if report.format is None:
            if not isinstance(row, dict):
                message = f"a row must be a JSON object, not {json_type(row)}"
            else:
                message = (
                    "cannot tell the format; expected fields 'prompt' and 'completion', "
                    "or 'prompt', 'steps' and 'final_answer', or 'messages', "
                    "or 'prompt' and 'answer', or 'prompt', 'chosen' and 'rejected'"
                )
            _error(report, f"line {line_no}: {message}")
            return
    try:
        check_row(row, report.format)
    except RowError as exc:
        other = detect_format(row)
        hint = ""
        if other and other != report.format:
            source = (
                f"detected from line {report.format_line}" if report.format_line else "as declared"
            )
            hint = f" (this row looks like {other}, but the file is {report.format}, {source})"
        _error(report, f"line {line_no}: {exc}{hint}")
        return
    report.rows += 1


def _error(report: ValidationReport, message: str) -> None:
    report.error_count += 1
    if len(report.errors) < MAX_REPORTED_ERRORS:
        report.errors.append(message)


# long: the hot loop of validation (every byte of every upload passes here), kept inline.
def _blocks(
    chunks: Iterable[bytes],
    report: ValidationReport,
    copier: fastcheck.Copier,
    max_bytes: int,
    max_line_bytes: int,
) -> Iterator[tuple[int, list[bytes]]]:
    """The stream's lines (with a CR before the LF still on) in blocks: (number of the
    block's first line, counted from 1, lines).

    A chunk is split in one call and only an unfinished last line is carried over, so the
    work is linear in the size and memory is bounded by a chunk plus one line. A line over
    the length limit ends the stream after the lines before it.
    """
    pending = b""
    line_no = 0  # lines yielded so far
    head: bytes | None = b""  # the first bytes, until we know whether they hold a BOM
    for chunk in chunks:
        if not chunk:
            continue
        report.size_bytes += len(chunk)
        if report.size_bytes > max_bytes:
            report.too_large = True
            _error(report, f"the file is larger than the limit of {human_bytes(max_bytes)}")
            return
        copier.add(chunk)  # hashed and copied on a second thread
        if head is not None:
            head += chunk
            if len(head) < len(_BOM):
                continue
            chunk, head = head, None
            if chunk.startswith(_UTF16_BOMS):
                _error(report, "the file is UTF-16 encoded; save it as UTF-8")
                return
            if chunk.startswith(_BOM):
                report.had_bom = True
                chunk = chunk[len(_BOM) :]
        lines = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
        pending = lines.pop()
        if lines and max(map(len, lines)) > max_line_bytes:
            too_long = next(n for n, line in enumerate(lines) if len(line) > max_line_bytes)
            if too_long:
                yield line_no + 1, lines[:too_long]
            _error(
                report,
                f"line {line_no + too_long + 1}: longer than the limit of "
                f"{human_bytes(max_line_bytes)}",
            )
            return
        if lines:
            yield line_no + 1, lines
            line_no += len(lines)
        if len(pending) > max_line_bytes:
            _error(
                report,
                f"line {line_no + 1}: longer than the limit of {human_bytes(max_line_bytes)}",
            )
            return
    if head:  # a file shorter than a byte-order mark
        if head.startswith(_UTF16_BOMS):
            _error(report, "the file is UTF-16 encoded; save it as UTF-8")
            return
        pending = head
    if pending:
        yield line_no + 1, [pending]


def read_chunks(handle: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


def iter_numbered_rows(path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a stored, already validated dataset file, streamed.

    Lines are split exactly as validation splits them (on LF only), so line numbers match
    the ones in validation errors."""
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.strip():
                yield line_no, json.loads(line.decode("utf-8"))


def iter_rows(path) -> Iterator[dict]:
    """Rows of a stored (already validated) dataset file."""
    for _, row in iter_numbered_rows(path):
        yield row


# --- rendering into training text -------------------------------------------------------
