"""A frame's data is passed on as written and read only by its destination, once its signature
holds: relays cost the same whatever the data holds, and what they pass on is byte for byte
what they got."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import Delivered, SendFrame
from peer_relay.sim import fast_verify

from .test_budgets import ident, relayed, signed
from .test_core import T0, make_core, open_raw_link


def test_members_a_peer_reads_are_parsed_and_the_rest_kept_as_written() -> None:
    frame = b'{"to":"aa","path":[],"data":{"b": [1.0, 1e5],"a":"\\u00e9"},"x-new":{"k":1}}'
    obj = wire.loads_members(frame, 1 << 20)
    assert obj["to"] == "aa" and obj["path"] == []
    assert isinstance(obj["data"], wire.Written)
    assert obj["data"].json == b'{"b": [1.0, 1e5],"a":"\\u00e9"}'
    assert obj["x-new"].json == b'{"k":1}'


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"[1,2]", "not-envelope"),
        (b'"aa"', "not-envelope"),
        (b'{"to":"aa","data":[1,}', "malformed-json"),
        (b'{"to":"aa"', "malformed-json"),
        (b'{"to":"\\ud800","data":1}', "malformed-json"),
        (b'{"to":1e400}', "malformed-json"),
        (b'{"a":1} x', "malformed-json"),
    ],
)
def test_frames_that_are_not_objects_or_not_json_are_refused(frame: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.loads_members(frame, 1 << 20)
    assert caught.value.reason == reason


def two_links() -> tuple[Core, Any, int, Any]:
    core, _ = make_core(1)
    a, b = ident(10), ident(11)
    handle_a = open_raw_link(core, a)
    open_raw_link(core, b)
    core.events()
    return core, a, handle_a, b


def test_a_relay_passes_data_and_unknown_members_on_byte_for_byte() -> None:
    core, a, handle_a, b = two_links()
    data = b'{"type":"user","data":[1.0, 1e5, 0.000001, {"9":1,"10":2}, "\\u00e9"]}'
    frame = (
        (
            f'{{"to":"{b.id.hex()}","from":"{a.id.hex()}","path":["{a.id.hex()}"],"nonce":"n",'
            f'"x-new":[ 1 ],"data":'
        ).encode()
        + data
        + b"}"
    )
    core.frame_received(handle_a, frame, T0)
    out = [e.frame for e in core.events() if isinstance(e, SendFrame) and b'"to"' in e.frame]
    assert len(out) == 1
    assert b'"data":' + data in out[0] and b'"x-new":[ 1 ]' in out[0]
    assert orjson.loads(out[0])["path"] == [a.id.hex(), core.hex]


def counting(**config: Any) -> tuple[Core, list[int]]:
    calls: list[int] = []

    def verify(key: bytes, sig: bytes, data: bytes) -> bool:
        calls.append(1)
        return fast_verify(key, sig, data)

    return Core(ident(1), Config(**config), rng=random.Random(1), now=T0, verify=verify), calls


def test_an_honest_message_costs_one_check_and_one_read() -> None:
    core, calls = counting()
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    calls.clear()
    value = {"floats": [1.5, 1e300, 0.000001], "big": 2**40, "é": "x"}
    core.frame_received(link, relayed(signed(ident(9), core.id, "user", value, T0, "m"), relay), T0)
    assert [e.data for e in core.events() if isinstance(e, Delivered)] == [value]
    assert len(calls) == 1


def test_data_written_again_by_a_relay_still_verifies() -> None:
    """0.0.2 relays write the data again (JavaScript puts integer-like keys first): the
    destination then reads it and checks its canonical form."""
    core, calls = counting()
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    calls.clear()
    value = {"10": "ten", "9": "nine", "f": 1e21}
    frame = orjson.loads(signed(ident(9), core.id, "user", value, T0, "m"))
    frame["data"] = {"type": "user", "data": {"9": "nine", "10": "ten", "f": 1e21}}
    frame["path"].append(relay.id.hex())
    core.frame_received(link, orjson.dumps(frame), T0)
    assert [e.data for e in core.events() if isinstance(e, Delivered)] == [value]
    assert len(calls) == 2  # as written, then its canonical form
