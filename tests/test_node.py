"""Live nodes over real WebSockets on 127.0.0.1 (ephemeral ports): the original's scenarios,
the public API, and a 50-node network."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from typing import Any

import pytest
from helpers import eventually, settled
from websockets.asyncio.client import connect

from peer_relay import PeerRelay

LOCAL = {"port": 0, "host": "127.0.0.1"}


async def test_two_peers_connect_and_both_see_peer_events() -> None:
    seen1: list[bytes] = []
    seen2: list[bytes] = []
    async with PeerRelay(**LOCAL) as c1:
        c1.on("peer", seen1.append)
        c2 = PeerRelay(bootstrap=[c1.url or ""])
        c2.on("peer", seen2.append)
        async with c2:
            await eventually(lambda: seen1 == [c2.id] and seen2 == [c1.id], what="peer events")
            assert c1.peers == [c2.id] and c2.peers == [c1.id]
            assert all(s.verified for s in seen1 + seen2)


async def test_direct_messages_both_ways() -> None:
    async with PeerRelay(**LOCAL) as c1, PeerRelay(bootstrap=[c1.url or ""]) as c2:
        got1: list[tuple[Any, bytes]] = []
        got2: list[tuple[Any, bytes]] = []
        c1.on("message", lambda d, s: got1.append((d, s)))
        c2.on("message", lambda d, s: got2.append((d, s)))
        await c2.wait_for_peers(1)
        c1.send(c2.id, {"n": 1, "s": "ünï", "l": [None, True, 1.5]})
        c2.send(c1.id.hex(), "back")
        await eventually(lambda: got1 and got2, what="both messages")
        assert got2 == [({"n": 1, "s": "ünï", "l": [None, True, 1.5]}, c1.id)]
        assert got1 == [("back", c2.id)]


async def test_messages_sent_before_connecting_arrive() -> None:
    async with PeerRelay(**LOCAL) as c1:
        got: list[Any] = []
        c1.on("message", lambda d, s: got.append(d))
        async with PeerRelay(bootstrap=[c1.url or ""]) as c2:
            assert c2.peers == []
            for i in range(3):
                c2.send(c1.id, i)
            await eventually(lambda: len(got) == 3, what="queued messages")
            assert got == [0, 1, 2]


async def test_message_relayed_from_c1_to_c3_through_c2() -> None:
    async with (
        PeerRelay(**LOCAL) as c2,
        PeerRelay(bootstrap=[c2.url or ""]) as c1,
        PeerRelay(bootstrap=[c2.url or ""]) as c3,
    ):
        await c1.wait_for_peers(1)
        await c3.wait_for_peers(1)
        inbox = c3.messages()
        c1.send(c3.id, {"hello": "c3"})
        message = await asyncio.wait_for(anext(inbox), 5)
        assert c3.id not in c1.peers, "client-only peers cannot link directly"
        assert (message.data, message.sender, message.hops) == ({"hello": "c3"}, c1.id, 2)
        assert message.verified
        assert c2.stats["relayed"] >= 1


async def test_discovery_links_c1_to_c3_then_c1_drops_c2_and_still_reaches_c3() -> None:
    async with (
        PeerRelay(**LOCAL) as c2,
        PeerRelay(**LOCAL, bootstrap=[c2.url or ""]) as c1,
        PeerRelay(**LOCAL, bootstrap=[c2.url or ""]) as c3,
    ):
        await eventually(lambda: c3.id in c1.peers, what="c1 to link c3 by discovery")
        # c2 goes away for good (a disconnect alone may be undone at once: c1 and c2 still
        # want each other as near links, and either may dial the other again).
        await c2.destroy()
        await eventually(lambda: c2.id not in c1.peers, what="c1 to see c2 gone")
        got: list[tuple[Any, int]] = []
        c3.on("message", lambda d, s: got.append((d, s)))
        c1.send(c3.id, "still here")
        await eventually(lambda: bool(got), what="message after dropping c2")
        assert got == [("still here", c1.id)]


# ----------------------------------------------------------------------------- API behaviour


async def test_programmer_errors_raise_at_once() -> None:
    peer = PeerRelay()
    with pytest.raises(RuntimeError, match="start"):
        peer.send(bytes(20), 1)
    async with peer:
        with pytest.raises(ValueError):
            peer.send(b"short", 1)
        with pytest.raises(ValueError):
            peer.send("ab" * 19, 1)
        with pytest.raises(TypeError):
            peer.send(12345, 1)
        with pytest.raises(ValueError):
            peer.send(bytes(20), {1, 2})
        with pytest.raises(ValueError):
            peer.send(bytes(20), float("nan"))
        with pytest.raises(ValueError):
            peer.on("nope", print)
    with pytest.raises(RuntimeError, match="destroyed"):
        peer.send(bytes(20), 1)
    with pytest.raises(TypeError, match="unknown option"):
        PeerRelay(max_linkz=3)
    with pytest.raises(ValueError):
        PeerRelay(bootstrap=["http://x"])


async def test_start_is_safe_concurrently_and_retryable_after_failure() -> None:
    import socket

    peer = PeerRelay(**LOCAL)
    await asyncio.gather(peer.start(), peer.start())
    peer.send(peer.id, "self")
    await peer.destroy()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = PeerRelay(port=taken.getsockname()[1], host="127.0.0.1")
        with pytest.raises(OSError):
            await busy.start()
    await busy.start()
    assert busy.url is not None
    await busy.destroy()


async def test_url_is_the_real_port_or_the_public_url() -> None:
    async with PeerRelay(**LOCAL) as peer:
        assert peer.url is not None and peer.url.startswith("ws://127.0.0.1:")
        assert not peer.url.endswith(":0")
    async with PeerRelay(**LOCAL, public_url="wss://relay.example.org/x") as peer:
        assert peer.url == "wss://relay.example.org/x"
    async with PeerRelay() as peer:
        assert peer.url is None


async def test_destroy_is_idempotent_and_closes_everything() -> None:
    server = PeerRelay(**LOCAL)
    await server.start()
    client = PeerRelay(bootstrap=[server.url or ""])
    closed: list[tuple[bytes, str]] = []
    await client.start()
    client.on("peer-closed", lambda pid, reason: closed.append((pid, reason)))
    await client.wait_for_peers(1)
    await server.destroy()
    await server.destroy()
    await eventually(lambda: bool(closed), what="peer-closed on the client")
    assert closed[0][0] == server.id
    with pytest.raises(OSError):
        async with connect(server.url or "", open_timeout=2):
            pass
    await client.destroy()


async def test_callbacks_errors_are_logged_and_coroutines_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with PeerRelay(**LOCAL) as c1, PeerRelay(bootstrap=[c1.url or ""]) as c2:
        got: list[Any] = []

        def broken(data: Any, sender: bytes) -> None:
            raise RuntimeError("boom")

        async def coroutine(data: Any, sender: bytes) -> None:
            await asyncio.sleep(0)
            got.append(data)

        c2.on("message", broken)
        c2.on("message", coroutine)
        with caplog.at_level(logging.ERROR, logger="peer_relay"):
            c1.send(c2.id, 1)
            c1.send(c2.id, 2)
            await eventually(lambda: got == [1, 2], what="coroutine callbacks")
        assert "boom" in caplog.text
        c2.off("message", broken)


async def test_connect_forms_a_link_and_times_out_for_unknown_ids() -> None:
    async with PeerRelay(**LOCAL) as hub:  # noqa: SIM117 (inner peers need hub.url)
        async with (
            PeerRelay(**LOCAL, bootstrap=[hub.url or ""], connect_timeout=1.0) as a,
            PeerRelay(**LOCAL, bootstrap=[hub.url or ""]) as b,
        ):
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            await a.connect(b.id, timeout=5)
            assert b.id in a.peers and a.link_transport(b.id) == "ws"
            with pytest.raises((TimeoutError, ConnectionError)):
                await a.connect(bytes(range(20)), timeout=3)


async def test_stats_count_frames_and_links() -> None:
    async with PeerRelay(**LOCAL) as c1, PeerRelay(bootstrap=[c1.url or ""]) as c2:
        await c2.wait_for_peers(1)
        c2.send(c1.id, "x")
        await eventually(lambda: c1.stats["delivered"] == 1)
        stats = c1.stats
        assert stats["links_open"] == 1 and stats["frames_in"] >= 3 and stats["bytes_in"] > 0
        assert isinstance(stats["dropped"], dict)


async def test_inbox_is_bounded_and_drops_the_oldest() -> None:
    async with PeerRelay(**LOCAL, max_inbox=2) as c1, PeerRelay(bootstrap=[c1.url or ""]) as c2:
        inbox = c1.messages()
        await c2.wait_for_peers(1)
        for i in range(6):
            c2.send(c1.id, i)
        await eventually(lambda: c1.stats["delivered"] == 6)
        assert c1.stats["dropped"].get("inbox-full", 0) == 4
        assert [(await anext(inbox)).data for _ in range(2)] == [4, 5]


async def test_bounds_and_inspect_read_out_the_state() -> None:
    async with PeerRelay(**LOCAL, max_inbox=2) as c1, PeerRelay(bootstrap=[c1.url or ""]) as c2:
        assert PeerRelay().bounds() == {} and PeerRelay().inspect() == {}  # not started
        c1.messages()
        await c2.wait_for_peers(1)
        for i in range(3):
            c2.send(c1.id, i)
        await eventually(lambda: c1.stats["delivered"] == 3)
        bounds = c1.bounds()
        assert bounds["links"] == (1, c1.config.max_links)
        assert bounds["inbox"] == (2, 2) and bounds["host_links"][0] == 1
        assert all(size <= limit for size, limit in bounds.values()), bounds
        state = c1.inspect()
        assert [(link["peer"], link["state"]) for link in state["links"]] == [(c2.id.hex(), "open")]
        assert state["attempts"] == [] and state["ice_servers"] == []


# ----------------------------------------------------------------------------- a network


async def test_fifty_nodes_deliver_every_message() -> None:
    rng = random.Random(50)
    nodes: list[PeerRelay] = []
    try:
        for _ in range(50):
            boot = [rng.choice(nodes).url or ""] if nodes else []
            node = PeerRelay(**LOCAL, bootstrap=boot)
            await node.start()
            nodes.append(node)
        await eventually(lambda: min(len(n.peers) for n in nodes) >= 5, 30, "links to form")
        await settled(nodes)
        hops: list[int] = []
        pending: dict[int, asyncio.Future[int]] = {}

        def listener(data: Any, sender: bytes) -> None:
            fut = pending.get(data["i"])
            if fut is not None and not fut.done():
                fut.set_result(0)

        readers = []

        async def read(node: PeerRelay) -> None:
            async for message in node.messages():
                hops.append(message.hops)

        for node in nodes:
            node.on("message", listener)
            readers.append(asyncio.ensure_future(read(node)))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        for i in range(500):
            src, dst = rng.sample(nodes, 2)
            pending[i] = loop.create_future()
            src.send(dst.id, {"i": i})
            if i % 50 == 49:
                await asyncio.sleep(0)
        done, missing = await asyncio.wait(pending.values(), timeout=20)
        await eventually(lambda: len(hops) >= len(done), 5, "readers to catch up")
        for task in readers:
            task.cancel()
        print(
            f"\n50 nodes: {len(done)}/500 delivered, hops mean {statistics.mean(hops):.2f}, "
            f"max {max(hops)}; links per node mean "
            f"{statistics.mean(len(n.peers) for n in nodes):.1f}"
        )
        drops: dict[str, int] = {}
        for n in nodes:
            for reason, count in n.stats["dropped"].items():
                drops[reason] = drops.get(reason, 0) + count
        assert not missing, f"{len(missing)} of 500 messages lost; drops: {drops}"
        assert max(hops) <= 8
    finally:
        await asyncio.gather(*(n.destroy() for n in nodes))
