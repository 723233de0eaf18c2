"""Neighbours' links (``core/neighbours.py``): our peers tell us whom they are linked to, and a
message goes two hops ahead; what a peer sends there is bounded and checked like any frame."""

from __future__ import annotations

from array import array
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from peer_relay import wire
from peer_relay.core import Core
from peer_relay.core.neighbours import SLOT_BITS, closest
from peer_relay.events import CloseLink, SendFrame
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner
from peer_relay.wire import WireError

from .test_core import T0, make_core, open_raw_link


def peer(seed: int) -> Identity:
    return Identity(signer=FastSigner(bytes([seed]) * 32))


def near(peer_id: bytes, byte: int) -> bytes:
    """An id that shares ``peer_id``'s first ``byte`` bytes and differs in the next one."""
    return peer_id[:byte] + bytes([peer_id[byte] ^ 0x80]) + peer_id[byte + 1 :]


def sent(core: Core) -> list[tuple[int, Any]]:
    return [(e.handle, orjson.loads(e.frame)) for e in core.events() if isinstance(e, SendFrame)]


@given(
    st.lists(st.integers(0, (1 << 48) - 1), min_size=1, max_size=60),
    st.integers(0, (1 << 48) - 1),
)
def test_closest_is_the_xor_closest_of_all(prefixes: list[int], target: int) -> None:
    keys = array("Q", sorted(p << SLOT_BITS | i for i, p in enumerate(prefixes)))
    found = closest(keys, target) >> SLOT_BITS
    assert found ^ target == min(p ^ target for p in prefixes)


def test_a_list_reads_back_and_is_cut_to_its_bound() -> None:
    ids = b"".join(peer(i).id for i in range(1, 6))
    listed = orjson.loads(wire.links_frame(ids))["pr"]["links"]
    assert wire.parse_links(listed, 32) == (ids, False)
    assert wire.parse_links(listed, 3) == (ids[:60], True)
    assert wire.parse_links(orjson.loads(wire.links_frame(b""))["pr"]["links"], 32) == (b"", False)
    for bad in (5, None, "!!!!", wire.b64encode(b"x" * 30), "A"):
        try:
            wire.parse_links(bad, 32)
        except WireError as exc:
            assert exc.reason == "bad-link-control"
        else:
            raise AssertionError(f"{bad!r} was read as a list")


def test_a_message_goes_to_the_peer_linked_closest_to_its_target() -> None:
    core, _ = make_core(1)
    b, c = peer(2), peer(3)
    hb = open_raw_link(core, b)
    open_raw_link(core, c)
    target = near(c.id, 5)  # C is close to it; B is not
    assert core.route(target) == c.id
    core.frame_received(hb, wire.links_frame(target + peer(9).id), T0 + 1)
    assert core.route(target) == b.id  # B is linked to the target itself
    # B's link closes: its list goes with it.
    assert core.disconnect(b.id, T0 + 2)
    assert core.route(target) == c.id


def listed_ids(listed: Any) -> list[bytes]:
    raw = wire.parse_links(listed, 32)[0]
    return [raw[i : i + 20] for i in range(0, len(raw), 20)]


def lists_sent(core: Core) -> list[tuple[int, Any]]:
    return [(h, f["pr"]["links"]) for h, f in sent(core) if "links" in f.get("pr", {})]


def handshake(core: Core, handle: int, remote: Identity, now: float = T0) -> list[tuple[int, Any]]:
    """Complete the handshake of inbound ``handle`` as ``remote``; the frames the core sent."""
    frames = sent(core)
    hello = wire.parse_hello(next(f for h, f in frames if h == handle))
    nonce = b"r" * 16
    core.frame_received(handle, wire.hello_frame(remote.id, remote.public_key, nonce), now)
    proof = remote.sign(wire.link_proof_bytes(hello.nonce or b"", nonce, core.id, remote.id))
    frames += sent(core)
    core.frame_received(handle, wire.proof_frame(proof), now)
    return frames + sent(core)


def test_our_links_go_to_our_peers_in_the_proof_then_when_they_change() -> None:
    core, _ = make_core(1)
    c, d, e = peer(3), peer(4), peer(5)
    hc = open_raw_link(core, c)
    hd = core.link_accepted(T0)
    frames = handshake(core, hd, d)
    proof = next(f for h, f in frames if h == hd and "proof" in f["pr"])
    assert listed_ids(proof["pr"]["links"]) == [c.id]  # what we had when D's proof went
    # C's copy is stale now that D is linked: a second after the change it gets ours (the
    # first list after the one its link opened with goes at once; D knows it is linked to us).
    core.handle_timer(T0 + 1.0)
    lists = lists_sent(core)
    assert [h for h, _ in lists] == [hc]
    assert set(listed_ids(lists[0][1])) == {c.id, d.id}
    # E links at T0 + 2: D gets its second list a second later, C (which had it) waits
    # share_interval from its last.
    he = core.link_accepted(T0 + 2.0)
    handshake(core, he, e, T0 + 2.0)
    core.handle_timer(T0 + 3.0)
    assert [h for h, _ in lists_sent(core)] == [hd]
    core.handle_timer(T0 + 1.0 + core.config.share_interval)
    lists = lists_sent(core)
    assert [h for h, _ in lists] == [hc]
    assert set(listed_ids(lists[0][1])) == {c.id, d.id, e.id}
    core.handle_timer(T0 + 3 * core.config.share_interval)
    assert lists_sent(core) == []  # nothing changed since


def test_lists_too_long_are_cut_and_too_frequent_dropped_and_the_link_stays() -> None:
    core, _ = make_core(1, max_listed=4)
    b, c = peer(2), peer(3)
    hb = open_raw_link(core, b)
    open_raw_link(core, c)
    kept, cut = near(c.id, 4), near(c.id, 5)  # C is close to both, B to neither
    listed = [peer(10).id, peer(11).id, kept, peer(12).id, cut, peer(13).id]
    core.frame_received(hb, wire.links_frame(b"".join(listed)), T0 + 1)
    assert core.stats.dropped["links-cut"] == 1
    assert core.route(kept) == b.id and core.route(cut) == c.id
    for i in range(100):
        core.frame_received(hb, wire.links_frame(b""), T0 + 1 + i / 1000)
    assert core.stats.dropped["links-too-often"] == 100
    assert core.route(kept) == b.id  # the list that counts is the one read
    assert sorted(core.peers) == sorted([b.id, c.id])
    assert not [e for e in core.events() if isinstance(e, CloseLink)]


def test_a_malformed_list_is_a_strike_and_strikes_close_the_link() -> None:
    core, _ = make_core(1, max_strikes=3)
    b = peer(2)
    hb = open_raw_link(core, b)
    bad = orjson.dumps({"pr": {"links": wire.b64encode(b"x" * 30)}})
    for i in range(3):
        core.frame_received(hb, bad, T0 + 10 * i)
    assert core.stats.dropped["bad-link-control"] == 3
    assert CloseLink(hb, "misbehaving") in core.events()
