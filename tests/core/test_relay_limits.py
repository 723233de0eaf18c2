"""What a relay cannot pass on is dropped, never raised and never a reason to cut a link: frames
nested past what is read, frames that would outgrow ``max_frame`` once relayed. What it can, it
passes on as written. And ``send()`` refuses at once what some relay on the way could not pass
on."""

from __future__ import annotations

from typing import Any

import pytest

from peer_relay import wire
from peer_relay.core import Core
from peer_relay.events import CloseLink, SendFrame
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner

from .test_core import T0, make_core, open_raw_link


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def relay_with_two_links(**config: Any) -> tuple[Core, Identity, int, Identity]:
    core, _ = make_core(1, **config)
    a = Identity(signer=FastSigner(b"\x0a" * 32))
    b = Identity(signer=FastSigner(b"\x0b" * 32))
    handle_a = open_raw_link(core, a)
    open_raw_link(core, b)
    core.events()
    return core, a, handle_a, b


def raw_envelope(a: Identity, b: Identity, data_json: str) -> bytes:
    """An envelope from ``a`` to ``b`` whose ``data.data`` is ``data_json``, written by hand
    (as an attacker or another implementation might)."""
    return (
        f'{{"to":"{b.id.hex()}","from":"{a.id.hex()}","path":["{a.id.hex()}"],"nonce":"7",'
        f'"data":{{"type":"user","data":{data_json}}}}}'
    ).encode()


def test_send_refuses_data_nested_deeper_than_every_relay_can_write() -> None:
    core, _ = make_core(1)
    core.send(bytes(20), nested(wire.MAX_NESTING), T0)  # the deepest allowed
    with pytest.raises(ValueError, match="nests deeper than 128"):
        core.send(bytes(20), nested(wire.MAX_NESTING + 1), T0)
    with pytest.raises(ValueError, match="nests deeper"):
        core.send(bytes(20), {"a": nested(300)}, T0)
    with pytest.raises(ValueError, match="nests deeper"):
        core.send(core.id, nested(300), T0)  # to ourselves, too: the same rules everywhere


def test_send_refuses_a_message_that_would_outgrow_max_frame_on_its_way() -> None:
    core, _ = make_core(1, max_frame=8192)
    room = 8192 - 20 * wire.HOP_BYTES  # what is left once 20 relays have added their ids
    core.send(bytes(20), "x" * (room - 600), T0)
    with pytest.raises(ValueError, match="once relayed over max_hops"):
        core.send(bytes(20), "x" * (room - 100), T0)


@pytest.mark.parametrize("depth", [255, 300])
def test_a_relay_passes_on_deep_data_as_written_and_keeps_both_links(depth: int) -> None:
    """A relay does not read the data it passes on, so depth costs it nothing (orjson, which
    reads up to 1,024 levels, writes at most 254: a relay that wrote the data again used to
    fail on it)."""
    core, a, handle_a, b = relay_with_two_links()
    data = "[" * depth + "]" * depth
    core.frame_received(handle_a, raw_envelope(a, b, data), T0)  # must not raise
    events = core.events()
    assert not [e for e in events if isinstance(e, CloseLink)], events
    relayed = [e.frame for e in events if isinstance(e, SendFrame) and b'"to"' in e.frame]
    assert len(relayed) == 1 and f'"data":{data}}}'.encode() in relayed[0]
    assert sorted(core.peers) == sorted([a.id, b.id])


def test_a_frame_nested_past_what_is_read_is_dropped_and_the_link_kept() -> None:
    core, a, handle_a, b = relay_with_two_links()
    frame = raw_envelope(a, b, "[" * 1100 + "]" * 1100)
    core.frame_received(handle_a, frame, T0)  # must not raise
    events = core.events()
    assert not [e for e in events if isinstance(e, SendFrame | CloseLink)], events
    assert core.stats.dropped["too-deep"] == 1
    assert sorted(core.peers) == sorted([a.id, b.id])
    # The sender's link still carries its honest messages.
    core.frame_received(handle_a, raw_envelope(a, b, '"fine"').replace(b'"7"', b'"8"'), T0)
    assert [e for e in core.events() if isinstance(e, SendFrame)]


def test_a_relay_never_sends_a_frame_above_max_frame_and_keeps_the_link() -> None:
    core, a, handle_a, b = relay_with_two_links(max_frame=4096)
    frame = raw_envelope(a, b, '"' + "x" * (4096 - 230) + '"')
    assert 4096 - wire.HOP_BYTES < len(frame) <= 4096  # fits here, not after our id is added
    core.frame_received(handle_a, frame, T0)
    events = core.events()
    assert not [e for e in events if isinstance(e, SendFrame | CloseLink)], events
    assert core.stats.dropped["too-large-to-relay"] == 1
    assert sorted(core.peers) == sorted([a.id, b.id])
