"""The fast path of dataset validation: accept a line that is certainly a valid row (and
hash and copy the bytes on a second thread, `Copier`).

Each function here answers only "valid for sure?" and never explains. A line it does not
accept goes through `validation`'s detailed path from scratch (the standard `json` parser
and the checks that name the field), so every error message, line number and refusal is
exactly that path's. What keeps the two in step:
- orjson accepts a strict subset of what `json.loads` plus `validation.parse_line` accept
  (no NaN/Infinity, no lone surrogates, UTF-8 checked, nesting at most 1,024 deep), and
  parses it to the same values except integers beyond 64 bits, which it reads as floats;
  no check accepts a float where an integer is required, so that difference can only send
  a line to the detailed path.
- Each `*_ok` below accepts a row only when the matching check in `validation` passes:
  the same conditions, written as one boolean expression instead of a raise per field.
  `tests/test_dataset_fastcheck.py` compares them on every refusal the tests know and on
  random mutations of valid rows.
Parsed JSON holds only exact dict, list, str, int, float, bool and None, so `type(x) is`
is the same test as the detailed path's isinstance (bool is not an int there either).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import orjson

# A tuple, as in validation: `in` compares with ==, so an unhashable role is just not one.
_ROLES = ("system", "user", "assistant")
JSONDecodeError = orjson.JSONDecodeError


def parse(raw: bytes) -> Any:
    """The row in `raw`, or raise JSONDecodeError (then the detailed path decides)."""
    return orjson.loads(raw)


def _text(value: Any) -> bool:
    """A string that is not empty or only whitespace (`value.strip()` would be empty)."""
    return type(value) is str and bool(value) and not value.isspace()


def _messages(messages: Any) -> bool:
    if type(messages) is not list or not messages:
        return False
    for message in messages:
        if (
            type(message) is not dict
            or message.get("role") not in _ROLES
            or type(message.get("content")) is not str
        ):
            return False
    return True


def reasoning_ok(row: dict) -> bool:
    steps = row.get("steps")
    if (
        not _text(row.get("prompt"))
        or type(steps) is not list
        or not steps
        or not _text(row.get("final_answer"))
        or ("meta" in row and type(row["meta"]) is not dict)
    ):
        return False
    seen: set[int] = set()
    add = seen.add
    try:  # subscripting a step that is not a dict raises TypeError, a missing key KeyError
        for step in steps:
            i = step["i"]
            if (
                type(step) is not dict
                or type(i) is not int
                or i in seen
                or type(step["type"]) is not str
                or type(step["content"]) is not str
            ):
                return False
            add(i)
    except (KeyError, TypeError):
        return False
    return True


def prompt_completion_ok(row: dict) -> bool:
    return _text(row.get("prompt")) and _text(row.get("completion"))


def prompt_answer_ok(row: dict) -> bool:
    return _text(row.get("prompt")) and _text(row.get("answer"))


def messages_ok(row: dict) -> bool:
    messages = row.get("messages")
    return (
        _messages(messages)
        and messages[-1]["role"] == "assistant"
        and _text(messages[-1]["content"])
    )


def _response_ok(value: Any) -> bool:
    if type(value) is str:
        return _text(value)
    return (
        _messages(value)
        and len(value) == 1
        and value[0]["role"] == "assistant"
        and _text(value[0]["content"])
    )


def preference_ok(row: dict) -> bool:
    prompt = row.get("prompt")
    if type(prompt) is list:
        if not _messages(prompt) or prompt[-1]["role"] == "assistant":
            return False
    elif not _text(prompt):
        return False
    return _response_ok(row.get("chosen")) and _response_ok(row.get("rejected"))


# format -> "certainly a valid row of it" (same keys as validation.ROW_CHECKS).
ROW_OK: dict[str, Callable[[dict], bool]] = {
    "reasoning": reasoning_ok,
    "prompt_completion": prompt_completion_ok,
    "messages": messages_ok,
    "preference": preference_ok,
    "prompt_answer": prompt_answer_ok,
}


class Copier:
    """Hashes the bytes (SHA-256) and copies them to `sink` on a second thread while the
    caller parses: both release the GIL, so on two cores they cost almost nothing. One
    chunk at a time is in flight (memory stays flat) and in order; an error of the sink
    is raised by the next `add` or by `close`, which waits for everything added."""

    def __init__(self, sink: IO[bytes] | None):
        self.digest = hashlib.sha256()
        self.sink = sink
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-copy")
        self.last: Future | None = None

    def add(self, chunk: bytes) -> None:
        if self.last is not None:
            self.last.result()
        self.last = self.pool.submit(self._absorb, chunk)

    def _absorb(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        if self.sink is not None:
            self.sink.write(chunk)

    def close(self) -> str:
        """Wait for every chunk; the hex digest of all of them."""
        self.pool.shutdown(wait=True)
        if self.last is not None:
            self.last.result()
        return self.digest.hexdigest()
