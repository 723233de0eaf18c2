"""The core's state machine on a virtual clock: no sockets, no sleeps."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DialWebSocket,
    PeerLinked,
    SendFrame,
)
from peer_relay.identity import Identity
from peer_relay.sim import EPOCH, FastSigner, SimNetwork, fast_verify

T0 = EPOCH


def make_core(seed: int, **config: Any) -> tuple[Core, Identity]:
    identity = Identity(signer=FastSigner(bytes([seed]) * 32))
    core = Core(identity, Config(**config), rng=random.Random(seed), now=T0, verify=fast_verify)
    return core, identity


def open_raw_link(core: Core, remote: Identity, now: float = T0) -> int:
    """Complete the link handshake with ``core`` by hand, as ``remote``; return the handle."""
    handle = core.link_accepted(now)
    hello_ev = next(e for e in core.events() if isinstance(e, SendFrame))
    hello = wire.parse_hello(orjson.loads(hello_ev.frame))
    my_nonce = b"r" * 16
    core.frame_received(handle, wire.hello_frame(remote.id, remote.public_key, my_nonce), now)
    proof = remote.sign(wire.link_proof_bytes(hello.nonce or b"", my_nonce, core.id, remote.id))
    core.frame_received(handle, wire.proof_frame(proof), now)
    events = core.events()
    assert any(isinstance(e, PeerLinked) for e in events), events
    return handle


def signed_frame(origin: Identity, to: bytes, payload: Any, now: float, nonce: str = "1") -> bytes:
    body = wire.canonical({"type": "user", "data": payload})
    ts = int(now * 1000)
    sig = origin.sign(wire.signed_bytes(to.hex(), origin.id.hex(), nonce, ts, body))
    auth = {"key": wire.b64encode(origin.public_key), "sig": wire.b64encode(sig), "ts": ts}
    return wire.origin_frame(to.hex(), origin.id.hex(), nonce, body, auth)


def test_link_handshake_proves_the_id() -> None:
    core, _ = make_core(1)
    remote = Identity(signer=FastSigner(b"\x02" * 32))
    open_raw_link(core, remote)
    assert core.peers == [remote.id]


def test_link_with_wrong_proof_is_closed() -> None:
    core, _ = make_core(1)
    liar = Identity(signer=FastSigner(b"\x02" * 32))
    handle = core.link_accepted(T0)
    core.events()
    core.frame_received(handle, wire.hello_frame(liar.id, liar.public_key, b"n" * 16), T0)
    core.frame_received(handle, wire.proof_frame(b"\x00" * 64), T0)
    assert CloseLink(handle, "bad-proof") in core.events()
    assert core.peers == []


def test_unauthenticated_peer_refused_by_default_admitted_when_allowed() -> None:
    for require_auth, expect_open in ((True, False), (False, True)):
        core, _ = make_core(1, require_auth=require_auth)
        handle = core.link_accepted(T0)
        core.events()
        core.frame_received(handle, orjson.dumps({"type": "Buffer", "data": [7] * 20}), T0)
        assert (core.peers == [bytes([7] * 20)]) is expect_open
        if not expect_open:
            assert CloseLink(handle, "unauthenticated-peer") in core.events()


def test_handshake_timeout_on_the_virtual_clock() -> None:
    core, _ = make_core(1, hello_timeout=5.0)
    handle = core.link_accepted(T0)
    core.events()
    core.handle_timer(T0 + 4.0)
    assert not any(isinstance(e, CloseLink) for e in core.events())
    timer = core.get_timer()
    assert timer is not None
    core.handle_timer(T0 + 6.0)
    assert CloseLink(handle, "handshake-timeout") in core.events()


def test_messages_wait_for_a_first_link_in_a_bounded_queue() -> None:
    core, _ = make_core(1, max_queue=3, confirm_delay=0)
    target = bytes(20)
    for i in range(4):
        core.send(target, {"i": i}, T0)
    assert core.stats.dropped["queue-full"] == 1
    remote = Identity(signer=FastSigner(b"\x02" * 32))
    handle = core.link_accepted(T0)
    (our_hello,) = [e.frame for e in core.events() if isinstance(e, SendFrame)]
    hello = wire.hello_frame(remote.id, remote.public_key, b"r" * 16)
    core.frame_received(handle, hello, T0)
    core.events()
    # Complete the proof and collect what the core sends once the link opens.
    hello_nonce = wire.parse_hello(orjson.loads(our_hello)).nonce
    assert hello_nonce is not None
    proof = remote.sign(wire.link_proof_bytes(hello_nonce, b"r" * 16, core.id, remote.id))
    core.frame_received(handle, wire.proof_frame(proof), T0)
    sent = [orjson.loads(e.frame) for e in core.events() if isinstance(e, SendFrame)]
    users = [f["data"]["data"] for f in sent if "to" in f and f["data"]["type"] == "user"]
    assert users == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {"pr": {"ping": 1}} in sent  # the remote is ours: it is asked to confirm them


def test_programmer_errors_raise_at_once() -> None:
    core, _ = make_core(1)
    with pytest.raises(ValueError):
        core.send(b"short", {}, T0)
    with pytest.raises(ValueError):
        core.send(bytes(20), float("nan"), T0)
    with pytest.raises(ValueError):
        core.send(bytes(20), {"big": 2**60}, T0)
    with pytest.raises(ValueError):
        core.send(bytes(20), "x" * (2 << 20), T0)
    core.close(T0)
    with pytest.raises(RuntimeError):
        core.send(bytes(20), {}, T0)


def test_relay_drops_duplicates_and_bounds_its_filter() -> None:
    core, _ = make_core(1, max_seen=4)
    a = Identity(signer=FastSigner(b"\x0a" * 32))
    b = Identity(signer=FastSigner(b"\x0b" * 32))
    ha = open_raw_link(core, a)
    open_raw_link(core, b)
    frame = signed_frame(a, b.id, {"x": 1}, T0, nonce="dup")
    core.frame_received(ha, frame, T0)
    core.frame_received(ha, frame, T0)
    assert core.stats.relayed == 1 and core.stats.dropped["duplicate"] == 1
    for i in range(10):
        core.frame_received(ha, signed_frame(a, b.id, i, T0, nonce=f"n{i}"), T0)
    assert core.bounds()["seen"] == (4, 4)
    core.handle_timer(T0 + core.config.seen_ttl + 2)
    assert core.bounds()["seen"] == (0, 4), "entries expire on the clock"


def test_hop_limit_and_loops() -> None:
    core, _ = make_core(1)
    a = Identity(signer=FastSigner(b"\x0a" * 32))
    ha = open_raw_link(core, a)
    open_raw_link(core, Identity(signer=FastSigner(b"\x0b" * 32)))
    env = orjson.loads(signed_frame(a, bytes(20), 1, T0))
    env["path"] = [a.id.hex()] * 20
    core.frame_received(ha, orjson.dumps(env), T0)
    assert core.stats.dropped["too-many-hops"] == 1
    env["path"] = [a.id.hex(), core.hex, a.id.hex()]
    env["nonce"] = "other"
    core.frame_received(ha, orjson.dumps(env), T0)
    assert core.stats.dropped["loop"] == 1


def test_misbehaving_link_is_closed_after_max_strikes() -> None:
    core, _ = make_core(1, max_strikes=3)
    handle = open_raw_link(core, Identity(signer=FastSigner(b"\x0a" * 32)))
    for _ in range(2):
        core.frame_received(handle, b"garbage", T0)
    assert not any(isinstance(e, CloseLink) for e in core.events())
    core.frame_received(handle, b"{}", T0)
    assert CloseLink(handle, "misbehaving") in core.events()
    assert core.stats.dropped["malformed-json"] == 2 and core.stats.dropped["not-envelope"] == 1


def test_strikes_are_forgiven_after_the_window() -> None:
    core, _ = make_core(1, max_strikes=3, strike_window=10.0)
    handle = open_raw_link(core, Identity(signer=FastSigner(b"\x0a" * 32)))
    core.frame_received(handle, b"x", T0)
    core.frame_received(handle, b"x", T0)
    core.handle_timer(T0 + 11)
    core.frame_received(handle, b"x", T0 + 11)
    assert not any(isinstance(e, CloseLink) for e in core.events())


def test_destination_verifies_and_delivers() -> None:
    core, _ = make_core(1)
    a = Identity(signer=FastSigner(b"\x0a" * 32))
    ha = open_raw_link(core, a)
    core.events()
    core.frame_received(ha, signed_frame(a, core.id, {"hi": [1, 2.5, "é"]}, T0), T0)
    delivered = [e for e in core.events() if isinstance(e, Delivered)]
    assert delivered == [Delivered({"hi": [1, 2.5, "é"]}, a.id, True, 1)]


def test_bootstrap_is_retried_with_backoff_after_losing_every_link() -> None:
    core, _ = make_core(1, bootstrap_retry=2.0)
    core.bootstrap(["ws://seed"], T0)
    dial = next(e for e in core.events() if isinstance(e, DialWebSocket))
    core.link_closed(dial.handle, T0, "refused")
    core.events()
    handle = open_raw_link(core, Identity(signer=FastSigner(b"\x0a" * 32)))
    core.link_closed(handle, T0 + 1, "remote closed")
    core.handle_timer(T0 + 3.5)
    assert any(isinstance(e, DialWebSocket) for e in core.events())


# ----------------------------------------------------------------------------- in a sim network


def line_network() -> tuple[SimNetwork, list[Any]]:
    net = SimNetwork(seed=3)
    # Client-only ends (cannot be dialled) force relaying through the middle.
    middle = net.add_node()
    ends = [net.add_node(listen=False, bootstrap=[middle]) for _ in range(2)]
    net.run(2.0)
    return net, [ends[0], middle, ends[1]]


def test_message_relayed_through_a_middle_peer() -> None:
    net, (a, middle, c) = line_network()
    assert c.id not in a.core.peers
    net.send(a, c.id, {"via": "middle"})
    net.run(1.0)
    assert [(d.data, d.sender, d.hops) for d in c.inbox] == [({"via": "middle"}, a.id, 2)]
    assert middle.core.stats.relayed >= 1


def test_connect_reports_success_and_timeout() -> None:
    results: list[ConnectResult] = []
    net = SimNetwork(seed=5)
    net.on_event = lambda node, ev: results.append(ev) if isinstance(ev, ConnectResult) else None
    seed = net.add_node()
    a = net.add_node(listen=False, bootstrap=[seed])
    b = net.add_node(bootstrap=[seed])
    net.run(2.0)
    a.core.disconnect(b.id, net.now)
    a.core.connect(b.id, net.now)
    net.pump(a)
    net.run(3.0)
    assert ConnectResult(b.id, True, "linked") in results or b.id in a.core.peers
    a.core.connect(bytes(20), net.now)
    net.pump(a)
    net.run(a.core.config.connect_timeout + 2)
    assert ConnectResult(bytes(20), False, "timeout") in results


def test_discovery_links_new_peers_and_routes_stay_short() -> None:
    net = SimNetwork(seed=7)
    first = net.add_node()
    for _ in range(39):
        net.add_node(bootstrap=[net.rng.choice(net.nodes)])
        net.run(0.3)
    net.run(30)
    assert min(len(n.core.peers) for n in net.nodes) >= 5
    rng = random.Random(1)
    for i in range(200):
        src, dst = rng.sample(net.nodes, 2)
        net.send(src, dst.id, i)
    net.run(5)
    hops = [d.hops for n in net.nodes for d in n.inbox]
    assert len(hops) == 200
    assert max(hops) <= 6
    assert first.core.stats.delivered >= 0


def test_same_seed_same_run() -> None:
    def digest(seed: int) -> list[tuple[int, int, int]]:
        net = SimNetwork(seed=seed)
        net.add_node()
        for _ in range(15):
            net.add_node(bootstrap=[net.rng.choice(net.nodes)])
            net.run(0.2)
        net.run(10)
        return [
            (n.core.stats.frames_out, n.core.stats.bytes_in, len(n.core.peers)) for n in net.nodes
        ]

    assert digest(11) == digest(11)
    assert digest(11) != digest(12)


# ----------------------------------------------------------------------------- hostile input

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=30),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=25,
)
hexes = st.sampled_from(["aa" * 20, "bb" * 20, "0" * 40]) | st.text(max_size=41)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "to": hexes | json_values,
        "from": hexes | json_values,
        "path": st.lists(hexes, max_size=22) | json_values,
        "nonce": st.text(max_size=20) | json_values,
        "data": st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    list(wire.__dict__.get("__all__", []))
                    or [
                        "user",
                        "findPeers",
                        "foundPeers",
                        "handshake-offer",
                        "handshake-answer",
                        "signal",
                        "x",
                    ]
                )
                | json_values
            },
            optional={"data": json_values},
        )
        | json_values,
        "auth": st.fixed_dictionaries(
            {},
            optional={"key": st.text(max_size=50), "sig": st.text(max_size=90), "ts": json_values},
        )
        | json_values,
        "route": st.lists(hexes, max_size=5) | json_values,
    },
)
frames = st.one_of(
    envelopes.map(lambda e: orjson.dumps(e, option=orjson.OPT_SERIALIZE_NUMPY) if True else b""),
    st.binary(max_size=200),
    json_values.map(lambda v: orjson.dumps(v)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(frames, min_size=1, max_size=30))
def test_core_survives_any_frames_and_stays_bounded(batch: list[bytes]) -> None:
    core, _ = make_core(1, max_seen=8, max_routes=4, max_strikes=1000)
    attacker = Identity(signer=FastSigner(b"\x0a" * 32))
    handle = open_raw_link(core, attacker)
    open_raw_link(core, Identity(signer=FastSigner(b"\x0b" * 32)))
    received = core.stats.frames_in
    for i, frame in enumerate(batch):
        core.frame_received(handle, frame, T0 + i)
        core.handle_timer(T0 + i)
        core.events()
    stats = core.stats
    assert stats.frames_in == received + len(batch)
    accounted = stats.relayed + stats.delivered + sum(stats.dropped.values())
    assert accounted >= 1
    sizes = core.bounds()
    assert sizes["seen"][0] <= 8 and sizes["delivered"][0] <= 8 and sizes["routes"][0] <= 4
    assert sizes["candidates"][0] <= 160 * core.config.k
    assert len(core.peers) <= core.config.max_links


def test_an_unproven_claim_never_displaces_a_proven_link() -> None:
    """With unsigned peers allowed, a hello that only claims an id (0.0.2's form) does not
    displace a link that proved that id; and a proven link displaces a mere claim."""

    def claim(core: Core, peer_id: bytes) -> int:
        handle = core.link_accepted(T0)
        core.events()
        core.frame_received(handle, orjson.dumps({"type": "Buffer", "data": list(peer_id)}), T0)
        return handle

    real = Identity(signer=FastSigner(b"\x02" * 32))
    core, _ = make_core(1, require_auth=False)
    proven = open_raw_link(core, real)
    impostor = claim(core, real.id)
    assert CloseLink(impostor, "duplicate") in core.events()
    links = [link for link in core.inspect()["links"] if link["state"] == "open"]
    assert core.peers == [real.id] and [link["authenticated"] for link in links] == [True]
    core.send(real.id, "to the real one", T0)
    assert [e.handle for e in core.events() if isinstance(e, SendFrame)][:1] == [proven]

    core, _ = make_core(1, require_auth=False)
    impostor = claim(core, real.id)
    assert core.peers == [real.id]  # admitted while nobody proves otherwise
    core.events()
    open_raw_link(core, real)
    # The impostor's link was closed (it drains until its transport reports it gone).
    assert sorted(link["state"] for link in core.inspect()["links"]) == ["draining", "open"]
    links = [link for link in core.inspect()["links"] if link["state"] == "open"]
    assert core.peers == [real.id] and [link["authenticated"] for link in links] == [True]
    assert core.stats.dropped["unproven-duplicate"] == 1
