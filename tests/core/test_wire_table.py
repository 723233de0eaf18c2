"""Pure tests of ids, the wire format and the k-bucket table (no I/O)."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_relay import wire
from peer_relay.ids import bucket_index, buffer_json, hex_from_wire, id_from_wire, parse_id
from peer_relay.table import KBucketTable
from peer_relay.wire import WireError

ids = st.binary(min_size=20, max_size=20)


@given(ids)
def test_id_forms_round_trip(raw: bytes) -> None:
    assert parse_id(raw) == raw
    assert parse_id(raw.hex()) == raw
    assert parse_id(raw.hex().upper()) == raw
    assert parse_id(buffer_json(raw)) == raw
    assert id_from_wire(json.loads(json.dumps(buffer_json(raw)))) == raw
    assert hex_from_wire(buffer_json(raw)) == raw.hex()
    assert hex_from_wire(raw.hex().upper()) == raw.hex()


@pytest.mark.parametrize("bad", [b"x" * 19, b"x" * 21, "ab" * 19, "zz" * 20, "", 5, None, 1.5])
def test_parse_id_rejects_programmer_errors(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_id(bad)


@given(st.one_of(st.none(), st.integers(), st.text(max_size=50), st.lists(st.integers())))
def test_id_from_wire_never_raises(value: object) -> None:
    result = id_from_wire(value)
    assert result is None or len(result) == 20


def test_buffer_json_validation() -> None:
    good = {"type": "Buffer", "data": list(range(20))}
    assert id_from_wire(good) == bytes(range(20))
    assert id_from_wire({"type": "Buffer", "data": [256] + [0] * 19}) is None
    assert id_from_wire({"type": "Buffer", "data": [True] + [0] * 19}) is None
    assert id_from_wire({"type": "Buffer", "data": [0] * 19}) is None
    assert id_from_wire({"type": "Nope", "data": [0] * 20}) is None


def envelope(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "to": "11" * 20,
        "from": "22" * 20,
        "path": ["22" * 20],
        "nonce": "123",
        "data": {"type": "user", "data": {"x": 1}},
    }
    base.update(overrides)
    return base


def test_parse_envelope_accepts_both_id_forms() -> None:
    env = wire.parse_envelope(envelope(to=buffer_json(b"\x11" * 20)))
    assert env.to == "11" * 20 and env.sender == "22" * 20 and env.nonce == "123"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"to": 5}, "bad-id"),
        ({"from": "22" * 19}, "bad-id"),
        ({"path": "x"}, "not-envelope"),
        ({"path": ["zz"]}, "bad-path"),
        ({"path": ["22" * 20] * 21}, "too-many-hops"),
        ({"nonce": 7}, "bad-nonce"),
        ({"nonce": ""}, "bad-nonce"),
        ({"nonce": "x" * 200}, "bad-nonce"),
    ],
)
def test_parse_envelope_reasons(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(WireError) as info:
        wire.parse_envelope(envelope(**overrides))
    assert info.value.reason == reason


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_parse_envelope_never_raises_anything_else(obj: object) -> None:
    with contextlib.suppress(WireError):
        wire.parse_envelope(obj)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"not json", "malformed-json"),
        (b'{"a": NaN}', "malformed-json"),
        (b'"\\ud800"', "malformed-json"),
        (b"[" * 2000 + b"]" * 2000, "too-deep"),
        (b" " * 100, "malformed-json"),
    ],
)
def test_loads_reasons(frame: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        wire.loads(frame, 1 << 20)
    assert info.value.reason == reason


def test_loads_rejects_oversize_before_parsing() -> None:
    with pytest.raises(WireError) as info:
        wire.loads(b"[" + b"1," * 100 + b"1]", 64)
    assert info.value.reason == "oversize"


def test_relay_frame_is_a_new_value() -> None:
    raw = envelope(extra={"kept": True})
    env = wire.parse_envelope(raw)
    out = orjson.loads(wire.relay_frame(env, "33" * 20))
    assert out["path"] == ["22" * 20, "33" * 20]
    assert out["extra"] == {"kept": True}
    assert raw["path"] == ["22" * 20], "the received envelope must not be edited in place"
    assert list(out) == list(raw), "key order is kept"


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 2**53, -(2**53), "\ud800", {1: 2}, b"x", object()]
)
def test_canonical_rejects_non_ijson(value: object) -> None:
    with pytest.raises(ValueError):
        wire.canonical(value)


def test_hello_and_proof_round_trip() -> None:
    own = bytes(range(20))
    frame = orjson.loads(wire.hello_frame(own, b"k" * 32, b"n" * 16))
    hello = wire.parse_hello(frame)
    assert (hello.peer_id, hello.key, hello.nonce) == (own, b"k" * 32, b"n" * 16)
    plain = wire.parse_hello(orjson.loads(wire.hello_frame(own, None, None)))
    assert plain.key is None
    assert wire.parse_hello(own.hex()).peer_id == own
    assert wire.parse_proof(orjson.loads(wire.proof_frame(b"s" * 64))) == b"s" * 64
    for bad in (None, 5, {"type": "Buffer"}, {"type": "Buffer", "data": [1] * 20, "pr": 5}):
        with pytest.raises(WireError):
            wire.parse_hello(bad)
    with pytest.raises(WireError):
        wire.parse_proof({"pr": {"proof": "short"}})


# ----------------------------------------------------------------------------- table


@settings(max_examples=60)
@given(own=ids, others=st.lists(ids, max_size=200), k=st.integers(1, 5), target=ids)
def test_table_bounds_and_closest(own: bytes, others: list[bytes], k: int, target: bytes) -> None:
    table: KBucketTable[int] = KBucketTable(own, k)
    for i, other in enumerate(others):
        table.add(other, i)
    assert own not in table
    assert all(size <= k for size in table.bucket_sizes().values())
    assert len(table) == len(list(table)) == sum(table.bucket_sizes().values())
    stored = list(table)
    t = int.from_bytes(target, "big")
    expected = sorted(stored, key=lambda i: int.from_bytes(i, "big") ^ t)[:7]
    assert table.closest(target, 7) == expected
    for peer in stored:
        assert table.bucket_of(peer) == bucket_index(
            int.from_bytes(own, "big"), int.from_bytes(peer, "big")
        )
        assert table.remove(peer) is not None
    assert len(table) == 0 and table.bucket_sizes() == {}


def test_table_full_bucket_policy() -> None:
    own = b"\x00" * 20
    table: KBucketTable[str] = KBucketTable(own, 2)
    far = [bytes([0x80 + i]) + b"\x00" * 19 for i in range(3)]
    assert table.add(far[0], "a") and table.add(far[1], "b")
    assert not table.add(far[2], "c"), "a full bucket keeps what it has by default"
    assert table.add(far[2], "c", replace_oldest=True)
    assert far[0] not in table and far[2] in table
    assert table.add(far[1], "b2"), "refreshing an entry moves it to the newest end"
    assert table.bucket(159) == [far[2], far[1]]
