"""Hop-by-hop confirmation, idle timers and reaching out from an island, on a virtual clock."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson

from peer_relay import wire
from peer_relay.core import Core
from peer_relay.events import CloseLink, DialWebSocket, SendFrame
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner

from .test_core import T0, make_core, open_raw_link


def remote(seed: int) -> Identity:
    return Identity(signer=FastSigner(bytes([seed]) * 32))


def sent(events: list[Any]) -> list[tuple[int, Any]]:
    return [(e.handle, orjson.loads(e.frame)) for e in events if isinstance(e, SendFrame)]


def users(frames: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(h, f["data"]["data"]) for h, f in frames if "to" in f and f["data"]["type"] == "user"]


def pings(frames: list[tuple[int, Any]]) -> list[tuple[int, int]]:
    return [(h, f["pr"]["ping"]) for h, f in frames if "ping" in f.get("pr", {})]


def punctual(core: Core, until: float) -> list[tuple[float, Any]]:
    """Run ``core``'s timer as a host that is never late, up to ``until``: (time, event)s."""
    out: list[tuple[float, Any]] = []
    while (timer := core.get_timer()) is not None and timer <= until:
        core.handle_timer(timer)
        out.extend((timer, event) for event in core.events())
    return out


def closes(timed: list[tuple[float, Any]]) -> list[tuple[float, CloseLink]]:
    return [(t, e) for t, e in timed if isinstance(e, CloseLink)]


def test_without_confirm_delay_a_ping_follows_at_once_and_a_pong_confirms() -> None:
    core, _ = make_core(1, confirm_delay=0)
    peer = remote(2)
    handle = open_raw_link(core, peer)
    core.events()
    core.send(peer.id, {"n": 1}, T0)
    core.send(peer.id, {"n": 2}, T0)
    frames = sent(core.events())
    # One ping covers the first; the second waits for the next ping (one out at a time).
    assert [f for _, f in frames if "pr" in f] == [{"pr": {"ping": 1}}]
    assert frames.index((handle, {"pr": {"ping": 1}})) == 1
    core.frame_received(handle, wire.link_control_frame("pong", 1), T0 + 0.1)
    assert sent(core.events()) == [(handle, {"pr": {"ping": 2}})]
    core.frame_received(handle, wire.link_control_frame("pong", 2), T0 + 0.2)
    assert core.events() == []
    core.handle_timer(T0 + 60)
    assert core.peers == [peer.id]  # nothing was left waiting: the link stays


def test_messages_sent_within_confirm_delay_share_one_ping() -> None:
    core, _ = make_core(1, confirm_delay=0.05)
    peer = remote(2)
    handle = open_raw_link(core, peer)
    core.events()
    timer = core.get_timer()
    assert timer is not None
    for n, at in enumerate((T0, T0 + 0.01, T0 + 0.03)):
        core.send(peer.id, {"n": n}, at)
    frames = sent(core.events())
    assert len(users(frames)) == 3 and pings(frames) == []
    assert core.get_timer() == min(timer, T0 + 0.05)  # the host wakes the core for the ping
    timed = punctual(core, T0 + 0.05)
    assert [(t, p) for t, e in timed for p in pings(sent([e]))] == [(T0 + 0.05, (handle, 1))]
    # Sent while that ping is out, a message waits for its pong, and then for confirm_delay.
    core.send(peer.id, {"n": 3}, T0 + 0.06)
    core.frame_received(handle, wire.link_control_frame("pong", 1), T0 + 0.07)
    assert pings(sent(core.events())) == [] and core.get_timer() == T0 + 0.06 + 0.05
    timed = punctual(core, T0 + 0.06 + 0.05)
    assert [(t, p) for t, e in timed for p in pings(sent([e]))] == [(T0 + 0.06 + 0.05, (handle, 2))]
    core.frame_received(handle, wire.link_control_frame("pong", 2), T0 + 0.12)
    assert core.bounds()["unconfirmed"] == (0, 64)
    assert not closes(punctual(core, T0 + 60)) and core.peers == [peer.id]


def test_half_of_max_unconfirmed_sends_the_ping_at_once() -> None:
    core, _ = make_core(1, confirm_delay=1.0, max_unconfirmed=8)
    peer = remote(2)
    handle = open_raw_link(core, peer)
    core.events()
    for n in range(3):
        core.send(peer.id, {"n": n}, T0)
    assert pings(sent(core.events())) == []
    core.send(peer.id, {"n": 3}, T0)
    frames = sent(core.events())
    assert pings(frames) == [(handle, 1)] and frames.index((handle, {"pr": {"ping": 1}})) == 1
    # With that one out, four more are kept (eight in all) and the rest only sent; the pong
    # finds half of max_unconfirmed waiting: the next ping goes at once.
    for n in range(4, 10):
        core.send(peer.id, {"n": n}, T0 + 0.1)
    assert len(users(sent(core.events()))) == 6 and core.bounds()["unconfirmed"] == (8, 8)
    core.frame_received(handle, wire.link_control_frame("pong", 1), T0 + 0.2)
    assert pings(sent(core.events())) == [(handle, 2)]
    assert core.bounds()["unconfirmed"] == (4, 8)


def test_pings_are_answered_and_control_frames_from_strangers_are_strikes() -> None:
    core, _ = make_core(1)
    handle = open_raw_link(core, remote(2))
    core.events()
    core.frame_received(handle, wire.link_control_frame("ping", 41), T0)
    assert sent(core.events()) == [(handle, {"pr": {"pong": 41}})]
    for bad in (b'{"pr":{"ping":-1}}', b'{"pr":{"ping":1,"pong":2}}', b'{"pr":{"hop":1}}'):
        core.frame_received(handle, bad, T0)
    assert core.stats.dropped["bad-link-control"] == 3
    # A 0.0.2 peer (no proof) never says pr: a control frame from it is a malformed envelope.
    plain, _ = make_core(3, require_auth=False)
    other = plain.link_accepted(T0)
    plain.frame_received(other, wire.hello_frame(remote(4).id, None, None), T0)
    plain.events()
    plain.frame_received(other, wire.link_control_frame("ping", 1), T0)
    assert plain.stats.dropped["not-envelope"] == 1 and sent(plain.events()) == []


def test_a_silent_next_hop_is_dropped_and_the_message_goes_another_way() -> None:
    core, _ = make_core(1, confirm_timeout=3.0, confirm_delay=0.05, tick_interval=1.0)
    near, far = remote(2), remote(3)
    to_near = open_raw_link(core, near)
    to_far = open_raw_link(core, far)
    core.events()
    target = bytes(a ^ 1 for a in near.id)  # nearer to ``near`` than to anyone else
    core.send(target, {"n": 7}, T0)
    assert users(sent(core.events())) == [(to_near, {"n": 7})]
    assert not closes(punctual(core, T0 + 3.05 - 1e-6))
    timed = punctual(core, T0 + 3.05 + 1.0)  # no pong: ``near`` crashed
    [(when, close)] = closes(timed)
    assert close == CloseLink(to_near, "unresponsive")
    assert T0 + 3.05 <= when <= T0 + 3.05 + 1.0  # confirm_delay + confirm_timeout, a tick at most
    assert users(sent([e for _, e in timed])) == [(to_far, {"n": 7})]
    assert core.stats.dropped["unresponsive"] == 1 and core.stats.rerouted == 1
    assert core.peers == [far.id]


def test_a_late_timer_closes_no_link_whose_pong_waits_unread() -> None:
    core, _ = make_core(1, confirm_timeout=3.0, confirm_delay=0.05)
    peer = remote(2)
    handle = open_raw_link(core, peer)
    core.events()
    core.send(peer.id, {"n": 1}, T0)
    punctual(core, T0 + 0.05)  # the ping goes
    # The host blocks for ten seconds; the peer's pong waits in its socket while it runs the
    # timer, over a quarter of confirm_timeout late: no verdict yet.
    core.handle_timer(T0 + 10)
    assert not any(isinstance(e, CloseLink) for e in core.events())
    core.frame_received(handle, wire.link_control_frame("pong", 1), T0 + 10.001)
    assert not closes(punctual(core, T0 + 60))
    assert core.peers == [peer.id] and core.stats.rerouted == 0


def test_a_dead_remote_is_found_out_after_a_stall_too() -> None:
    core, _ = make_core(1, confirm_timeout=3.0, confirm_delay=0.05, tick_interval=1.0)
    peer = remote(2)
    handle = open_raw_link(core, peer)
    core.events()
    core.send(peer.id, {"n": 1}, T0)
    punctual(core, T0 + 0.05)
    core.handle_timer(T0 + 10)  # late: the ping gets confirm_timeout / 2 more
    assert not any(isinstance(e, CloseLink) for e in core.events())
    [(when, close)] = closes(punctual(core, T0 + 20))
    assert close == CloseLink(handle, "unresponsive") and T0 + 11.5 <= when <= T0 + 12.5
    # Once only: late again after that grace, the host finds the link dead at once.
    core, _ = make_core(1, confirm_timeout=3.0, confirm_delay=0.05)
    handle = open_raw_link(core, peer)
    core.events()
    core.send(peer.id, {"n": 1}, T0)
    punctual(core, T0 + 0.05)
    core.handle_timer(T0 + 10)
    core.events()
    core.handle_timer(T0 + 20)
    assert CloseLink(handle, "unresponsive") in core.events()


def test_messages_a_closed_link_did_not_confirm_go_another_way() -> None:
    core, _ = make_core(1)
    near, far = remote(2), remote(3)
    to_near = open_raw_link(core, near)
    to_far = open_raw_link(core, far)
    core.events()
    target = bytes(a ^ 1 for a in near.id)
    core.send(target, {"n": 8}, T0)
    core.events()
    core.link_closed(to_near, T0 + 0.5, "remote closed")
    assert users(sent(core.events())) == [(to_far, {"n": 8})]


def test_an_idle_peer_sleeps_until_its_next_refresh() -> None:
    core, _ = make_core(1, tick_interval=1.0, refresh_interval=15.0)
    open_raw_link(core, remote(2))
    core.events()
    ticks = 0
    timers: list[float] = []
    while (timer := core.get_timer()) is not None and timer < T0 + 120:
        core.handle_timer(timer)
        core.events()
        ticks += 1
        timers.append(timer)
    # Nothing else waits on a deadline: after the first tick, it wakes at refreshes only: soon
    # while it settles (refresh_interval / 8, twice as late each time its near links stay the
    # same), then every 11-19 s (refresh_interval, jittered), never every tick_interval.
    gaps = [b - a for a, b in pairwise(timers[1:])]
    assert all(gap >= 0.75 * 15.0 / 8 for gap in gaps), timers
    assert all(gap >= 0.75 * 15.0 for gap in gaps[4:]), timers
    assert 8 <= ticks <= 16, ticks


def test_a_peer_that_knows_no_one_to_dial_redials_its_bootstrap_peer() -> None:
    core, _ = make_core(1, refresh_interval=15.0)
    core.bootstrap(["ws://boot"], T0)
    dial = next(e for e in core.events() if isinstance(e, DialWebSocket))
    core.link_closed(dial.handle, T0, "connection refused")
    core.events()
    # It is linked to one peer only (a fellow newcomer), which names no one else.
    open_raw_link(core, remote(2))
    core.events()
    dials: list[float] = []
    now = T0
    while now < T0 + 200:
        now = max(now + 0.5, core.get_timer() or now)
        core.handle_timer(now)
        for e in core.events():
            if isinstance(e, DialWebSocket) and e.url == "ws://boot":
                dials.append(now - T0)
                core.link_closed(e.handle, now, "connection refused")
    assert dials, "never reached out"
    gaps = [b - a for a, b in pairwise(dials)]
    assert len(dials) >= 3 and all(later >= earlier for earlier, later in pairwise(gaps))


def test_max_unconfirmed_zero_turns_confirmation_off() -> None:
    core, _ = make_core(1, max_unconfirmed=0)
    peer = remote(2)
    open_raw_link(core, peer)
    core.events()
    core.send(peer.id, {"n": 1}, T0)
    frames = sent(core.events())
    assert [f for _, f in frames if "pr" in f] == [] and len(users(frames)) == 1
    core.handle_timer(T0 + 60)
    assert core.peers == [peer.id]


def test_messages_kept_for_rerouting_are_bounded_in_count_and_bytes() -> None:
    core, _ = make_core(1, max_frame=4096, max_unconfirmed=5)
    peer = remote(2)
    open_raw_link(core, peer)
    core.events()
    for n in range(20):
        core.send(peer.id, {"n": n, "pad": "x" * 900}, T0)
    assert len(users(sent(core.events()))) == 20  # all sent, whatever is kept
    bounds = core.bounds()
    count, kept = bounds["unconfirmed"][0], bounds["unconfirmed_bytes"][0]
    assert 4096 - kept < kept / count <= 4096 / 2, (count, kept)  # as many as fit in max_frame
    assert count < 5
    core, _ = make_core(1, max_unconfirmed=5)
    open_raw_link(core, peer)
    core.events()
    for n in range(20):
        core.send(peer.id, {"n": n}, T0)
    assert core.bounds()["unconfirmed"] == (5, 5)
