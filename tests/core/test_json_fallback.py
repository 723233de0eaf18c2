"""The standard-library JSON backend (used where orjson cannot be installed, as in Pyodide) must
accept, refuse and write frames exactly as the orjson backend does."""

from __future__ import annotations

import inspect
import math
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_relay import _json, wire
from peer_relay.core import Config, Core
from peer_relay.events import Delivered, PeerLinked, SendFrame
from peer_relay.identity import Identity

VALID = [
    b'{"to":"' + b"a" * 40 + b'","from":"' + b"b" * 40 + b'","path":[],"nonce":"1",'
    b'"data":{"type":"user","data":{"x":[1,2.5,-0.0,true,false,null,"\\u00e9\\ud83d\\ude00"]}}}',
    b'{"type":"Buffer","data":[1,2,3]}',
    b'{"a":1,"a":2,"b":{"a":3}}',
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"1" * 300,
    b"-0",
    b"-0.0",
    b"1E5",
    b"1e20",
    b"1.5e-7",
    b"0.1",
    b"[1e308]",
    b' \t\n\r{"a" : [ ] }\n',
    '"é😀\u2028"'.encode(),
    b'"\\u0000\\n\\"\\\\\\/"',
    b'"\\\\ud800"',
    b'["[[[[", "{{{{", "\\"["]',
    b'{"a":"\\\\ud800","a":1}',  # an escaped backslash and text, then a duplicate key
    b"[" * 1024 + b"]" * 1024,
    b"true",
]

INVALID = [
    b"",
    b"   ",
    b"NaN",
    b"[Infinity]",
    b"[-Infinity]",
    b"1e400",
    b"-1e400",
    b"1" * 400,
    b"1" * 5000,
    b'"\\ud800"',
    b'"\\udc00x"',
    b'["\\ud83d"]',
    b'{"\\ude00":1}',
    b'{"a":"\\ud800","a":1}',  # a lone surrogate in a value that a duplicate key replaces
    b'[{"k":"\\udc00x","k":0}]',
    b'{"\\ud800":1,"\\ud800":2}',
    b'"\xed\xa0\x80"',
    b'"\xff"',
    b"\xef\xbb\xbf{}",
    b'"\x01"',
    b'"a\tb"',
    b"{}x",
    b"[1,]",
    b"01",
    b"1.",
    b".5",
    b"[-]",
    b"{'a':1}",
    b"[" * 1025 + b"]" * 1025,
    b"[" * 100_000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b"\x00",
    b'{"a"}',
]


@pytest.fixture
def fallback() -> Iterator[None]:
    _json.use("json")
    try:
        yield
    finally:
        _json.use("orjson")


def with_backend(name: str, fn: Callable[[], Any]) -> Any:
    previous = _json.BACKEND
    _json.use(name)
    try:
        return fn()
    finally:
        _json.use(previous)


def outcome(frame: bytes | str) -> tuple[str, Any]:
    try:
        return "ok", wire.loads(frame, 1 << 20)
    except wire.WireError as exc:
        return "error", exc.reason


def same_value(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if type(x) is list:
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif type(x) is dict:
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif type(x) is float:
            if x != y or math.copysign(1, x) != math.copysign(1, y):
                return False
        elif x != y:
            return False
    return True


def test_the_default_backend_is_orjson_here() -> None:
    assert _json.BACKEND == "orjson"


@pytest.mark.parametrize("frame", VALID, ids=lambda f: repr(f[:30]))
def test_valid_frames_parse_alike(frame: bytes) -> None:
    fast = with_backend("orjson", lambda: outcome(frame))
    slow = with_backend("json", lambda: outcome(frame))
    assert fast[0] == "ok", fast
    assert slow[0] == "ok", slow
    assert same_value(fast[1], slow[1])
    # Given as text (as a WebRTC data channel hands frames over), too.
    text = frame.decode()
    assert same_value(with_backend("json", lambda: outcome(text))[1], fast[1])


@pytest.mark.parametrize("frame", INVALID, ids=lambda f: repr(f[:30]))
def test_invalid_frames_are_refused_alike(frame: bytes) -> None:
    fast = with_backend("orjson", lambda: outcome(frame))
    assert fast in (("error", "malformed-json"), ("error", "too-deep"))
    assert with_backend("json", lambda: outcome(frame)) == fast


@pytest.mark.parametrize("backend", ["orjson", "json"])
def test_raw_lone_surrogate_in_text_is_refused(backend: str) -> None:
    assert with_backend(backend, lambda: outcome('"\ud800"')) == ("error", "malformed-json")


@pytest.mark.parametrize("backend", ["orjson", "json"])
def test_oversize_is_refused_before_parsing(backend: str) -> None:
    def run() -> str:
        with pytest.raises(wire.WireError) as info:
            wire.loads(b"[" + b"1," * 100 + b"1]", 100)
        return info.value.reason

    assert with_backend(backend, run) == "oversize"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_document_parses_and_writes_alike(value: Any) -> None:
    frame = orjson.dumps(value)
    fast = with_backend("orjson", lambda: wire.loads(frame, 1 << 20))
    slow = with_backend("json", lambda: wire.loads(frame, 1 << 20))
    assert same_value(fast, slow)
    written_fast = orjson.dumps(fast)
    written_slow = _json.std_dumps(slow)
    # Floats may be spelt differently (orjson 0.00006103515625 and 1e-7, json 6.103515625e-05
    # and 1e-07); the values are the same.
    if written_fast != written_slow:
        assert has_float(fast)
        assert same_value(orjson.loads(written_slow), fast)


def has_float(value: Any) -> bool:
    if type(value) is list:
        return any(has_float(item) for item in value)
    if type(value) is dict:
        return any(has_float(item) for item in value.values())
    return type(value) is float


def test_dumps_refuses_what_orjson_refuses() -> None:
    for bad in ("\ud800", {"a": [object()]}):
        with pytest.raises(TypeError):
            orjson.dumps(bad)
        with pytest.raises(TypeError):
            _json.std_dumps(bad)
    # orjson writes NaN as null, the fallback refuses it; neither reaches the wire, because
    # wire.canonical refuses such data before any frame is written.
    with pytest.raises(TypeError):
        _json.std_dumps([float("nan")])


def test_fragments_are_spliced() -> None:
    value = {"a": _json.Fragment(b'{"x":[1,2]}'), "b": [_json.Fragment('"t"')], "c": "d"}
    assert _json.std_dumps(value) == b'{"a":{"x":[1,2]},"b":["t"],"c":"d"}'
    assert orjson.dumps({"a": orjson.Fragment(b'{"x":[1,2]}')}) == b'{"a":{"x":[1,2]}}'
    # A string that looks like the marker is not taken for a fragment.
    with pytest.raises(TypeError):
        _json.std_dumps({"a": _json.Fragment(b"1"), "b": "\x00peer-relay fragment\x00"})
    assert _json.std_dumps({"b": "\x00peer-relay fragment\x00"}) == orjson.dumps(
        {"b": "\x00peer-relay fragment\x00"}
    )


def frames_written() -> list[bytes]:
    a, b = "a" * 40, "b" * 40
    data = wire.canonical({"type": "user", "data": {"é": [1, 2.5, "x\n"], "n": None}})
    auth = {"key": "k" * 43, "sig": "s" * 86, "ts": 1_700_000_000_000}
    env = wire.parse_envelope(orjson.loads(wire.origin_frame(a, b, "7", data, auth, [b, a])))
    return [
        wire.origin_frame(a, b, "7", data, auth),
        wire.origin_frame(a, b, "7", data, None, [b, a]),
        wire.relay_frame(env, "c" * 40),
        wire.hello_frame(bytes(range(20)), b"\x01" * 32, b"\x02" * 16),
        wire.hello_frame(bytes(range(20)), None, None),
        wire.proof_frame(b"\x03" * 64),
        wire.signed_bytes(a, b, 'n"\u2028', 123, data),
    ]


def test_frames_written_are_identical() -> None:
    assert with_backend("json", frames_written) == with_backend("orjson", frames_written)


def test_two_cores_exchange_signed_messages_on_the_fallback(fallback: None) -> None:
    now = 1_700_000_000.0
    ida, idb = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    a = Core(ida, Config(), rng=random.Random(1), now=now)
    b = Core(idb, Config(url="ws://b"), rng=random.Random(2), now=now)
    ha = 1
    a.bootstrap(["ws://b"], now)
    hb = b.link_accepted(now)
    a.link_connected(ha, now)
    delivered: list[Delivered] = []
    linked: list[bytes] = []

    def pump() -> None:
        for _ in range(20):
            moved = False
            for core, other, handle in ((a, b, hb), (b, a, ha)):
                for event in core.events():
                    if isinstance(event, SendFrame):
                        other.frame_received(handle, event.frame, now)
                        moved = True
                    elif isinstance(event, Delivered):
                        delivered.append(event)
                    elif isinstance(event, PeerLinked):
                        linked.append(event.peer_id)
            if not moved:
                return

    pump()
    assert sorted(linked) == sorted([ida.id, idb.id])
    a.send(idb.id, {"hello": ["wörld", 1.5, 2**50]}, now)
    b.send(ida.id, "back", now)
    pump()
    got = {(d.sender, repr(d.data), d.verified) for d in delivered}
    assert (ida.id, repr({"hello": ["wörld", 1.5, 2**50]}), True) in got
    assert (idb.id, repr("back"), True) in got


def stack_depth() -> int:
    """How many frames the stack holds below the caller's."""
    frame = inspect.currentframe()
    depth = 0
    while frame is not None and frame.f_back is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def near_the_recursion_limit(call: Callable[[], Any], room: int = 50) -> Any:
    """``call()`` with only ``room`` frames left before the recursion limit, as from a deep
    handler or a deeply nested application."""

    def down(levels: int) -> Any:
        return call() if levels <= 0 else down(levels - 1)

    return down(sys.getrecursionlimit() - stack_depth() - room)


@pytest.mark.parametrize("depth", [100, 300, 1024])
def test_nesting_orjson_takes_parses_however_deep_the_callers_stack_is(depth: int) -> None:
    """json recurses once per level; the fallback makes room for it wherever it is called
    from (it once raised the limit to a fixed height, and refused 300 levels called from
    deep in the stack), and puts the limit back."""
    frame = b'{"a":[' * (depth // 2) + b"1" + b"]}" * (depth // 2)  # two levels each
    limit = sys.getrecursionlimit()
    deep = near_the_recursion_limit(lambda: with_backend("json", lambda: outcome(frame)))
    assert deep[0] == "ok" and same_value(deep[1], orjson.loads(frame))
    assert sys.getrecursionlimit() == limit


def test_nesting_is_measured_in_linear_time() -> None:
    """Deep nesting then an unterminated string full of escaped quotes: refused at once (the
    scan for nesting depth used to restart at every quote, in quadratic time: minutes for a
    frame of a few hundred kilobytes)."""
    frame = b"[" * 1025 + b'"' + b'\\"' * 200_000
    # Quadratic, this takes minutes: the suite's timeout fails it (no timed assertion here).
    assert with_backend("json", lambda: outcome(frame)) == ("error", "too-deep")
