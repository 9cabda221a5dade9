"""The fast path of validation agrees with the detailed one: it accepts a row only when the
detailed check does, orjson accepts a line only when the standard parser does (with the
same values), and a whole file gets the same report either way."""

import json
import random

import pytest

from runs.datasets import fastcheck, validation

from .test_dataset_validation import CHAT, PAIR, REASONING, check, jsonl

ANSWER = {"prompt": "Capital of France?", "answer": "Paris"}
PREFERENCE = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}
PREFERENCE_CHAT = {
    "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
    "chosen": [{"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "assistant", "content": "No."}],
}
VALID = {
    "reasoning": [REASONING],
    "prompt_completion": [PAIR],
    "messages": [CHAT],
    "preference": [PREFERENCE, PREFERENCE_CHAT],
    "prompt_answer": [ANSWER],
}
# Values a mutation puts anywhere: every JSON type, the edge cases of each check.
ODD_VALUES = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    1.0,
    2**64 + 1,
    "",
    " ",
    "\t\n",
    "\u3000",
    "x",
    "assistant",
    "user",
    "system",
    [],
    {},
    ["x"],
    [{}],
    [{"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "u"}],
    [{"role": "assistant", "content": " "}],
    [{"role": ["user"], "content": "u"}],
    {"i": 1, "type": "t", "content": "c"},
    [{"i": 1, "type": "t", "content": "c"}],
    [{"i": 1, "type": "t", "content": "c"}, {"i": 1, "type": "t", "content": "d"}],
    [{"i": True, "type": "t", "content": "c"}],
    {"role": "assistant", "content": "a"},
]


def detailed_ok(row, fmt) -> bool:
    try:
        validation.check_row(row, fmt)
    except validation.RowError:
        return False
    return True


def fast_ok(row, fmt) -> bool:
    return type(row) is dict and fastcheck.ROW_OK[fmt](row)


def containers(value, out):
    """Every dict and list inside `value` (itself included)."""
    if isinstance(value, dict | list):
        out.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            containers(item, out)
    return out


def mutate(row, rng: random.Random):
    """A copy of `row` with one to three random changes somewhere inside it."""
    row = json.loads(json.dumps(row))
    for _ in range(rng.randint(1, 3)):
        place = rng.choice(containers(row, []))
        keys = list(place) if isinstance(place, dict) else list(range(len(place)))
        action = rng.random()
        if isinstance(place, dict) and (action < 0.15 or not keys):
            place[rng.choice(["i", "type", "content", "role", "meta", "steps", "prompt"])] = (
                rng.choice(ODD_VALUES)
            )
        elif action < 0.4 and keys:
            del place[rng.choice(keys)]
        elif action < 0.5 and isinstance(place, list) and place:
            place.append(json.loads(json.dumps(rng.choice(place))))
        elif keys:
            place[rng.choice(keys)] = json.loads(json.dumps(rng.choice(ODD_VALUES)))
    return row


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_the_fast_check_accepts_exactly_the_rows_the_detailed_check_accepts(fmt):
    rng = random.Random(fmt)
    rows = [*VALID[fmt], *(v for values in VALID.values() for v in values), *ODD_VALUES]
    rows += [mutate(rng.choice(VALID[fmt]), rng) for _ in range(4000)]
    outcomes = {True: 0, False: 0}
    for row in rows:
        expected = detailed_ok(row, fmt)
        assert fast_ok(row, fmt) == expected, (fmt, row)
        outcomes[expected] += 1
    assert min(outcomes.values()) > 200, outcomes  # both answers were really exercised


def typed(value) -> list:
    """A value as a flat list of tokens with the type of every part spelled out (1 == 1.0
    == True otherwise); without recursion, as a line may nest 1,000 deep."""
    tokens, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            tokens.append(("object", len(item)))
            for key, v in reversed(item.items()):
                stack += [v, ("key", key)]
        elif isinstance(item, list):
            tokens.append(("array", len(item)))
            stack.extend(reversed(item))
        elif isinstance(item, tuple):
            tokens.append(item)
        elif type(item) is int and not -(2**63) <= item < 2**64:
            tokens.append(("float", repr(float(item))))  # orjson reads these as floats
        else:
            tokens.append((type(item).__name__, repr(item)))
    return tokens


def detailed_parse(raw: bytes):
    try:
        return validation.parse_line(raw.decode("utf-8"))
    except (validation.RowError, UnicodeDecodeError):
        return "refused"


TRICKY_LINES = [
    b"-0",
    b"-0.0",
    b"1e400",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b'"\\ud800"',
    b'"\\udfff x"',
    b'"\\ud83d\\ude00"',
    b'"\xed\xa0\x80"',
    b'"\xc0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\xe9"',
    b'"\xf0\x9f\x98"',
    b"\xef\xbb\xbf{}",
    b"{} \xef\xbb\xbf",
    b"\x0c{}",
    b"{}\x0c",
    b"\xc2\xa0{}",
    b'{"a":1,"a":2,"b":3,"a":4}',
    b"NaN",
    b"[Infinity]",
    b"[-Infinity]",
    b'"\t"',
    b'"\x00"',
    b'"\\u0000"',
    b"[1,]",
    b'{"a":1,}',
    b"01",
    b"1.",
    b".5",
    b"+1",
    b'"\\x"',
    b'"\x7f"',
    b"[" * 1023 + b"]" * 1023,
    b"[" * 1025 + b"]" * 1025,
    b"{}\r",
    b"\r{}",
    b"{}\r\r",
    b"{}\x00",
    b"1E5",
    b"4.9e-324",
    b"// c\n{}",
    b"{'a': 1}",
    b'{"a": 9' + b"9" * 5000 + b"}",
]


def test_orjson_accepts_a_line_only_when_the_standard_parser_does_with_the_same_values():
    rng = random.Random(18)
    lines = list(TRICKY_LINES)
    samples = [json.dumps(r).encode() for values in VALID.values() for r in values]
    alphabet = b'{}[]",:\\ \t\r\x00\x0c-+.0123456789eEtrufalsn\xc3\xa9\xed\xa0\x80\xef\xbb\xbfu'
    for _ in range(20000):
        line = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line) + 1)
            if rng.random() < 0.5 and at < len(line):
                del line[at]
            else:
                line[at:at] = bytes([rng.choice(alphabet)])
        lines.append(bytes(line))
    accepted = 0
    for raw in lines:
        try:
            fast = fastcheck.parse(raw)
        except fastcheck.JSONDecodeError:
            continue
        accepted += 1
        detailed = detailed_parse(raw)
        assert detailed != "refused", raw
        assert typed(fast) == typed(detailed), raw
    assert accepted > 1000


@pytest.mark.parametrize("seed", range(6))
def test_a_file_gets_the_same_report_with_and_without_the_fast_path(seed, monkeypatch):
    rng = random.Random(seed)
    fmt = sorted(VALID)[seed % len(VALID)]
    rows = []
    for _ in range(400):
        choice = rng.random()
        if choice < 0.95:
            rows.append(rng.choice(VALID[fmt]))
        elif choice < 0.98:
            rows.append(mutate(rng.choice(VALID[fmt]), rng))
        else:
            rows.append(rng.choice([b"", b"  ", b"{", b"[1]", b'{"prompt": NaN}', b"x\r"]))
    data = jsonl(*rows).replace(b"\n", b"\r\n", seed % 2)
    chunk = rng.choice([7, 100, 4096, 1 << 20])
    with_fast = check(data, chunk=chunk)
    monkeypatch.setattr(fastcheck, "ROW_OK", {})
    without = check(data, chunk=chunk)
    assert with_fast == without
    assert with_fast.rows > 100 and with_fast.errors


class FullDisk:
    def __init__(self, room: int):
        self.room = room
        self.written = b""

    def write(self, data: bytes) -> int:
        if len(self.written) + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.written += data
        return len(data)


@pytest.mark.parametrize("room", [0, 250, 10**6])
def test_the_copy_on_the_second_thread_keeps_order_and_raises_the_sinks_error(room):
    data = jsonl(*([PAIR] * 50))
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    sink = FullDisk(room)
    if room < len(data):
        with pytest.raises(OSError, match="No space left"):
            validation.validate_stream(chunks, max_bytes=10**6, max_line_bytes=10**6, sink=sink)
        assert len(sink.written) <= room
    else:
        report = validation.validate_stream(
            chunks, max_bytes=10**6, max_line_bytes=10**6, sink=sink
        )
        assert report.ok and sink.written == data
