"""Issue 13, "no frame may break a node": structure-aware fuzzing of the wire's parsers, of the
JSON backends and of ``Core.frame_received``.

Frames start from what peers really exchange (link hellos, proofs, pings and pongs, and
envelopes of every message type, signed with real Ed25519 keys) and are then mutated: a value
swapped for one of another type, integers past 2**53, 2**63 and 2**64, floats at the ends of
the double range, long strings, lone surrogates (escaped, or raw and so invalid UTF-8), duplicate
keys, nesting past every limit (128, 254, 1024 and far beyond), ids of the wrong length or form,
paths of 0, 20 and 21 hops, truncation and flipped bytes. An attacker signs what it mutated with
its own key when it likes, so mutated payloads reach the handlers too.

What must hold: a parser raises nothing but its documented error, and what it accepts keeps its
contract; both JSON backends accept and refuse every frame alike; ``frame_received`` never
raises, whatever the link's state, and afterwards the core still works: its honest links stay
open, every frame it sends them is strict JSON its peers can read and never a forgery in its
own name, honest messages are still relayed and delivered, and every bounded structure is
within its bound. ``benchmarks/fuzz.py`` feeds a million such frames the same way.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peer_relay import _json, wire
from peer_relay.core import Config, Core
from peer_relay.events import (
    CloseLink,
    Delivered,
    DialWebSocket,
    Event,
    SendFrame,
    SignalIn,
    StartWebRTC,
)
from peer_relay.identity import Identity, verify_ed25519
from peer_relay.transports import signals

from .test_json_fallback import near_the_recursion_limit, same_value

T0: Final = 1_700_000_000.0
TS: Final = int(T0 * 1000)
"""Every signed frame is dated when the target starts: within its replay window all along."""

# Real Ed25519 keys, fixed so that every run (and every shrink) sees the same ids.
TARGET = Identity(bytes([0x71]) * 32)
HONEST_A = Identity(bytes([0x72]) * 32)
HONEST_B = Identity(bytes([0x73]) * 32)
ATTACKER = Identity(bytes([0x74]) * 32)
SYBIL = Identity(bytes([0x75]) * 32)
"""A second key of the attacker's: a peer the target may try to link to through it."""
SIGNERS: Final = {me.id.hex(): me for me in (ATTACKER, SYBIL)}
STRANGER: Final = "5a" * 20
IDS: Final = [me.id.hex() for me in (TARGET, HONEST_A, HONEST_B, ATTACKER, SYBIL)] + [STRANGER]


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: ``examples`` examples, no deadline (some frames
    are megabytes)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------------------- frames


class Raw:
    """JSON text written into a document as it is: what no serialiser writes."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


class Pairs:
    """An object written with its keys in this order, repeats included (duplicate keys)."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"Pairs({self.items!r})"


def write(value: Any) -> bytes:
    """``value`` as JSON text, whatever it holds: integers of any size, NaN and infinities
    (as ``NaN`` and ``1e999``), lone surrogates (as invalid UTF-8), :class:`Raw` and
    :class:`Pairs`."""
    kind = type(value)
    if value is None or kind is bool:
        return b"null" if value is None else (b"true" if value else b"false")
    if kind is int:
        return str(value).encode()
    if kind is float:
        if math.isnan(value):
            return b"NaN"
        if math.isinf(value):
            return b"1e999" if value > 0 else b"-1e999"
        return repr(value).encode()
    if kind is str:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if isinstance(value, Raw):
        return value.text
    if kind is list:
        return b"[" + b",".join(write(item) for item in value) + b"]"
    items = value.items if kind is Pairs else list(value.items())
    return b"{" + b",".join(write(k) + b":" + write(v) for k, v in items) + b"}"


def buffer(hex_id: str) -> dict[str, Any]:
    return {"type": "Buffer", "data": list(bytes.fromhex(hex_id))}


PAYLOADS: Final[dict[str, list[Any]]] = {
    wire.USER: [{"n": 1, "s": "é😀", "l": [1, 2.5, None, True]}, "text", 0, [], None],
    wire.FIND_PEERS: [*IDS, buffer(STRANGER)],
    wire.FOUND_PEERS: [IDS, [SYBIL.id.hex(), STRANGER], [], [buffer(SYBIL.id.hex())]],
    wire.HANDSHAKE_OFFER: [{"ws": "ws://attacker:8000", "wrtc": True}, {"ws": None}],
    wire.HANDSHAKE_ANSWER: [{"ws": "wss://attacker/x", "wrtc": False}, {"ws": None, "wrtc": True}],
    wire.SIGNAL: [
        {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"},
        {"type": "answer", "sdp": "v=0\r\n"},
        {
            "candidate": {
                "candidate": "candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host",
                "sdpMid": "0",
                "sdpMLineIndex": 0,
            }
        },
        {"type": "candidate", "candidate": {"candidate": "", "sdpMid": "0"}},
        {"renegotiate": True},
    ],
}

DEPTHS: Final = (127, 128, 129, 130, 253, 254, 255, 256, 1023, 1024, 1025, 5000, 100_000)
RAW_TEXT: Final = (
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"9007199254740993",
    b"1" * 400,
    b"1e400",
    b"1e-400",
    b"-0",
    b"1E5",
    b"1.5e-7",
    b"NaN",
    b"-Infinity",
    b"01",
    b"1.",
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\\ud83d\\ude00"',
    b'"\\\\ud800"',
    b'"\\ud800\\ud800\\udc00"',
    b'"\xed\xa0\x80"',
    b'"\xff"',
    b'"\xc0\x80"',
    b'"\x01"',
    b'"\\x"',
    b"[1,]",
    b"{",
    b"\xef\xbb\xbf{}",
)
"""JSON text of the kinds no serialiser writes: numbers at and past every integer boundary,
past a double, escaped and raw lone surrogates, invalid UTF-8, control characters, near misses."""


def nested(depth: int, inner: bytes, array: bool) -> Raw:
    opening, closing = (b"[", b"]") if array else (b'{"d":', b"}")
    return Raw(opening * depth + inner + closing * depth)


scalars = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -1,
            2**53 - 1,
            2**53,
            -(2**53) - 1,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64,
            -(2**63),
            -(2**63) - 1,
            10**400,
            0.5,
            -0.0,
            1e308,
            -1e308,
            5e-324,
            1e16,
            1e21,
            float("inf"),
            float("nan"),
            "",
            "ws://",
            "ws://h:70000",
            "wss://[::1]:443/p?q#f",
            "x" * 70_000,
            "aa" * 20,
            "AA" * 20,
            "a" * 39,
            "a" * 41,
            "zz" * 20,
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.sampled_from(IDS),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
nasty = st.one_of(
    json_values,
    st.sampled_from(RAW_TEXT).map(Raw),
    st.builds(
        nested, st.sampled_from(DEPTHS), st.sampled_from([b"1", b"[]", b'"x"']), st.booleans()
    ),
    st.builds(buffer, st.sampled_from(IDS)),
    st.builds(lambda data: {"type": "Buffer", "data": data}, st.lists(scalars, max_size=21)),
    st.lists(st.sampled_from(IDS) | st.builds(buffer, st.sampled_from(IDS)), max_size=22),
    st.sampled_from([0, 1, 19, 20, 21]).map(lambda n: [ATTACKER.id.hex()] * n),
    st.sampled_from(list(PAYLOADS)),
)
"""Whatever may stand where a value stood."""

KEYS: Final = ("to", "from", "path", "nonce", "data", "auth", "route", "type", "pr", "v", "key")
KEYS_MORE: Final = ("sig", "ts", "proof", "ping", "pong", "ws", "wrtc", "sdp", "candidate", "")


def sign(env: Any) -> None:
    """Sign ``env`` as it stands with the key of its ``from`` (the attacker's if it holds none
    of it): what an attacker can do with any message it makes."""
    if type(env) is not dict:
        return
    try:
        body = wire.canonical(env["data"])
        to, sender, nonce = env["to"], env["from"], env["nonce"]
        message = wire.signed_bytes(to, sender, nonce, TS, body)
    except (ValueError, TypeError, KeyError, AttributeError):
        return  # nothing an origin could sign: it goes out as it is
    signer = SIGNERS.get(sender, ATTACKER) if type(sender) is str else ATTACKER
    auth = {"key": wire.b64encode(signer.public_key), "sig": "", "ts": TS}
    auth["sig"] = wire.b64encode(signer.sign(message))
    env["auth"] = auth


def slots(root: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) under ``root``, outermost first."""
    out: list[tuple[Any, Any]] = []
    todo = [root]
    while todo and len(out) < 200:
        node = todo.pop(0)
        pairs = (
            node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
        )
        for key, value in pairs:
            out.append((node, key))
            todo.append(value)
    return out


OPS: Final = ("replace", "delete", "add", "duplicate", "wrap", "readdress", "field", "field")
FIELDS: Final = (
    ("to",),
    ("from",),
    ("path",),
    ("nonce",),
    ("route",),
    ("data",),
    ("data", "type"),
    ("data", "data"),
    ("auth",),
    ("auth", "key"),
    ("auth", "sig"),
    ("auth", "ts"),
    ("type",),
    ("pr",),
    ("pr", "v"),
    ("pr", "key"),
    ("pr", "nonce"),
    ("pr", "proof"),
    ("pr", "ping"),
    ("pr", "pong"),
)
"""Where the parsers look: a mutation aims at one of these as often as anywhere else."""


@st.composite
def mutated(draw: st.DrawFn, obj: Any) -> Any:
    """A copy of ``obj`` (a valid frame, or a part of one, as an object) after a few
    structure-aware mutations."""
    holder = [copy.deepcopy(obj)]
    for _ in range(draw(st.integers(0, 3))):
        places = [(holder, 0), *slots(holder[0])]
        node, key = places[draw(st.integers(0, len(places) - 1))]
        op = draw(st.sampled_from(OPS))
        if op == "replace" or (node is holder and op != "duplicate"):
            node[key] = draw(nasty)
        elif op == "delete":
            del node[key]
        elif op == "add" and type(node) is dict:
            node[draw(st.sampled_from(KEYS + KEYS_MORE) | st.text(max_size=4))] = draw(nasty)
        elif op == "duplicate" and type(node[key]) is dict:
            items = list(node[key].items())
            twice = items[draw(st.integers(0, len(items) - 1))][0] if items else "k"
            items.insert(draw(st.integers(0, len(items))), (twice, draw(nasty)))
            node[key] = Pairs(items)  # a key twice, with two values
        elif op == "wrap":
            node[key] = [node[key]] if draw(st.booleans()) else {"d": node[key]}
        elif op == "field" and type(holder[0]) is dict:
            *parents, last = draw(st.sampled_from(FIELDS))
            node = holder[0]
            for name in parents:
                node = node.setdefault(name, {})
                if type(node) is not dict:
                    break
            else:
                node[last] = draw(nasty)
        elif op == "readdress" and type(holder[0]) is dict:
            env = holder[0]
            env["from"] = draw(st.sampled_from(IDS))
            env["path"] = draw(st.lists(st.sampled_from(IDS), max_size=21))
            env["to"] = draw(st.sampled_from(IDS) | st.builds(buffer, st.sampled_from(IDS)))
    return holder[0]


DAMAGE: Final = ("none", "none", "none", "truncate", "flip", "insert", "cut", "text", "pad")


@st.composite
def damaged(draw: st.DrawFn, frame: bytes) -> bytes | str:
    """``frame`` with byte-level damage, or as text (how a WebRTC data channel hands it over)."""
    how = draw(st.sampled_from(DAMAGE))
    if how == "none" or not frame:
        return frame
    at = draw(st.integers(0, len(frame) - 1))
    if how == "truncate":
        return frame[:at]
    if how == "flip":
        return frame[:at] + bytes([frame[at] ^ (1 << draw(st.integers(0, 7)))]) + frame[at + 1 :]
    if how == "insert":
        return frame[:at] + bytes([draw(st.integers(0, 255))]) + frame[at:]
    if how == "cut":
        return frame[:at] + frame[at + draw(st.integers(1, 8)) :]
    if how == "text":
        return frame.decode("utf-8", "surrogateescape")  # lone surrogates where it was invalid
    return draw(st.sampled_from([b"\xef\xbb\xbf", b" \n", b""])) + frame + b" \x00"


def envelope(kind: str, payload: Any, to: str, sender: Identity, nonce: str) -> dict[str, Any]:
    """An envelope as its origin writes it (not signed yet)."""
    origin = sender.id.hex()
    env: dict[str, Any] = orjson.loads(
        wire.origin_frame(to, origin, nonce, orjson.dumps({"type": kind, "data": payload}), None)
    )
    if sender is not ATTACKER:
        env["path"].append(ATTACKER.id.hex())  # relayed by the attacker
    return env


@st.composite
def unsigned_envelopes(draw: st.DrawFn, nonce: str = "1", to: str | None = None) -> Any:
    """A valid envelope of any message type, from the attacker or its sybil, not signed yet."""
    kind = draw(st.sampled_from(list(PAYLOADS)))
    payload = draw(st.sampled_from(PAYLOADS[kind]))
    target = to or draw(st.sampled_from([TARGET.id.hex(), *IDS]))  # the target: a third
    return envelope(kind, payload, target, draw(st.sampled_from([ATTACKER, SYBIL])), nonce)


def signed(env: Any) -> Any:
    sign(env)
    return env


@st.composite
def envelopes(draw: st.DrawFn, nonce: str = "1", to: str | None = None) -> bytes | str:
    """A signed envelope of any message type, mutated and signed before or after that."""
    obj = draw(unsigned_envelopes(nonce, to))
    signed_first = draw(st.booleans())
    if signed_first:
        sign(obj)
    obj = draw(mutated(obj))
    if not signed_first:
        sign(obj)
    return draw(damaged(write(obj)))


def hello_objects() -> st.SearchStrategy[Any]:
    """Link hellos as objects: ours (with a key and a nonce), 0.0.2's, a bare hex id."""
    return st.one_of(
        st.builds(
            lambda me, nonce: orjson.loads(wire.hello_frame(me.id, me.public_key, nonce)),
            st.sampled_from([ATTACKER, SYBIL]),
            st.binary(min_size=16, max_size=16),
        ),
        st.sampled_from(IDS).map(buffer),
        st.sampled_from(IDS),
        st.just({"type": "Buffer", "data": list(ATTACKER.id), "pr": {"v": 2}}),
    )


def control_objects() -> st.SearchStrategy[Any]:
    """Pings, pongs and link proofs as objects."""
    return st.one_of(
        st.builds(
            lambda kind, n: orjson.loads(wire.link_control_frame(kind, n)),
            st.sampled_from(["ping", "pong"]),
            st.integers(0, 2**53 - 1),
        ),
        st.binary(min_size=64, max_size=64).map(lambda sig: orjson.loads(wire.proof_frame(sig))),
    )


@st.composite
def frames(draw: st.DrawFn, nonce: str = "1", to: str | None = None) -> bytes | str:
    """Any frame a link may see: mostly envelopes, and hellos, proofs, pings and pongs."""
    family = draw(st.sampled_from(["envelope", "envelope", "hello", "control", "bytes"]))
    if family == "envelope":
        return draw(envelopes(nonce, to))
    if family == "bytes":
        return draw(st.binary(max_size=64))
    base = draw(hello_objects() if family == "hello" else control_objects())
    return draw(damaged(write(draw(mutated(base)))))


# ----------------------------------------------------------------------------- the parsers


def check_hello(hello: wire.Hello) -> None:
    assert len(hello.peer_id) == 20
    assert (hello.key is None) == (hello.nonce is None)
    assert hello.key is None or (len(hello.key), len(hello.nonce or b"")) == (32, 16)


def check_proof(signature: bytes) -> None:
    assert len(signature) == 64


def check_auth(auth: wire.Auth) -> None:
    assert (len(auth.key), len(auth.sig)) == (32, 64)
    assert 0 <= auth.ts <= wire.MAX_SAFE_INTEGER


def check_envelope(env: wire.Envelope) -> None:
    """What a relay relies on in a parsed envelope, and what the parsers of its parts do."""
    for hex_id in (env.to, env.sender):
        assert len(hex_id) == 40 and bytes.fromhex(hex_id).hex() == hex_id
    assert len(env.path) <= wire.MAX_HOPS and all(type(hop) is str for hop in env.path)
    assert type(env.nonce) is str and 0 < len(env.nonce) <= wire.MAX_NONCE_CHARS
    with contextlib.suppress(wire.WireError):
        kind, _payload, _has_payload = wire.message_body(env)
        assert type(kind) is str
    hazard = wire.hazard_to_original(env)
    assert hazard is None or type(hazard) is str
    own = "ee" * 20
    try:
        relayed = wire.relay_frame(env, own)
    except wire.WireError as exc:
        assert exc.reason == "too-deep"
    else:
        again = wire.parse_envelope(wire.loads(relayed, 1 << 21), wire.MAX_HOPS + 1)
        assert again.path == [*env.path, own] and (again.to, again.nonce) == (env.to, env.nonce)
    data = env.raw.get("data")
    check_canonical(data)
    check_signal(data.get("data") if type(data) is dict else data)


PARSERS: Final[list[tuple[Callable[[Any], Any], Callable[[Any], None]]]] = [
    (wire.parse_hello, check_hello),
    (wire.parse_proof, check_proof),
    (wire.parse_auth, check_auth),
    (wire.parse_envelope, check_envelope),
]
"""Every parser of a frame's parts, with the contract of what it accepts."""


def check_parsers(frame: bytes | str) -> None:
    """Run every parser on ``frame`` and on its parts: each raises only WireError, and what it
    accepts keeps its contract."""
    try:
        obj = wire.loads(frame, 1 << 20)
    except wire.WireError as exc:
        assert exc.reason in ("malformed-json", "too-deep", "oversize")
        return
    parts = [obj]
    if type(obj) is dict:
        parts += [obj.get(key) for key in ("auth", "pr", "data")]
    for value in parts:
        for parse, check in PARSERS:
            try:
                parsed = parse(value)
            except wire.WireError as exc:
                assert exc.reason and exc.reason.islower()
            else:
                check(parsed)
        if type(value) is dict:
            with contextlib.suppress(wire.WireError):
                kind, number = wire.parse_link_control(value)
                assert kind in ("ping", "pong") and 0 <= number <= wire.MAX_SAFE_INTEGER


def check_canonical(value: Any) -> None:
    """``canonical_received`` raises only ValueError; its bytes are the canonical form of the
    value it returns, and a receiver that parses those bytes (with either backend) gets them
    back: what an origin signs is what its destination checks."""
    try:
        text, denoted = wire.canonical_received(value)
    except ValueError:
        return
    assert text == wire.canonical(denoted)
    for loads in (orjson.loads, _json.std_loads):
        assert wire.canonical_received(loads(text))[0] == text


def check_signal(value: Any) -> None:
    """The WebRTC signal checks take anything: a signal is applied whole or dropped."""
    for initiator in (False, True):
        outcome = signals.SignalFilter(initiator).check(value)
        assert outcome in signals.REASONS if type(outcome) is str else type(outcome) is tuple
    if isinstance(value, dict):
        candidate = signals.parse_candidate(value.get("candidate"))
        assert isinstance(candidate, signals.Candidate) or candidate in signals.REASONS
        if "sdp" in value:
            description = signals.parse_description(value)
            assert isinstance(description, signals.Description) or description in signals.REASONS


@fuzz(800)
@given(frames())
@example(b'{"to":"' + b"a" * 40 + b'","from":"' + b"b" * 40 + b'","path":[],"nonce":"1"}')
@example(b'{"pr":{"ping":9007199254740992}}')
@example(b'{"type":"Buffer","data":[' + b"255," * 19 + b"256]}")
def test_every_parser_raises_only_its_own_error(frame: bytes | str) -> None:
    """No frame makes a parser raise anything but WireError (ValueError for the canonical
    form of received data), nor accept something that breaks its contract."""
    check_parsers(frame)


def parse_control(value: Any) -> tuple[str, int]:
    """``wire.parse_link_control``, which the core calls on objects only."""
    if type(value) is not dict:
        raise wire.WireError("not-an-object")
    return wire.parse_link_control(value)


def check_control(control: tuple[str, int]) -> None:
    kind, number = control
    assert kind in ("ping", "pong") and 0 <= number <= wire.MAX_SAFE_INTEGER


VALID_AUTH: Final = {
    "key": wire.b64encode(ATTACKER.public_key),
    "sig": wire.b64encode(bytes(range(64))),
    "ts": TS,
}
PARTS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], None], Any]]] = {
    "hello": (wire.parse_hello, check_hello, hello_objects()),
    "proof": (wire.parse_proof, check_proof, control_objects()),
    "ping or pong": (parse_control, check_control, control_objects()),
    "auth": (wire.parse_auth, check_auth, st.just(VALID_AUTH)),
    "envelope": (wire.parse_envelope, check_envelope, unsigned_envelopes().map(signed)),
}
"""Each parser, the contract of what it accepts, and the valid parts it is made for."""


@pytest.mark.parametrize("part", list(PARTS))
@fuzz(200)
@given(data=st.data())
def test_each_parser_on_mutations_of_its_own_part(part: str, data: st.DataObject) -> None:
    """Mutations of the very part a parser reads (its hello, its auth member...), hit where
    it looks more often than whole frames do: only WireError, and contracts kept."""
    parse, check, valid = PARTS[part]
    frame = data.draw(damaged(write(data.draw(mutated(data.draw(valid))))))
    try:
        value = wire.loads(frame, 1 << 20)
        parsed = parse(value)
    except wire.WireError as exc:
        assert exc.reason
        return
    check(parsed)


@fuzz(300)
@given(json_values | nasty.filter(lambda v: type(v) is not Raw))
def test_signal_checks_and_canonical_form_take_any_value(value: Any) -> None:
    """Any value (not only those a frame parses to: huge integers, NaN, lone surrogates) is
    refused or taken by the signal checks and the canonical form, never raised on."""
    check_signal(value)
    check_canonical(value)
    check_canonical({"type": "user", "data": value})


# ----------------------------------------------------------------------------- the backends


def parsed(loads: Callable[[Any], Any], frame: bytes | str) -> tuple[str, Any]:
    try:
        return "ok", loads(frame)
    except ValueError:
        return "refused", None


JSON_TOKENS: Final = (
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b",",
    b'"',
    b'"a"',
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"d800",
    b"0",
    b"-",
    b"1",
    b"e",
    b"E+",
    b".",
    b"9" * 20,
    b"true",
    b"nul",
    b" ",
    b"\t",
    b"\x0b",
    b"\xc2\xa0",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98",
    b"\xff",
    b"\x00",
)


def token_soup() -> st.SearchStrategy[bytes]:
    """Frames of JSON's own pieces in any order: the grammar's corners."""
    return st.lists(st.sampled_from(JSON_TOKENS), max_size=24).map(b"".join)


def duplicate_keys() -> st.SearchStrategy[bytes]:
    """Objects that repeat a key: both backends keep the last value, and must refuse the
    document all the same when an earlier value is refused."""
    keys = st.sampled_from(KEYS) | st.text(max_size=3)
    values = st.one_of(nasty, st.sampled_from(RAW_TEXT).map(Raw))
    return st.builds(
        lambda key, first, last, other: write(Pairs([(key, first), ("o", other), (key, last)])),
        keys,
        values,
        values,
        values,
    )


@fuzz(800)
@given(frames() | token_soup() | duplicate_keys() | st.builds(write, nasty), st.booleans())
@example(b'{"a":"\\ud800","a":1}', False)  # a lone surrogate that a duplicate key replaces
@example(b'[{"k":"\\udc00x","k":0}]', False)
@example(b'{"a":"\\\\ud800","a":1}', False)  # an escaped backslash, then text: no surrogate
@example(b"[" * 300 + b"]" * 300, True)  # nesting orjson takes, deep in the caller's stack
@example(b"[" * 1025 + b'"' + b'\\"' * 5000, False)  # an unterminated string, deep nesting
def test_both_json_backends_accept_and_refuse_alike(frame: bytes | str, deep: bool) -> None:
    """One strictness: ``std_loads`` (the fallback where orjson cannot be installed) and
    ``orjson.loads`` refuse the same frames with a ValueError and read the others as the same
    value, given as bytes or as text, and wherever in the stack they are called from."""
    texts: list[bytes | str] = [frame]
    if isinstance(frame, bytes):
        texts.append(frame.decode("utf-8", "surrogateescape"))
    limit = sys.getrecursionlimit()
    for text in texts:
        fast = parsed(orjson.loads, text)
        slow_parse = functools.partial(parsed, _json.std_loads, text)
        slow = near_the_recursion_limit(slow_parse) if deep else slow_parse()
        assert fast[0] == slow[0], f"orjson {fast[0]}, json {slow[0]}: {text[:300]!r}"
        assert same_value(fast[1], slow[1]), f"read unlike: {text[:300]!r}"
    assert sys.getrecursionlimit() == limit


# ----------------------------------------------------------------------------- the core


@dataclass
class Arena:
    """A target core linked in memory to two honest cores; the attacker's links are driven
    by hand. Every frame the target sends an honest core is checked on the way."""

    target: Core
    honest: list[Core]
    now: float = T0
    to_honest: dict[int, tuple[Core, int]] = field(default_factory=dict)
    """Target handle -> (honest core, its handle for the same link)."""
    to_target: dict[tuple[int, int], int] = field(default_factory=dict)
    attacker_frames: dict[int, list[bytes]] = field(default_factory=dict)
    """What the target sent on each attacker link (its hello, its proof)."""
    closed: set[int] = field(default_factory=set)
    """Attacker links the target closed."""
    lost: list[str] = field(default_factory=list)
    """What went wrong for the honest cores."""
    delivered: dict[int, list[Delivered]] = field(default_factory=dict)
    started: list[int] = field(default_factory=list)
    """Links the target started (dials, WebRTC), taken up by the attacker."""
    check_sent: bool = True
    """Check every frame the target sends an honest core (see :func:`check_sent_to_honest`)."""

    def pump(self) -> None:
        """Carry out every core's events until all is quiet."""
        for _ in range(200):
            moved = self._target_events(self.target.events())
            for core in self.honest:
                moved |= self._honest_events(core, core.events())
            if not moved:
                return
        raise AssertionError("the cores never went quiet")

    def _target_events(self, events: list[Event]) -> bool:
        moved = False
        for event in events:
            if isinstance(event, SendFrame):
                peer = self.to_honest.get(event.handle)
                if peer is None:
                    self.attacker_frames.setdefault(event.handle, []).append(event.frame)
                    continue
                if self.check_sent:
                    check_sent_to_honest(event.frame)
                peer[0].frame_received(peer[1], event.frame, self.now)
                moved = True
            elif isinstance(event, CloseLink):
                if event.handle in self.to_honest:
                    self.lost.append(f"the target closed an honest link: {event.reason}")
                self.closed.add(event.handle)
                self.target.link_closed(event.handle, self.now)
            elif isinstance(event, DialWebSocket | StartWebRTC):
                self.started.append(event.handle)
                self.target.link_connected(event.handle, self.now)
            elif isinstance(event, Delivered):
                self.delivered.setdefault(id(self.target), []).append(event)
            elif isinstance(event, SignalIn):
                check_signal(event.signal)
        return moved

    def _honest_events(self, core: Core, events: list[Event]) -> bool:
        moved = False
        for event in events:
            if isinstance(event, SendFrame):
                ours = self.to_target.get((id(core), event.handle))
                if ours is not None:
                    self.target.frame_received(ours, event.frame, self.now)
                    moved = True
            elif isinstance(event, CloseLink):
                self.lost.append(f"an honest core closed its link to the target: {event.reason}")
            elif isinstance(event, DialWebSocket | StartWebRTC):
                core.link_closed(event.handle, self.now, "refused")
            elif isinstance(event, Delivered):
                self.delivered.setdefault(id(core), []).append(event)
        return moved

    def feed(self, handle: int, frame: bytes | str) -> None:
        """One frame from the attacker on link ``handle``; must not raise."""
        self.now += 0.01
        self.target.frame_received(handle, frame, self.now)
        self.pump()

    def accept(self) -> int:
        """A new inbound link of the attacker's; the target has sent its hello on it."""
        handle = self.target.link_accepted(self.now)
        self.pump()
        return handle

    def waiting_for_proof(self) -> tuple[int, bytes]:
        """A new link on which the attacker sent its hello; returns the link and the proof
        that would open it."""
        handle = self.accept()
        theirs = wire.parse_hello(orjson.loads(self.attacker_frames[handle][0])).nonce
        mine = b"m" * 16
        self.feed(handle, wire.hello_frame(ATTACKER.id, ATTACKER.public_key, mine))
        signed = wire.link_proof_bytes(theirs or b"", mine, TARGET.id, ATTACKER.id)
        return handle, wire.proof_frame(ATTACKER.sign(signed))

    def open_link(self) -> int:
        """A new link of the attacker's, open and authenticated."""
        handle, proof = self.waiting_for_proof()
        self.feed(handle, proof)
        assert ATTACKER.id in self.target.peers
        return handle

    def check_still_works(self) -> None:
        """The honest links are open, honest messages get through the target and to it, and
        every bounded structure of the target is within its bound."""
        assert not self.lost, self.lost
        target, (a, b) = self.target, self.honest
        assert {a.id, b.id} <= set(target.peers)
        assert target.id in a.peers and target.id in b.peers
        probe = {"probe": self.now}
        a.send(b.id, probe, self.now)
        a.send(target.id, probe, self.now)
        self.pump()
        for core in (b, target):
            got = self.delivered.get(id(core), [])
            assert any(d.data == probe and d.sender == a.id for d in got), "a probe was lost"
        assert not self.lost, self.lost
        for name, (size, bound) in target.bounds().items():
            assert size <= bound, (name, size, bound)


def check_sent_to_honest(frame: bytes) -> None:
    """What the target sends an honest core is strict JSON in UTF-8 (however little of a frame
    it read to relay it: a WebSocket text frame that is not UTF-8 fails the whole connection,
    and a peer that reads every member refuses what orjson refuses), a frame its peers can
    read, and, when in its own name (from itself, itself alone on the path), its own, signed
    (or a session message, which its session authenticates):
    a relay that passed on a forgery in its own name would have its honest links cut as the
    forger's."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        message = f"the target sent a frame strict JSON refuses ({exc}): {frame[:300]!r}"
        raise AssertionError(message) from None
    if type(obj) is dict and "to" not in obj:  # its hello, its proof, a ping or a pong
        for parse in (wire.parse_hello, wire.parse_proof, wire.parse_link_control):
            with contextlib.suppress(wire.WireError):
                parse(obj)
                return
        raise AssertionError(f"the target sent a frame its peers cannot read: {frame[:300]!r}")
    env = wire.parse_envelope(obj)
    if env.sender == TARGET.id.hex() and env.path == [env.sender]:
        if wire.data_kind(env) == wire.SEALED:
            # A session message: the session's AEAD authenticates it, not a signature.
            assert wire.sealed_blob(env)[0] in range(1, 6), frame[:300]
            return
        auth = wire.parse_auth(obj.get("auth"))
        data, _ = wire.canonical_received(obj["data"])
        signed = wire.signed_bytes(env.to, env.sender, env.nonce, auth.ts, data)
        assert verify_ed25519(TARGET.public_key, auth.sig, signed), (
            f"the target sent a forgery in its own name: {frame[:300]!r}"
        )


def make_arena(**config: Any) -> Arena:
    """A target with ``config`` (the honest cores keep the defaults), linked to both."""
    target = Core(TARGET, Config(**config), rng=random.Random(1), now=T0)
    honest = [
        Core(me, Config(), rng=random.Random(n), now=T0)
        for n, me in enumerate((HONEST_A, HONEST_B), 2)
    ]
    arena = Arena(target, honest)
    for core in honest:
        ours = target.link_accepted(T0)
        core.bootstrap(["ws://target"], T0)
        (dial,) = [e for e in core.events() if isinstance(e, DialWebSocket)]
        arena.to_honest[ours] = (core, dial.handle)
        arena.to_target[(id(core), dial.handle)] = ours
        core.link_connected(dial.handle, T0)
        arena.pump()
    assert {HONEST_A.id, HONEST_B.id} <= set(target.peers)
    return arena


CONFIGS: Final[dict[str, dict[str, Any]]] = {
    "default": {"url": "ws://target"},
    "webrtc, unsigned allowed": {"webrtc": True, "require_auth": False, "strategy": "original"},
    "small bounds": {"max_frame": 4096, "max_hops": 5, "max_seen": 8, "max_routes": 2},
}
FORGED_IN_TARGETS_NAME: Final = {
    "to": HONEST_B.id.hex(),
    "from": TARGET.id.hex(),
    "path": [],
    "nonce": "1",
    "data": {"type": "user", "data": 1},
    "auth": {"key": wire.b64encode(TARGET.public_key), "sig": "A" * 86, "ts": TS},
}
"""An envelope the attacker cannot sign: it claims to come from the target, with no path."""


configs = st.sampled_from(list(CONFIGS))


@st.composite
def batches(draw: st.DrawFn, size: int, to: str | None = None) -> list[bytes | str]:
    """Frames for one link, each with a nonce of its own (so that none is a mere duplicate)."""
    count = draw(st.integers(1, size))
    return [draw(frames(nonce=f"n{index}", to=to)) for index in range(count)]


@fuzz(100)
@given(configs, st.lists(frames() | hello_objects().map(write), min_size=1, max_size=6))
def test_frames_on_fresh_inbound_links_break_nothing(config: str, batch: list[bytes | str]) -> None:
    """The first frame on an inbound link (where a hello is due) may be anything: the link
    fails or goes on, the core raises nothing, and its honest links carry on."""
    arena = make_arena(**CONFIGS[config])
    for frame in batch:
        arena.feed(arena.accept(), frame)
    arena.check_still_works()


@fuzz(80)
@given(configs, st.booleans(), st.data())
def test_frames_on_links_waiting_for_the_proof_break_nothing(
    config: str, real_proof: bool, data: st.DataObject
) -> None:
    """Where the proof is due, a mangled proof (the real one damaged, or any frame at all)
    fails the link and breaks nothing else."""
    arena = make_arena(**CONFIGS[config])
    for _ in range(data.draw(st.integers(1, 3))):
        handle, proof = arena.waiting_for_proof()
        if real_proof:
            frame = data.draw(damaged(write(data.draw(mutated(orjson.loads(proof))))))
        else:
            frame = data.draw(frames())
        arena.feed(handle, frame)
        if handle not in arena.closed:
            arena.feed(handle, data.draw(frames(nonce="after")))
    arena.check_still_works()


@fuzz(200)
@given(configs, batches(12))
@example("default", [write(FORGED_IN_TARGETS_NAME)])
def test_frames_on_an_open_link_break_nothing(config: str, batch: list[bytes | str]) -> None:
    """On an open authenticated link the attacker may send anything, signed as it likes: the
    core raises nothing, may close that link, and its honest links and messages carry on."""
    arena = make_arena(**CONFIGS[config])
    handle = arena.open_link()
    for frame in batch:
        if handle in arena.closed:
            handle = arena.open_link()  # the attacker links again
        arena.feed(handle, frame)
    arena.check_still_works()


@fuzz(60)
@given(st.sampled_from(["webrtc, unsigned allowed", "small bounds"]), batches(8), st.data())
def test_frames_on_links_the_target_started_break_nothing(
    config: str, batch: list[bytes | str], data: st.DataObject
) -> None:
    """Links the target started because the attacker asked (it dials the URL of an offer when
    it cannot be dialled itself, and answers an offer's WebRTC signal with a link of its own)
    take any frame too, before and after they open."""
    arena = make_arena(**CONFIGS[config])
    handle = arena.open_link()
    offer = envelope(
        wire.HANDSHAKE_OFFER, {"ws": "ws://sybil", "wrtc": True}, TARGET.id.hex(), SYBIL, "o"
    )
    signal = envelope(wire.SIGNAL, PAYLOADS[wire.SIGNAL][0], TARGET.id.hex(), SYBIL, "s")
    for env in (offer, signal):
        sign(env)
        arena.feed(handle, write(env))
    assert arena.started, "the target started no link to the sybil"
    for frame in batch:
        live = [h for h in arena.started if h not in arena.closed]
        arena.feed(data.draw(st.sampled_from(live)) if live else handle, frame)
    arena.check_still_works()


def test_a_relay_never_passes_on_a_forgery_in_its_own_name() -> None:
    """An envelope that claims to come from the relay itself, with an empty path, is not
    passed on: with the relay's id added to its path it would read, at the next hop, as a
    forgery made by the relay, and a few of them would cut the next hop's link to the relay."""
    arena = make_arena()
    arena.check_sent = False  # look at the consequence instead
    handle = arena.open_link()
    for number in range(Config().max_strikes):
        arena.feed(handle, write({**FORGED_IN_TARGETS_NAME, "nonce": str(number)}))
    arena.check_still_works()


@pytest.mark.parametrize(
    "data",
    [b'"\xff"', b'"\xed\xa0\x80"', b'{"k":"\xc0\x80"}', b"1e400", b"[-1e400]", b'"\\ud800"'],
    ids=["invalid UTF-8", "encoded surrogate", "overlong", "beyond a double", "-inf", "escaped"],
)
def test_a_relay_passes_on_only_what_strict_json_reads(data: bytes) -> None:
    """Data that strict JSON refuses is not relayed as it was written, however little of the
    frame the relay reads: the next hop's WebSocket fails a text frame that is not UTF-8, and
    a peer that reads every member refuses the rest, either way taking the relay for the
    culprit. The frame is dropped, and the link it came on stays open."""
    arena = make_arena()
    handle = arena.open_link()
    attacker = ATTACKER.id.hex()
    frame = (
        (
            f'{{"to":"{HONEST_B.id.hex()}","from":"{attacker}","path":["{attacker}"],"nonce":"1",'
            f'"data":{{"type":"user","data":'
        ).encode()
        + data
        + b"}}"
    )
    arena.feed(handle, frame)  # check_sent_to_honest refuses what strict JSON refuses
    assert handle not in arena.closed
    arena.check_still_works()


@pytest.mark.parametrize("state", ["hello", "proof", "open"])
def test_a_text_frame_with_a_lone_surrogate_is_refused_in_every_state(state: str) -> None:
    """A WebRTC data channel hands frames over as text, which may hold lone surrogates (no
    UTF-8 can): refused as malformed JSON on a link in any state, never raised on."""
    arena = make_arena()
    handle = {
        "hello": arena.accept,
        "proof": lambda: arena.waiting_for_proof()[0],
        "open": arena.open_link,
    }[state]()
    attacker = ATTACKER.id.hex()
    arena.feed(
        handle,
        f'{{"to":"{TARGET.id.hex()}","from":"{attacker}","path":["{attacker}"],"nonce":"1",'
        '"data":{"type":"user","data":"\udc80"}}',
    )
    assert arena.target.stats.dropped["malformed-json"] == 1
    arena.check_still_works()
