"""Property tests of the signed form: RFC 8785 canonical JSON survives re-serialisation.

An origin signs the canonical form of ``data``; relays (ours, the stdlib's ``json``, orjson, and
0.0.2's JavaScript) may parse and re-serialise the envelope on the way, and the destination must
still verify it. Everything runs on two real cores (real Ed25519) linked in memory.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import Delivered, DialWebSocket, SendFrame
from peer_relay.identity import Identity
from peer_relay.wire import MAX_SAFE_INTEGER, WireError

NOW = 1_760_000_000.0

# ----------------------------------------------------------------------------- strategies

text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # no lone surrogates
        st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8"),  # astral
        st.sampled_from('"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029\ufeff'),
    ),
    max_size=12,
)
safe_ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e21, 1e-7, 5e-324, 2.0**53, 2.0**64, 1e20, 123456789e12]),
)
ijson_leaves = st.one_of(st.none(), st.booleans(), safe_ints, finite_floats, text)
ijson = st.recursive(
    ijson_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=5)),
    max_leaves=25,
)


# ----------------------------------------------------------------------------- JavaScript


def js_number(x: float) -> str:
    """ECMAScript Number::toString, which JSON.stringify uses for numbers."""
    if math.isnan(x) or math.isinf(x):
        return "null"
    if x == 0:
        return "0"
    if x < 0:
        return "-" + js_number(-x)
    _sign, digit_tuple, exponent = Decimal(repr(x)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_SHORT_ESCAPES["\t"] = "\\t"


def js_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_INDEX = re.compile(r"0|[1-9][0-9]*")


def _is_array_index(key: str) -> bool:
    return bool(_INDEX.fullmatch(key)) and int(key) < 2**32 - 1


def js_stringify(value: Any) -> str:
    """JSON.stringify of what JSON.parse made: every number a double, and objects in JavaScript's
    property order (array-index keys first, ascending; then the others as inserted)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return js_number(float(value))
    if isinstance(value, str):
        return js_string(value)
    if isinstance(value, list):
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    assert isinstance(value, dict)
    index_keys = sorted((k for k in value if _is_array_index(k)), key=int)
    keys = index_keys + [k for k in value if not _is_array_index(k)]
    return "{" + ",".join(js_string(k) + ":" + js_stringify(value[k]) for k in keys) + "}"


def js_roundtrip(frame: bytes) -> bytes:
    parsed = json.loads(frame, parse_int=float)  # JSON.parse: every number is a double
    return js_stringify(parsed).encode()


RESERIALISE: dict[str, Callable[[bytes], bytes]] = {
    "as sent": lambda frame: frame,
    "json": lambda frame: json.dumps(json.loads(frame)).encode(),
    "json-indented": lambda frame: json.dumps(json.loads(frame), indent=1).encode(),
    "orjson": lambda frame: orjson.dumps(orjson.loads(frame)),
    "javascript": js_roundtrip,
    "relay": lambda frame: relayed(frame),
}


def relayed(frame: bytes) -> bytes:
    """``frame`` as one of our relays writes it on: here the relay is its origin again, the
    peer at the other end of the destination's link (a frame's last hop is its sender)."""
    env = wire.parse_envelope(wire.loads_members(frame, 1 << 20))
    return wire.relay_frame(env, env.path[0])


# ----------------------------------------------------------------------------- two linked cores


class Pair:
    """An origin core and a destination core, linked in memory (the origin dialled)."""

    def __init__(self) -> None:
        rng = random.Random(7)
        # Plain signed messages (sessions off): their signatures are what is tested here.
        plain = Config(sessions=False)
        self.origin = Core(Identity.generate(), plain, rng=rng, now=NOW)
        self.dest = Core(Identity.generate(), plain, rng=random.Random(8), now=NOW)
        self.dest_handle = self.dest.link_accepted(NOW)
        self.origin.bootstrap(["ws://dest"], NOW)
        dial = next(e for e in self.origin.events() if isinstance(e, DialWebSocket))
        self.origin_handle = dial.handle
        self.origin.link_connected(self.origin_handle, NOW)
        self.pump()
        assert self.origin.peers == [self.dest.id] and self.dest.peers == [self.origin.id]

    def pump(self) -> list[Delivered]:
        delivered: list[Delivered] = []
        for _ in range(20):
            moved = False
            for src, dst, handle in (
                (self.origin, self.dest, self.dest_handle),
                (self.dest, self.origin, self.origin_handle),
            ):
                for event in src.events():
                    if isinstance(event, SendFrame):
                        dst.frame_received(handle, event.frame, NOW)
                        moved = True
                    elif isinstance(event, Delivered) and src is self.dest:
                        delivered.append(event)
            if not moved:
                break
        delivered.extend(e for e in self.dest.events() if isinstance(e, Delivered))
        return delivered

    def originate(self, value: Any) -> bytes:
        """The frame the origin sends for ``value``."""
        self.origin.send(self.dest.id, value, NOW)
        frames = [
            e.frame
            for e in self.origin.events()
            if isinstance(e, SendFrame) and not e.frame.startswith(b'{"pr":')  # no pings
        ]
        assert len(frames) == 1
        return frames[0]

    def receive(self, frame: bytes) -> list[Delivered]:
        self.dest.frame_received(self.dest_handle, frame, NOW)
        return [e for e in self.dest.events() if isinstance(e, Delivered)]


@pytest.fixture(scope="module")
def pair() -> Pair:
    return Pair()


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(value=ijson, how=st.sampled_from(sorted(RESERIALISE)))
def test_any_ijson_value_signs_and_verifies_after_reserialisation(
    pair: Pair, value: Any, how: str
) -> None:
    frame = RESERIALISE[how](pair.originate(value))
    delivered = pair.receive(frame)
    assert len(delivered) == 1, (how, frame, pair.dest.stats.dropped)
    got = delivered[0]
    assert got.verified and got.sender == pair.origin.id
    assert wire.canonical(got.data) == wire.canonical(value)
    assert got.data == value  # numerically: 1.0 == 1, 1e20 == 10**20


@SETTINGS
@given(value=ijson)
def test_canonical_is_stable_under_its_own_round_trips(value: Any) -> None:
    """What a destination recomputes from the parsed text is what the origin signed.

    (``canonical`` alone would refuse an integral double >= 2**53, which the text writes as plain
    digits; the destination reads those as the doubles they are.)
    """
    once = wire.canonical(value)
    for text in (once, js_roundtrip(once), json.dumps(json.loads(once)).encode()):
        for parse in (orjson.loads, json.loads):
            again, denoted = wire.canonical_received(parse(text))
            assert again == once
            assert denoted == value


@SETTINGS
@given(x=finite_floats)
def test_numbers_are_written_as_javascript_writes_them(x: float) -> None:
    assert wire.canonical(x).decode() == js_number(x)


@SETTINGS
@given(value=st.dictionaries(text, st.integers(0, 9), max_size=8))
def test_keys_are_sorted_by_utf16_code_units(value: dict[str, int]) -> None:
    keys = list(orjson.loads(wire.canonical(value)))
    assert keys == sorted(value, key=lambda k: k.encode("utf-16-be"))


# Non-I-JSON: a bad leaf or key anywhere in an otherwise fine value.

bad_leaves = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 2**53, -(2**53), 2**64, -(2**70)]),
    st.integers(min_value=2**53),
    st.integers(max_value=-(2**53)),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.binary(max_size=4),
    st.builds(object),
    st.sets(st.integers(0, 3), max_size=2),
)
bad_keys = st.one_of(st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))


def embed(leaf: Any) -> st.SearchStrategy[Any]:
    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.builds(
                lambda xs, i, v: [*xs[:i], v, *xs[i:]],
                st.lists(ijson, max_size=3),
                st.integers(0, 3),
                inner,
            ),
            st.builds(
                lambda d, k, v: {**d, k: v}, st.dictionaries(text, ijson, max_size=3), text, inner
            ),
        )

    return st.recursive(st.just(leaf), nest, max_leaves=4)


@SETTINGS
@given(data=st.data(), leaf=bad_leaves)
def test_non_ijson_values_raise_value_error(pair: Pair, data: st.DataObject, leaf: Any) -> None:
    value = data.draw(embed(leaf))
    with pytest.raises(ValueError):
        wire.canonical(value)
    with pytest.raises(ValueError):
        pair.origin.send(pair.dest.id, value, NOW)
    assert pair.origin.events() == []


@SETTINGS
@given(data=st.data(), key=bad_keys)
def test_non_string_keys_raise_value_error(data: st.DataObject, key: Any) -> None:
    value = data.draw(embed({key: 1}))
    with pytest.raises(ValueError):
        wire.canonical(value)


def test_too_deep_raises_value_error() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(ValueError):
        wire.canonical(value)


# Garbage where the verify path reads: it must count a drop, never raise, never deliver.


def b64_of_any_length() -> st.SearchStrategy[str]:
    return st.binary(max_size=80).map(wire.b64encode)


garbage_json = st.recursive(
    st.one_of(ijson_leaves, b64_of_any_length(), st.integers()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)
auth_members = st.one_of(
    garbage_json,
    st.fixed_dictionaries(
        {},
        optional={
            "key": st.one_of(b64_of_any_length(), garbage_json),
            "sig": st.one_of(b64_of_any_length(), garbage_json),
            "ts": st.one_of(st.integers(), st.floats(), st.just(int(NOW * 1000)), garbage_json),
            "extra": garbage_json,
        },
    ),
)


@SETTINGS
@given(auth=auth_members)
def test_parse_auth_raises_only_wire_errors(auth: Any) -> None:
    try:
        parsed = wire.parse_auth(auth)
    except WireError as exc:
        assert exc.reason in {"bad-auth", "bad-signature"}
    else:
        assert len(parsed.key) == 32 and len(parsed.sig) == 64
        assert 0 <= parsed.ts <= MAX_SAFE_INTEGER


@SETTINGS
@given(auth=auth_members, body=garbage_json, nonce=st.text(min_size=1, max_size=20))
def test_receive_path_never_raises_on_garbage_auth(
    pair: Pair, auth: Any, body: Any, nonce: str
) -> None:
    origin = pair.origin.id.hex()
    env = {
        "to": pair.dest.id.hex(),
        "from": origin,
        "path": [origin],
        "nonce": nonce,
        "data": {"type": "user", "data": body},
        "auth": auth,
    }
    try:
        frame = json.dumps(env, allow_nan=False).encode()
    except ValueError:
        assume(False)
    before = sum(pair.dest.stats.dropped.values())
    assert pair.receive(frame) == []
    assert sum(pair.dest.stats.dropped.values()) == before + 1
    assert pair.dest.peers == [pair.origin.id], "a forged message is not a link error"


@SETTINGS
@given(auth=auth_members)
def test_a_genuine_signature_with_garbage_next_to_it_still_holds(pair: Pair, auth: Any) -> None:
    """Extra members in auth do not matter; a genuine signature verifies, anything else fails."""
    frame = orjson.loads(pair.originate({"genuine": True}))
    genuine = frame["auth"]
    if isinstance(auth, dict):
        frame["auth"] = {**auth, **{k: genuine[k] for k in ("key", "sig", "ts")}}
    try:
        text = json.dumps(frame, allow_nan=False).encode()
    except ValueError:
        assume(False)
    delivered = pair.receive(text)
    assert len(delivered) == 1 and delivered[0].verified


@SETTINGS
@given(value=ijson, backend=st.sampled_from(["orjson", "json"]))
def test_the_fast_path_writes_what_rfc8785_writes(value: Any, backend: str) -> None:
    """Plain values skip the pure-Python canonicaliser; their bytes must not change."""
    from peer_relay import _json

    _json.use(backend)
    try:
        assert wire.canonical(value) == rfc8785.dumps(value)
    finally:
        _json.use("orjson")


def test_a_cyclic_payload_is_refused_not_looped_over() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError):
        wire.canonical({"a": cycle})
