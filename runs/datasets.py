"""Dataset files: streaming validation of JSONL rows, rendering rows into training text, and
length statistics of the rendered text.

Validation reads the bytes in chunks and one line at a time, so a large file never sits in
memory, and reports the first errors with their line numbers and field names. Nothing here
imports Django: the same code checks an upload, a stored file and a file on the command line.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .tunix import CHAT_TEMPLATES

FORMATS = ("reasoning", "prompt_completion", "messages")
MAX_REPORTED_ERRORS = 20
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row that does not match its format; the message names the field."""


def human_bytes(n: int) -> str:
    """'512 MiB' for a round size; '4.2 KiB (4299 bytes)' when rounding would hide it."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "bytes":
        return f"{n} bytes"
    if value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit} ({n} bytes)"


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
        raise RowError(f"field '{name}' must be a string, not {json_type(value)}")
    if not allow_empty and not value.strip():
        raise RowError(f"field '{name}' must not be empty")
    return value


def check_row(row: Any, fmt: str) -> None:
    """Raise RowError naming the field when `row` is not a valid row of `fmt`."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, not {json_type(row)}")
    if fmt == "prompt_completion":
        _require_str(row, "prompt")
        _require_str(row, "completion")
    elif fmt == "reasoning":
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
                    raise RowError(
                        f"field '{where}.{key}' must be a string, not {json_type(step[key])}"
                    )
        _require_str(row, "final_answer")
        if "meta" in row and not isinstance(row["meta"], dict):
            raise RowError(f"field 'meta' must be an object, not {json_type(row['meta'])}")
    elif fmt == "messages":
        if "messages" not in row:
            raise RowError("missing field 'messages'")
        messages = row["messages"]
        if not isinstance(messages, list):
            raise RowError(f"field 'messages' must be an array, not {json_type(messages)}")
        if not messages:
            raise RowError("field 'messages' must not be empty")
        for n, message in enumerate(messages):
            where = f"messages[{n}]"
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
        last = len(messages) - 1
        if messages[last]["role"] != "assistant":
            raise RowError(f"field 'messages[{last}].role' must be 'assistant' (the answer)")
        if not messages[last]["content"].strip():
            raise RowError(f"field 'messages[{last}].content' must not be empty")
    else:
        raise RowError(f"unknown format '{fmt}'")


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
    digest = hashlib.sha256()
    for line_no, raw in _lines(chunks, report, digest, max_bytes, max_line_bytes, sink):
        if not raw.strip():
            report.blank_lines += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _error(report, f"line {line_no}: not valid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            row = parse_line(text)
        except RowError as exc:
            _error(report, f"line {line_no}: {exc}")
            continue
        if report.format is None:
            report.format = detect_format(row)
            report.format_line = line_no
            if report.format is None:
                if not isinstance(row, dict):
                    message = f"a row must be a JSON object, not {json_type(row)}"
                else:
                    message = (
                        "cannot tell the format; expected fields 'prompt' and 'completion', "
                        "or 'prompt', 'steps' and 'final_answer', or 'messages'"
                    )
                _error(report, f"line {line_no}: {message}")
                continue
        try:
            check_row(row, report.format)
        except RowError as exc:
            other = detect_format(row)
            hint = ""
            if other and other != report.format:
                source = (
                    f"detected from line {report.format_line}"
                    if report.format_line
                    else "as declared"
                )
                hint = f" (this row looks like {other}, but the file is {report.format}, {source})"
            _error(report, f"line {line_no}: {exc}{hint}")
            continue
        report.rows += 1
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
    """Lines of the stream (without their line end), numbered from 1.

    A chunk is split in one call and only an unfinished last line is carried over, so the
    work is linear in the size and memory is bounded by a chunk plus one line.
    """
    pending = b""
    line_no = 0
    head: bytes | None = b""  # the first bytes, until we know whether they hold a BOM
    for chunk in chunks:
        if not chunk:
            continue
        report.size_bytes += len(chunk)
        if report.size_bytes > max_bytes:
            report.too_large = True
            _error(report, f"the file is larger than the limit of {human_bytes(max_bytes)}")
            return
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
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
        parts = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
        pending = parts.pop()
        for line in parts:
            line_no += 1
            if len(line) > max_line_bytes:
                _error(
                    report,
                    f"line {line_no}: longer than the limit of {human_bytes(max_line_bytes)}",
                )
                return
            yield line_no, line[:-1] if line.endswith(b"\r") else line
            if report.error_count >= MAX_REPORTED_ERRORS:
                report.stopped_early = True
                return
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
        yield line_no + 1, pending[:-1] if pending.endswith(b"\r") else pending


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


def rendered_lines(rows: Iterable[dict], fmt: str, family: str) -> Iterator[str]:
    """The training JSONL, line by line: what the launcher reads and what export serves."""
    for row in rows:
        yield json.dumps(render_row(row, fmt, family)) + "\n"


# --- length statistics ------------------------------------------------------------------

Counter_ = Callable[[list[str]], list[int]]


def count_characters(texts: list[str]) -> list[int]:
    return [len(text) for text in texts]


def token_counter(tokenizer: Any) -> Counter_:
    """Count tokens the way the launcher does: prompt and completion encoded separately,
    with no special tokens added (the chat template's markers are in the text)."""

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return count


@dataclass
class LengthStats:
    """Lengths of the rendered rows, kept as counts per length: exact for any cut-off, and
    small however many rows there are (memory grows with distinct lengths, not rows)."""

    unit: str  # "tokens" or "characters"
    rows: int = 0  # rows measured
    every: int = 1  # 1: every row was measured; k: every k-th row (a sample)
    totals: Counter = field(default_factory=Counter)  # prompt + completion length -> rows
    prompts: Counter = field(default_factory=Counter)  # prompt length -> rows

    def truncated(self, max_len: int) -> int:
        """Rows longer than max_len: the launcher cuts them to max_len."""
        return sum(n for length, n in self.totals.items() if length > max_len)

    def dropped(self, max_len: int) -> int:
        """Rows whose prompt alone fills max_len: no answer token is left to learn from,
        so the launcher drops them."""
        return sum(n for length, n in self.prompts.items() if length >= max_len)

    def percentile(self, q: float) -> int:
        if not self.rows:
            return 0
        rank = max(1, round(q * self.rows))
        seen = 0
        for length in sorted(self.totals):
            seen += self.totals[length]
            if seen >= rank:
                return length
        return max(self.totals)

    def histogram(self, bins: int = 20) -> list[tuple[int, int, int]]:
        """(start, end, rows) for equal-width bins from the shortest to the longest row;
        end is exclusive."""
        if not self.rows:
            return []
        shortest, longest = min(self.totals), max(self.totals)
        width = max(1, -(-(longest - shortest + 1) // bins))
        counts = [0] * bins
        for length, n in self.totals.items():
            counts[(length - shortest) // width] += n
        while counts[-1] == 0:
            counts.pop()
        return [(shortest + i * width, shortest + (i + 1) * width, c) for i, c in enumerate(counts)]


def measure_lengths(
    rows: Iterable[dict],
    fmt: str,
    family: str,
    *,
    count: Counter_ = count_characters,
    unit: str = "characters",
    every: int = 1,
    batch: int = 512,
) -> LengthStats:
    """Render rows with the family's template and count their prompt and completion: every
    row, or every `every`-th one (an evenly spaced sample when counting is slow)."""
    stats = LengthStats(unit=unit, every=every)
    pending: list[dict[str, str]] = []

    def flush() -> None:
        texts = [r["prompt"] for r in pending] + [r["completion"] for r in pending]
        lengths = count(texts)
        half = len(pending)
        for p, c in zip(lengths[:half], lengths[half:], strict=True):
            stats.totals[p + c] += 1
            stats.prompts[p] += 1
        stats.rows += half
        pending.clear()

    for n, row in enumerate(rows):
        if n % every:
            continue
        pending.append(render_row(row, fmt, family))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return stats
