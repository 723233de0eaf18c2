"""WebRTC links between live Python nodes, formed through signalling relayed by the network.

Every node runs on 127.0.0.1: relays listen on port 0, WebRTC peers gather ICE host candidates
on 127.0.0.1 only (``ice_host_addresses``) and use no ICE server at all (never a public STUN
server). Most peers here have no WebSocket server (``port=None``, like a browser), so WebRTC is
the only way they can link directly.

The relay in most tests runs with ``control_rate=0``: it answers no discovery request, so the
peers do not learn of each other and link on their own, and ``connect()`` is what links them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from helpers import eventually

pytest.importorskip("aiortc")

from peer_relay import PeerRelay
from peer_relay.identity import Identity

pytestmark = pytest.mark.webrtc

LOOPBACK = ["127.0.0.1"]
T = 10.0
"""Upper bound for anything that should take milliseconds."""

QUIET_RELAY: dict[str, Any] = {"port": 0, "host": "127.0.0.1", "control_rate": 0}
"""A relay that answers no findPeers: its clients only link when told to."""


def rtc(**options: Any) -> dict[str, Any]:
    """Options of a client-only WebRTC peer on loopback (no periodic discovery during a test)."""
    return {"wrtc": True, "ice_host_addresses": LOOPBACK, "refresh_interval": 300.0, **options}


@contextlib.asynccontextmanager
async def network(
    *clients: dict[str, Any], relay: dict[str, Any] | None = None
) -> AsyncIterator[tuple[PeerRelay, list[PeerRelay]]]:
    """A relay and clients bootstrapped to it, each linked to the relay before the body runs."""
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(PeerRelay(**(relay or QUIET_RELAY)))
        assert hub.url is not None
        nodes = [
            await stack.enter_async_context(PeerRelay(bootstrap=[hub.url], **options))
            for options in clients
        ]
        for node in nodes:
            await node.wait_for_peers(1, timeout=T)
        await eventually(
            lambda: all(node.id in hub.peers for node in nodes), T, "the relay linked to all"
        )
        yield hub, nodes


def rtc_leftovers(node: PeerRelay) -> dict[str, Any]:
    """WebRTC state of a node that belongs to no open link (all empty when nothing leaked)."""
    bounds, state = node.bounds(), node.inspect()
    open_rtc = sorted(p.hex() for p in node.peers if node.link_transport(p) == "webrtc")
    return {
        "pending links": bounds["pending_links"][0] + bounds["opening"][0],
        "connecting": state["attempts"],
        "webrtc peers": sorted(set(state["webrtc"]) - set(open_rtc)),
        "adapter links": bounds["rtc_links"][0] - len(open_rtc),
        "node links": bounds["host_links"][0] - len(node.peers),
    }


CLEAN: dict[str, Any] = {
    "pending links": 0,
    "connecting": [],
    "webrtc peers": [],
    "adapter links": 0,
    "node links": 0,
}


async def test_connect_forms_a_webrtc_link_that_carries_messages_past_the_relay() -> None:
    async with network(rtc(), rtc()) as (hub, (a, b)):
        assert a.inspect()["ice_servers"] == []  # no STUN by default
        assert b.id not in a.peers and a.id not in b.peers

        linked_a: list[bytes] = []
        linked_b: list[bytes] = []
        a.on("peer", linked_a.append)
        b.on("peer", linked_b.append)
        started = time.perf_counter()
        await a.connect(b.id, timeout=T)
        setup_ms = (time.perf_counter() - started) * 1000
        await eventually(lambda: a.id in b.peers, T, "the link open at b")
        assert a.link_transport(b.id) == "webrtc"
        assert b.link_transport(a.id) == "webrtc"
        assert linked_a == [b.id] and linked_b == [a.id]
        assert linked_a[0].verified and linked_b[0].verified  # proven by the signed signalling
        assert setup_ms < 5000, f"WebRTC setup took {setup_ms:.0f} ms"
        # both peers are client-only: this link can only be WebRTC
        assert a.url is None and b.url is None

        inbox_a, inbox_b = a.messages(), b.messages()
        before = dict(hub.stats)
        for i in range(20):
            a.send(b.id, {"i": i, "to": "b", "ü": "✓"})
            b.send(a.id, ["to a", i])
        got_b = [await asyncio.wait_for(anext(inbox_b), T) for _ in range(20)]
        got_a = [await asyncio.wait_for(anext(inbox_a), T) for _ in range(20)]
        assert [m.data for m in got_b] == [{"i": i, "to": "b", "ü": "✓"} for i in range(20)]
        assert [m.data for m in got_a] == [["to a", i] for i in range(20)]
        assert all(m.hops == 1 and m.verified for m in got_a + got_b)
        assert {m.sender for m in got_b} == {a.id} and {m.sender for m in got_a} == {b.id}
        after = hub.stats
        assert after["frames_in"] == before["frames_in"], "the relay saw frames of the exchange"
        assert after["relayed"] == before["relayed"]
        assert after["frames_out"] == before["frames_out"]
        # The node counts the exchange on the WebRTC link itself (the status page shows it).
        [link_ab] = [x for x in a.inspect()["links"] if x["peer"] == b.id.hex()]
        [link_ba] = [x for x in b.inspect()["links"] if x["peer"] == a.id.hex()]
        assert link_ab["transport"] == "webrtc" and link_ab["opened_at"] is not None
        assert link_ab["traffic"]["frames_out"] >= 20 and link_ab["traffic"]["frames_in"] >= 20
        sent = sum(len(orjson.dumps({"i": i, "to": "b", "ü": "✓"})) for i in range(20))
        assert link_ab["traffic"]["bytes_out"] > sent and link_ba["traffic"]["bytes_in"] > sent


async def test_a_burst_without_flow_control_stays_on_the_webrtc_link() -> None:
    """About 2 MB sent at once (no drain): the link buffers it as a WebSocket link would, and
    neither closes nor spills onto the relay."""
    count = 5000
    async with network(rtc(sign=False), rtc(allow_unsigned=True)) as (hub, (a, b)):
        await a.connect(b.id, timeout=T)
        await eventually(lambda: a.id in b.peers, T, "the link open at b")
        closed: list[str] = []
        a.on("peer-closed", lambda peer, reason: closed.append(reason))
        got: list[int] = []
        hops: set[int] = set()
        inbox = b.messages()

        async def read() -> None:
            async for message in inbox:
                got.append(message.data["i"])
                hops.add(message.hops)
                if len(got) == count:
                    return

        reader = asyncio.ensure_future(read())
        relayed = hub.stats["relayed"]
        for i in range(count):
            a.send(b.id, {"i": i, "body": "x" * 300})
        await asyncio.wait_for(reader, 30)
        assert got == list(range(count)) and hops == {1}
        assert closed == [] and a.link_transport(b.id) == "webrtc"
        assert hub.stats["relayed"] == relayed


async def test_disconnect_closes_the_webrtc_link_cleanly_on_both_sides() -> None:
    async with network(rtc(), rtc()) as (hub, (a, b)):
        await a.connect(b.id, timeout=T)
        await eventually(lambda: a.id in b.peers, T, "the link open at b")
        closed_a: list[tuple[bytes, str]] = []
        closed_b: list[tuple[bytes, str]] = []
        a.on("peer-closed", lambda peer, reason: closed_a.append((peer, reason)))
        b.on("peer-closed", lambda peer, reason: closed_b.append((peer, reason)))

        assert a.disconnect(b.id) is True
        await eventually(lambda: bool(closed_a and closed_b), T, "peer-closed on both sides")
        assert closed_a == [(b.id, "disconnect")]
        assert closed_b[0][0] == a.id and "remote-closed" in closed_b[0][1], closed_b
        assert len(closed_a) == len(closed_b) == 1
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "no WebRTC leftovers")
            assert node.bounds()["rtc_links"][0] == 0 and node.inspect()["webrtc"] == []
            assert node.peers == [hub.id]
        assert a.link_transport(b.id) is None and b.link_transport(a.id) is None
        assert a.disconnect(b.id) is False

        # The peers are still reachable, now through the relay again.
        inbox = b.messages()
        a.send(b.id, "relayed again")
        message = await asyncio.wait_for(anext(inbox), T)
        assert (message.data, message.hops) == ("relayed again", 2)

        # And they can link again.
        await b.connect(a.id, timeout=T)
        assert b.link_transport(a.id) == "webrtc"
        await eventually(lambda: a.link_transport(b.id) == "webrtc", T, "the new link at a")


async def test_peers_without_a_server_find_and_link_each_other_by_webrtc() -> None:
    """Discovery (a relay that answers findPeers) makes client-only peers link on their own."""
    relay = {"port": 0, "host": "127.0.0.1"}
    async with network(rtc(), rtc(), rtc(), relay=relay) as (hub, nodes):
        for x in nodes:
            for y in nodes:
                if x is not y:
                    await eventually(
                        lambda x=x, y=y: x.link_transport(y.id) == "webrtc",
                        T,
                        "every pair of client-only peers linked by WebRTC",
                    )
        assert all(n.link_transport(hub.id) == "ws" for n in nodes)
        a, b, c = nodes
        inbox = c.messages()
        before = hub.stats["frames_in"]
        a.send(c.id, "direct")
        b.send(c.id, "also direct")
        got = {(await asyncio.wait_for(anext(inbox), T)).data for _ in range(2)}
        assert got == {"direct", "also direct"}
        assert hub.stats["frames_in"] == before


async def test_attempt_whose_remote_signals_are_lost_times_out_and_frees_its_slot() -> None:
    timeout = 2.0
    async with network(rtc(connect_timeout=timeout), rtc(connect_timeout=timeout)) as (_, (a, b)):
        assert b._core is not None
        real_send_signal = b._core.send_signal
        lost: list[Any] = []
        # b's answer never reaches a: as if a relay on the way dropped every signal message
        b._core.send_signal = lambda handle, signal, now: lost.append(signal)  # type: ignore[method-assign]
        started = time.perf_counter()
        with pytest.raises((ConnectionError, TimeoutError)):
            await a.connect(b.id, timeout=timeout + 3)
        waited = time.perf_counter() - started
        assert timeout - 0.5 < waited < timeout + 2.5, waited
        assert lost and lost[0]["type"] == "answer"
        assert b.id not in a.peers
        assert a.stats["links_open"] == 1
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "slot freed")
            assert node.bounds()["rtc_links"][0] == 0 and node.inspect()["webrtc"] == []

        # With the signals flowing again, the same peers link.
        del b._core.send_signal
        assert b._core.send_signal == real_send_signal
        await a.connect(b.id, timeout=T)
        assert a.link_transport(b.id) == "webrtc"
        await eventually(lambda: b.link_transport(a.id) == "webrtc", T, "the link at b")


async def test_retry_links_while_the_remote_still_holds_the_failed_attempt() -> None:
    """The asker gives up first (shorter timeout) and asks again at once: the answerer's link
    of the first attempt is still pending and must not swallow the new offer."""
    async with network(rtc(connect_timeout=2.0), rtc(connect_timeout=10.0)) as (_, (a, b)):
        assert b._core is not None
        b._core.send_signal = lambda handle, signal, now: None  # type: ignore[method-assign]
        with pytest.raises((ConnectionError, TimeoutError)):
            await a.connect(b.id, timeout=5.0)
        assert rtc_leftovers(b)["pending links"] == 1  # b still waits on the first attempt
        del b._core.send_signal
        await a.connect(b.id, timeout=T)
        assert a.link_transport(b.id) == "webrtc"
        await eventually(lambda: b.link_transport(a.id) == "webrtc", T, "the link at b")
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "the stale link gone")


def ordered_identities(asker_lower: bool) -> tuple[Identity, Identity]:
    """Two identities, the asker's id lower than the answerer's or not."""
    first, second = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.id)
    return (first, second) if asker_lower else (second, first)


@pytest.mark.parametrize("signal_delay", [0.0, 0.1])
@pytest.mark.parametrize("asker_lower", [True, False])
async def test_connect_while_the_remote_is_already_linking_to_us(
    asker_lower: bool, signal_delay: float
) -> None:
    """b asks a for a link; a answers, then calls connect(b) itself before b's link is up.

    Whatever the order of the signals (b's slowed down or not) and of the ids (which decide who
    answers when both ask, and which of two crossing WebRTC attempts survives), both connects
    succeed with one link and nothing is left over.
    """
    id_a, id_b = ordered_identities(asker_lower)
    async with network(rtc(identity=id_a), rtc(identity=id_b)) as (_, (a, b)):
        assert b._core is not None and a._core is not None
        real_send_signal = b._core.send_signal
        loop = asyncio.get_running_loop()

        def slow_send_signal(handle: int, signal: Any, now: float) -> None:
            def later() -> None:
                real_send_signal(handle, signal, time.time())
                b._flush()

            loop.call_later(signal_delay, later)

        if signal_delay:
            b._core.send_signal = slow_send_signal  # type: ignore[method-assign]
        b_connects = asyncio.ensure_future(b.connect(a.id, timeout=T))
        await eventually(lambda: b.id.hex() in a.inspect()["answered"], T, "a answered b")
        await a.connect(b.id, timeout=T)
        await asyncio.wait_for(b_connects, T)
        assert a.link_transport(b.id) == "webrtc" and b.link_transport(a.id) == "webrtc"
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "one link, no leftovers")
        inbox = b.messages()
        a.send(b.id, "one link")
        message = await asyncio.wait_for(anext(inbox), T)
        assert (message.data, message.hops) == ("one link", 1)


async def test_attempt_between_host_addresses_that_cannot_pair_fails_and_frees_its_slot() -> None:
    """a gathers only on 127.0.0.1, b only on ::1: ICE has no candidate pair and fails."""
    timeout = 3.0
    async with network(
        rtc(connect_timeout=timeout),
        rtc(connect_timeout=timeout, ice_host_addresses=["::1"]),
        rtc(connect_timeout=timeout),
    ) as (_, (a, b, c)):
        with pytest.raises((ConnectionError, TimeoutError)):
            await a.connect(b.id, timeout=timeout + 3)
        assert b.id not in a.peers and a.id not in b.peers
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "slot freed")
            assert node.bounds()["rtc_links"][0] == 0
        # a is none the worse for it
        await a.connect(c.id, timeout=T)
        assert a.link_transport(c.id) == "webrtc"


async def test_webrtc_links_share_the_table_and_bound_with_websocket_links() -> None:
    bound = 2
    async with network(rtc(max_links=bound), rtc(), rtc()) as (hub, (a, b, c)):
        most = 0

        def on_peer(_peer: bytes) -> None:
            nonlocal most
            most = max(most, len(a.peers))

        a.on("peer", on_peer)
        await a.connect(b.id, timeout=T)
        assert a.link_transport(hub.id) == "ws" and a.link_transport(b.id) == "webrtc"
        assert sorted(a.peers) == sorted([hub.id, b.id])
        assert a.stats["links_open"] == bound

        # A third link does not fit: either it is refused or it pushes another link out.
        try:
            await a.connect(c.id, timeout=T)
        except ConnectionError as exc:
            assert "link-limit" in str(exc) or "bucket-full" in str(exc), exc
            assert c.id not in a.peers
        else:
            assert a.link_transport(c.id) == "webrtc"
        await eventually(lambda: rtc_leftovers(a) == CLEAN, T, "no WebRTC leftovers at a")
        assert len(a.peers) <= bound and most <= bound
        assert a.stats["links_open"] == len(a.peers)
        webrtc_open = {p for p in a.peers if a.link_transport(p) == "webrtc"}
        assert {bytes.fromhex(p) for p in a.inspect()["webrtc"]} == webrtc_open


@pytest.mark.parametrize("without_webrtc", ["asker", "answerer"])
async def test_connect_falls_back_to_websocket_when_one_side_has_no_webrtc(
    without_webrtc: str,
) -> None:
    asker_opts = rtc(wrtc=without_webrtc != "asker")
    # the answerer has a WebSocket server, so the asker can dial it
    answerer_opts = rtc(wrtc=without_webrtc != "answerer", port=0, host="127.0.0.1")
    async with network(asker_opts, answerer_opts) as (_, (asker, answerer)):
        await asker.connect(answerer.id, timeout=T)
        assert asker.link_transport(answerer.id) == "ws"
        await eventually(lambda: answerer.link_transport(asker.id) == "ws", T, "the ws link")
        for node in (asker, answerer):
            assert rtc_leftovers(node) == CLEAN
        inbox = answerer.messages()
        asker.send(answerer.id, "over ws")
        message = await asyncio.wait_for(anext(inbox), T)
        assert (message.data, message.hops) == ("over ws", 1)


async def test_webrtc_preferred_over_websocket_when_both_sides_have_it() -> None:
    """As in the original: the answer offers a URL and WebRTC, and WebRTC wins."""
    async with network(rtc(), rtc(port=0, host="127.0.0.1")) as (_, (asker, answerer)):
        assert answerer.url is not None
        await asker.connect(answerer.id, timeout=T)
        assert asker.link_transport(answerer.id) == "webrtc"


async def test_connect_without_webrtc_or_url_on_either_side_fails_fast() -> None:
    async with network(rtc(wrtc=False), rtc()) as (_, (a, b)):
        started = time.perf_counter()
        with pytest.raises(ConnectionError, match="neither peer can reach the other"):
            await a.connect(b.id, timeout=T)
        assert time.perf_counter() - started < 2.0
        for node in (a, b):
            await eventually(lambda n=node: rtc_leftovers(n) == CLEAN, T, "nothing left over")
        assert b.inspect()["webrtc"] == []
