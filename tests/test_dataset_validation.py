"""The streaming validator on its own: every accepted format, every deliberate refusal with
its line number and field, limits, and independence from how the bytes are chunked."""

import hashlib
import json

import pytest

from runs.datasets import validation

REASONING = {
    "prompt": "What is 2 + 3?",
    "steps": [
        {"i": 1, "type": "restate", "content": "Add 2 and 3."},
        {"i": 2, "type": "compute", "content": "2 + 3 = 5."},
    ],
    "final_answer": "5",
    "meta": {"source": "test"},
}
PAIR = {"prompt": "Say hi.", "completion": "Hi!"}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}


def jsonl(*rows) -> bytes:
    return b"".join(
        (row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows
    )


def check(data: bytes, *, chunk=1024 * 1024, max_bytes=10**9, max_line=10**6, fmt=None):
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return validation.validate_stream(
        chunks, declared_format=fmt, max_bytes=max_bytes, max_line_bytes=max_line
    )


def only_error(report) -> str:
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


# --- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row,fmt", [(REASONING, "reasoning"), (PAIR, "prompt_completion"), (CHAT, "messages")]
)
def test_each_accepted_format_is_detected_and_counted(row, fmt):
    data = jsonl(row, row, row)
    report = check(data)
    assert report.ok, report.errors
    assert (report.format, report.rows, report.size_bytes) == (fmt, 3, len(data))
    assert report.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "row,fmt", [(REASONING, "reasoning"), (PAIR, "prompt_completion"), (CHAT, "messages")]
)
def test_a_declared_format_is_used_instead_of_detection(row, fmt):
    assert check(jsonl(row), fmt=fmt).format == fmt


def test_reasoning_rows_may_omit_meta_and_carry_extra_fields():
    row = {k: v for k, v in REASONING.items() if k != "meta"} | {"id": 7}
    assert check(jsonl(row)).ok


def test_a_leading_byte_order_mark_is_ignored_but_kept_in_the_hash():
    data = b"\xef\xbb\xbf" + jsonl(PAIR, PAIR)
    report = check(data)
    assert report.ok and report.rows == 2 and report.had_bom
    assert report.sha256 == hashlib.sha256(data).hexdigest()


def test_a_byte_order_mark_split_across_chunks_is_still_recognised():
    report = check(b"\xef\xbb\xbf" + jsonl(PAIR), chunk=1)
    assert report.ok and report.had_bom


def test_blank_and_whitespace_lines_are_skipped_but_keep_line_numbers():
    data = jsonl(PAIR) + b"\n   \n\t\n" + jsonl({"prompt": "x"})
    report = check(data)
    assert report.blank_lines == 3
    assert only_error(report).startswith("line 5: ")


def test_crlf_line_ends_and_a_missing_final_newline_are_accepted():
    data = json.dumps(PAIR).encode() + b"\r\n" + json.dumps(PAIR).encode()
    report = check(data)
    assert report.ok and report.rows == 2


def test_a_file_of_only_blank_lines_has_no_rows():
    report = check(b"\n\n  \n")
    assert not report.ok
    assert report.summary() == "the dataset has no rows"


def test_an_empty_file_has_no_rows():
    assert check(b"").summary() == "the dataset has no rows"


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1024 * 1024])
def test_results_do_not_depend_on_how_the_bytes_are_chunked(chunk):
    data = b"\xef\xbb\xbf" + jsonl(PAIR, CHAT, b"", PAIR, {"prompt": 3, "completion": "x"}, PAIR)
    report = check(data, chunk=chunk)
    assert report.rows == 3
    assert report.errors == [
        "line 2: missing field 'prompt' (this row looks like messages, but the file is "
        "prompt_completion, detected from line 1)",
        "line 5: field 'prompt' must be a string, not a number",
    ]
    assert report.sha256 == hashlib.sha256(data).hexdigest()


# --- rejected, each with its line and field ---------------------------------------------


def _without(row, key):
    return {k: v for k, v in row.items() if k != key}


@pytest.mark.parametrize(
    "fmt,bad,message",
    [
        ("reasoning", _without(REASONING, "prompt"), "missing field 'prompt'"),
        ("reasoning", _without(REASONING, "steps"), "missing field 'steps'"),
        ("reasoning", _without(REASONING, "final_answer"), "missing field 'final_answer'"),
        ("reasoning", REASONING | {"prompt": 5}, "field 'prompt' must be a string, not a number"),
        ("reasoning", REASONING | {"prompt": "  "}, "field 'prompt' must not be empty"),
        (
            "reasoning",
            REASONING | {"steps": {"i": 1}},
            "field 'steps' must be an array, not an object",
        ),
        ("reasoning", REASONING | {"steps": []}, "field 'steps' must not be empty"),
        (
            "reasoning",
            REASONING | {"steps": ["x"]},
            "field 'steps[0]' must be an object, not a string",
        ),
        (
            "reasoning",
            REASONING | {"steps": [{"type": "t", "content": "c"}]},
            "missing field 'steps[0].i'",
        ),
        (
            "reasoning",
            REASONING | {"steps": [{"i": "1", "type": "t", "content": "c"}]},
            "field 'steps[0].i' must be an integer, not a string",
        ),
        (
            "reasoning",
            REASONING | {"steps": [{"i": True, "type": "t", "content": "c"}]},
            "field 'steps[0].i' must be an integer, not a boolean",
        ),
        (
            "reasoning",
            REASONING | {"steps": [{"i": 1, "content": "c"}]},
            "missing field 'steps[0].type'",
        ),
        (
            "reasoning",
            REASONING | {"steps": [{"i": 1, "type": "t", "content": None}]},
            "field 'steps[0].content' must be a string, not null",
        ),
        (
            "reasoning",
            REASONING
            | {
                "steps": [
                    {"i": 1, "type": "a", "content": "x"},
                    {"i": 2, "type": "b", "content": "y"},
                    {"i": 1, "type": "c", "content": "z"},
                ]
            },
            "field 'steps[2].i' repeats step index 1 (already used by steps[0])",
        ),
        (
            "reasoning",
            REASONING | {"final_answer": 5},
            "field 'final_answer' must be a string, not a number",
        ),
        ("reasoning", REASONING | {"meta": "x"}, "field 'meta' must be an object, not a string"),
        ("prompt_completion", PAIR | {"completion": ""}, "field 'completion' must not be empty"),
        (
            "prompt_completion",
            PAIR | {"completion": ["a"]},
            "field 'completion' must be a string, not an array",
        ),
        ("prompt_completion", {"completion": "x"}, "missing field 'prompt'"),
        ("messages", {"messages": "hi"}, "field 'messages' must be an array, not a string"),
        ("messages", {"messages": []}, "field 'messages' must not be empty"),
        (
            "messages",
            {"messages": [["user", "x"]]},
            "field 'messages[0]' must be an object, not an array",
        ),
        ("messages", {"messages": [{"content": "x"}]}, "missing field 'messages[0].role'"),
        (
            "messages",
            {"messages": [{"role": "bot", "content": "x"}]},
            "field 'messages[0].role' must be one of system, user, assistant",
        ),
        ("messages", {"messages": [{"role": "user"}]}, "missing field 'messages[0].content'"),
        (
            "messages",
            {"messages": [{"role": "user", "content": 1}]},
            "field 'messages[0].content' must be a string, not a number",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "x"}]},
            "field 'messages[0].role' must be 'assistant' (the answer)",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
            "field 'messages[1].content' must not be empty",
        ),
    ],
)
def test_a_bad_row_is_reported_with_its_line_number_and_field(fmt, bad, message):
    good = {"reasoning": REASONING, "prompt_completion": PAIR, "messages": CHAT}[fmt]
    report = check(jsonl(good, good, bad, good))
    assert only_error(report) == f"line 3: {message}"
    assert report.rows == 3


@pytest.mark.parametrize(
    "line,message",
    [
        (b'{"prompt": "a", "completion": ', "line 2: not valid JSON (Expecting value at column"),
        (b'{"prompt": "a"} {"b": 1}', "line 2: not valid JSON (Extra data at column 17)"),
        (b"[1, 2]", "line 2: a row must be a JSON object, not an array"),
        (b'"text"', "line 2: a row must be a JSON object, not a string"),
        (b'{"prompt": "a", "completion": NaN}', "line 2: not valid JSON (NaN is not valid JSON)"),
        (b'{"prompt": "a", "completion": "b", "x": Infinity}', "line 2: not valid JSON (Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "line 2: not valid JSON (nested too deeply)"),
        (
            b'{"prompt": "a", "completion": "b", "n": ' + b"9" * 5000 + b"}",
            "line 2: not valid JSON",
        ),
        (
            b'{"prompt": "a", "completion": "x\\ud800y"}',
            "line 2: field 'completion' holds an unpaired surrogate escape",
        ),
        (
            b'{"prompt": "a", "completion": "b", "meta": {"k": ["\\udfff"]}}',
            "line 2: field 'meta.k[0]' holds an unpaired surrogate escape",
        ),
        (
            b'{"prompt": "caf\xe9", "completion": "b"}',
            "line 2: not valid UTF-8 (byte 16 of the line)",
        ),
        (
            b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}',
            "line 2: a byte-order mark in the middle",
        ),
        (b'{"prompt": "a\tb", "completion": "c"}', "line 2: not valid JSON (Invalid control"),
    ],
)
def test_lines_that_are_not_valid_json_text_are_refused_deliberately(line, message):
    report = check(jsonl(PAIR, line, PAIR))
    assert only_error(report).startswith(message)


def test_escaped_surrogate_pairs_are_valid_text():
    assert check(jsonl(b'{"prompt": "\\ud83d\\ude00", "completion": "ok"}')).ok


def test_a_first_row_of_unknown_shape_says_which_fields_are_expected():
    message = only_error(check(jsonl({"question": "q", "answer": "a"})))
    assert message.startswith("line 1: cannot tell the format; expected fields 'prompt' and")
    assert "'messages'" in message


def test_a_utf16_file_is_refused_as_a_whole():
    data = "\ufeff".encode("utf-16-le") + json.dumps(PAIR).encode("utf-16-le")
    assert only_error(check(b"\xff\xfe" + data[2:])) == (
        "the file is UTF-16 encoded; save it as UTF-8"
    )


def test_reading_stops_after_the_first_twenty_errors():
    data = jsonl(PAIR, *([{"prompt": "x"}] * 500))
    report = check(data, chunk=100)
    assert len(report.errors) == validation.MAX_REPORTED_ERRORS
    assert report.errors[0].startswith("line 2: ") and report.errors[-1].startswith("line 21: ")
    assert report.stopped_early
    assert "stopped reading after 20 errors" in report.summary()
    assert report.size_bytes < len(data)


# --- limits -----------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_as_too_large():
    data = jsonl(*([PAIR] * 100))
    report = check(data, max_bytes=len(data) - 1, chunk=500)
    assert report.too_large
    assert only_error(report) == "the file is larger than the limit of 4.2 KiB (4299 bytes)"


def test_a_file_exactly_at_the_size_limit_is_accepted():
    data = jsonl(*([PAIR] * 10))
    assert check(data, max_bytes=len(data)).ok


@pytest.mark.parametrize("chunk", [16, 4096])
def test_a_line_over_the_length_limit_is_refused_with_its_number(chunk):
    long_row = {"prompt": "p" * 300, "completion": "c"}
    data = jsonl(PAIR, PAIR, long_row, PAIR)
    report = check(data, max_line=200, chunk=chunk)
    assert only_error(report) == "line 3: longer than the limit of 200 bytes"


def test_an_unterminated_last_line_over_the_length_limit_is_refused():
    data = jsonl(PAIR) + json.dumps({"prompt": "p" * 300, "completion": "c"}).encode()
    assert only_error(check(data, max_line=200)) == "line 2: longer than the limit of 200 bytes"


def test_a_line_exactly_at_the_length_limit_is_accepted():
    line = json.dumps(PAIR).encode()
    assert check(jsonl(line), max_line=len(line)).ok


def test_the_sink_receives_exactly_the_bytes_that_were_read(tmp_path):
    data = b"\xef\xbb\xbf" + jsonl(PAIR, CHAT)
    with open(tmp_path / "copy", "wb") as sink:
        validation.validate_stream(
            [data[:5], data[5:]], max_bytes=10**6, max_line_bytes=10**6, sink=sink
        )
    assert (tmp_path / "copy").read_bytes() == data


def test_stored_rows_are_read_back_with_the_line_numbers_validation_uses(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(PAIR) + b"\n\r\n" + jsonl(CHAT))
    assert [n for n, _ in validation.iter_numbered_rows(path)] == [1, 4]
