"""Datagrams over the relay: Socket, create_datagram_endpoint, and kademlia running over them.

Every network here is real: a relay with a WebSocket server on 127.0.0.1 and client-only peers
(no server, so they cannot link to each other) that reach each other only through the relay.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer_relay.node import PeerRelay
from peer_relay.socket import (
    ENVELOPE_RESERVE,
    FAMILY,
    SEALED_RESERVE,
    UDP_MAX_PAYLOAD,
    DatagramTooLargeError,
    RelayDatagramTransport,
    Socket,
    SocketClosedError,
    create_datagram_endpoint,
    datagram_mux,
    is_datagram,
    max_datagram_size,
)

WAIT = 10.0  # upper bound for anything that should take milliseconds

Rinfo = dict[str, Any]


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


class Net:
    """A relay and client-only peers that bootstrap to it."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.peers: list[PeerRelay] = []
        self.relay = PeerRelay(port=0, host="127.0.0.1", **options)

    async def start(self) -> Net:
        await self.relay.start()
        self.peers.append(self.relay)
        return self

    async def client(self) -> PeerRelay:
        assert self.relay.url is not None
        peer = PeerRelay(bootstrap=[self.relay.url], **self.options)
        self.peers.append(peer)
        await peer.start()
        await peer.wait_for_peers(1, timeout=WAIT)
        relay = self.relay
        await eventually(lambda: peer.id in relay.peers, "the relay to see the new link")
        return peer

    async def close(self) -> None:
        for peer in reversed(self.peers):
            await peer.destroy()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    network = await Net().start()
    try:
        yield network
    finally:
        await network.close()


class Inbox:
    """Collects a Socket's ``message`` events."""

    def __init__(self, sock: Socket) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Rinfo]] = asyncio.Queue()
        sock.on("message", lambda data, rinfo: self.queue.put_nowait((data, rinfo)))

    async def get(self) -> tuple[bytes, Rinfo]:
        return await asyncio.wait_for(self.queue.get(), WAIT)


async def bound(sock: Socket, port: int | None = None) -> int:
    """Bind ``sock`` and wait for ``listening``; return its port."""
    listening = asyncio.get_running_loop().create_future()
    sock.bind(port, lambda: listening.set_result(None))
    await asyncio.wait_for(listening, WAIT)
    port_: int = sock.address()["port"]
    return port_


class Collector(asyncio.DatagramProtocol):
    """A plain asyncio datagram protocol that records what it is told."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)

    async def get(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.datagrams.get(), WAIT)


# ----------------------------------------------------------------------------- Socket


async def test_sizes_both_directions_through_relay(net: Net) -> None:
    a, b = await net.client(), await net.client()
    assert b.id not in a.peers  # client-only peers: everything goes through the relay
    sa, sb = Socket(peer=a), Socket(peer=b)
    ia, ib = Inbox(sa), Inbox(sb)
    pa, pb = await bound(sa), await bound(sb)
    assert sa.max_datagram == UDP_MAX_PAYLOAD
    relayed = net.relay.stats["relayed"]
    sizes = [0, 1, 2, 255, 256, 4096, UDP_MAX_PAYLOAD - 1, UDP_MAX_PAYLOAD]
    for size in sizes:
        data = os.urandom(size)
        sa.send(data, 0, size, pb, b.id.hex())
        assert await ib.get() == (
            data,
            {"address": a.id.hex(), "port": pa, "family": FAMILY, "size": size},
        )
        back = bytes(reversed(data))
        sb.send(back, pa, a.id)  # short form, bytes id
        got, rinfo = await ia.get()
        assert got == back and rinfo["address"] == b.id.hex() and rinfo["port"] == pb
    assert net.relay.stats["relayed"] >= relayed + 2 * len(sizes)
    assert datagram_mux(b).delivered == len(sizes) and datagram_mux(b).dropped == {}
    with pytest.raises(DatagramTooLargeError):
        sa.send(bytes(UDP_MAX_PAYLOAD + 1), pb, b.id.hex())


async def test_limit_fits_worst_case_frame_through_relay() -> None:
    """A small max_frame: the largest datagram of 0xff bytes still fits every hop's frame."""
    max_frame = 16384
    network = await Net(max_frame=max_frame).start()
    try:
        a, b = await network.client(), await network.client()
        limit = max_datagram_size(max_frame, sealed=True)  # sessions are on
        assert limit == ((max_frame - ENVELOPE_RESERVE) * 3 // 4 - SEALED_RESERVE) // 4
        sa, sb = Socket(peer=a), Socket(peer=b)
        assert sa.max_datagram == limit
        inbox = Inbox(sb)
        port = await bound(sb)
        sa.send(b"\xff" * limit, port, b.id.hex())
        assert await inbox.get() == (b"\xff" * limit, sa_rinfo(sa, a, limit))
        with pytest.raises(DatagramTooLargeError, match="max_datagram"):
            sa.send(b"\xff" * (limit + 1), port, b.id.hex())
        with pytest.raises(ValueError, match="max_datagram"):
            Socket(peer=a, max_datagram=limit + 1)
        assert Socket(peer=a, max_datagram=10).max_datagram == 10
        assert network.relay.stats["dropped"].get("oversize", 0) == 0
    finally:
        await network.close()


def sa_rinfo(sock: Socket, peer: PeerRelay, size: int) -> Rinfo:
    return {
        "address": peer.id.hex(),
        "port": sock.address()["port"],
        "family": FAMILY,
        "size": size,
    }


class Pair:
    """A socket on one client peer and a bound socket (with inbox) on another."""

    def __init__(self, sender: Socket, inbox: Inbox, port: int, to: str) -> None:
        self.sender, self.inbox, self.port, self.to = sender, inbox, port, to


@pytest.fixture
async def pair(net: Net) -> Pair:
    a, b = await net.client(), await net.client()
    receiver = Socket(peer=b)
    inbox = Inbox(receiver)
    return Pair(Socket(peer=a), inbox, await bound(receiver), b.id.hex())


@given(payloads=st.lists(st.binary(max_size=2048), min_size=1, max_size=8))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_arbitrary_binary(pair: Pair, payloads: list[bytes]) -> None:
    for payload in payloads:
        pair.sender.send(payload, pair.port, pair.to)
    for payload in payloads:
        got, _ = await pair.inbox.get()
        assert got == payload


async def test_send_forms_and_slicing(net: Net) -> None:
    a, b = await net.client(), await net.client()
    sa, sb = Socket(peer=a), Socket(peer=b)
    inbox = Inbox(sb)
    port = await bound(sb)
    to = b.id.hex()
    sent: list[BaseException | None] = []
    sa.send(b"0123456789", 2, 5, port, to)  # offset:offset+length (0.0.2 would send b"234")
    sa.send(b"0123456789", 2, 5, port, to, sent.append)
    sa.send(b"abcdef", port, to)
    sa.send([b"ab", bytearray(b"cd"), memoryview(b"ef")], port, to, sent.append)
    sa.send("text", port=port, peer_id=to, callback=sent.append)
    sa.send(b"0123456789", offset=7, port=port, peer_id=to)
    sa.send(b"0123456789", 3, 0, port, to)
    expected = [b"23456", b"23456", b"abcdef", b"abcdef", b"text", b"789", b""]
    assert [(await inbox.get())[0] for _ in expected] == expected
    await eventually(lambda: len(sent) == 3, "send callbacks")
    assert sent == [None, None, None]
    for bad in [(b"01", 3, 0), (b"01", 1, 2), (b"01", -1, 1), (b"01", 0, -1)]:
        with pytest.raises(ValueError):
            sa.send(bad[0], bad[1], bad[2], port, to)
    with pytest.raises(TypeError):
        sa.send([b"a"], 0, 1, port, to)
    with pytest.raises(TypeError):
        sa.send(b"a")  # no port
    with pytest.raises(TypeError):
        sa.send(123, port, to)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sa.send(b"a", 70000, to)
    with pytest.raises(ValueError):
        sa.send(b"a", port, "not-an-id")
    with pytest.raises(TypeError):
        sa.send(b"a", port, to, peer_id=to)


async def test_implicit_bind_and_send_before_listening(net: Net) -> None:
    b = await net.client()
    sb = Socket(peer=b)
    inbox = Inbox(sb)
    port = await bound(sb)
    assert net.relay.url is not None
    owner = Socket(bootstrap=[net.relay.url])  # owns a new, not yet started peer
    done: list[BaseException | None] = []
    owner.send(b"early", port, b.id.hex(), done.append)  # binds, waits for the start, sends
    assert owner.address()["port"] > 0
    data, rinfo = await inbox.get()
    assert data == b"early" and rinfo["address"] == owner.peer.id.hex()
    assert rinfo["port"] == owner.address()["port"]
    await eventually(lambda: done == [None], "send callback")
    owner.close()
    await owner.wait_closed()


async def test_shared_peer_ports_unbound_drop_and_self_send(net: Net) -> None:
    a, b = await net.client(), await net.client()
    s1, s2 = Socket(peer=b), Socket(peer=b)
    i1, i2 = Inbox(s1), Inbox(s2)
    p1 = await bound(s1, 4000)
    p2 = await bound(s2)
    assert p1 == 4000 and p2 != p1
    with pytest.raises(OSError) as info:
        Socket(peer=b).bind(4000)
    assert info.value.errno == errno.EADDRINUSE
    transport, proto = await create_datagram_endpoint(Collector, peer=b, port=4001)
    sa = Socket(peer=a)
    for port, text in [(p2, b"two"), (p1, b"one"), (4001, b"three")]:
        sa.send(text, port, b.id.hex())
    assert (await i1.get())[0] == b"one"
    assert (await i2.get())[0] == b"two"
    assert (await proto.get())[0] == b"three"
    mux = datagram_mux(b)
    assert mux.ports == [4000, p2, 4001]
    sa.send(b"nobody", 4002, b.id.hex())
    await eventually(lambda: mux.dropped["unbound-port"] == 1, "unbound-port drop")
    # a datagram without dport (as 0.0.2 sends) goes to the socket bound first
    a.send(b.id, {"buffer": {"type": "Buffer", "data": [1, 2]}, "address": a.id.hex(), "port": 9})
    assert await i1.get() == (b"\x01\x02", {**sa_rinfo(s1, a, 2), "port": 9})
    # sockets on one peer talk to each other (peer id None / "localhost" / own id)
    s2.send(b"self", p1)
    s2.send(b"self2", p1, "localhost")
    transport.sendto(b"self3", (b.id.hex(), p1))
    for text in (b"self", b"self2"):
        assert await i1.get() == (text, {**sa_rinfo(s1, b, len(text)), "port": p2})
    assert await i1.get() == (b"self3", {**sa_rinfo(s1, b, 5), "port": 4001})
    assert i1.queue.empty() and i2.queue.empty() and proto.datagrams.empty()
    # closing a socket frees its port, the shared peer keeps running
    s1.close()
    await s1.wait_closed()
    assert 4000 not in mux.ports and b.peers
    s3 = Socket(peer=b)
    i3 = Inbox(s3)
    assert await bound(s3, 4000) == 4000
    sa.send(b"again", 4000, b.id.hex())
    assert (await i3.get())[0] == b"again"
    transport.close()


async def test_malformed_datagrams_dropped_plain_messages_pass(net: Net) -> None:
    a, b = await net.client(), await net.client()
    sb = Socket(peer=b, max_datagram=100)
    inbox = Inbox(sb)
    port = await bound(sb)
    plain: list[Any] = []
    b.on("message", lambda data, sender: plain.append(data) if not is_datagram(data) else None)
    ok = {"type": "Buffer", "data": [7]}
    cases: list[tuple[Any, str]] = [
        ({"address": a.id.hex(), "port": 1}, "bad-buffer"),  # no buffer
        ({"buffer": "abc", "port": 1}, "bad-buffer"),
        ({"buffer": {"type": "buffer", "data": [1]}, "port": 1}, "bad-buffer"),
        ({"buffer": {"type": "Buffer", "data": "AQI="}, "port": 1}, "bad-buffer"),
        ({"buffer": {"type": "Buffer", "data": [256]}, "port": 1}, "bad-bytes"),
        ({"buffer": {"type": "Buffer", "data": [-1]}, "port": 1}, "bad-bytes"),
        ({"buffer": {"type": "Buffer", "data": [True]}, "port": 1}, "bad-bytes"),
        ({"buffer": {"type": "Buffer", "data": [1.5]}, "port": 1}, "bad-bytes"),
        ({"buffer": {"type": "Buffer", "data": ["a"]}, "port": 1}, "bad-bytes"),
        ({"buffer": {"type": "Buffer", "data": [None]}, "port": 1}, "bad-bytes"),
        ({"buffer": ok}, "bad-port"),
        ({"buffer": ok, "port": "1"}, "bad-port"),
        ({"buffer": ok, "port": 65536}, "bad-port"),
        ({"buffer": ok, "port": 1, "dport": -1}, "bad-port"),
        ({"buffer": ok, "port": 1, "dport": port, "address": 5}, "bad-address"),
        ({"buffer": {"type": "Buffer", "data": [0] * 101}, "port": 1, "dport": port}, "oversize"),
    ]
    for data, _reason in cases:
        a.send(b.id, data)
    for data in ["text", [1, 2], {"hello": "world"}, None, {"port": 3}]:
        a.send(b.id, data)
    a.send(b.id, {"buffer": ok, "port": 1, "dport": port})
    assert await inbox.get() == (b"\x07", {**sa_rinfo(sb, a, 1), "port": 1})
    mux = datagram_mux(b)
    expected: dict[str, int] = {}
    for _data, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    await eventually(lambda: dict(mux.dropped) == expected, f"drops {expected}")
    assert mux.received == len(cases) + 1 and mux.delivered == 1
    assert plain == ["text", [1, 2], {"hello": "world"}, None, {"port": 3}]
    assert inbox.queue.empty()


async def test_socket_close_semantics() -> None:
    network = await Net().start()
    try:
        b = await network.client()
        assert network.relay.url is not None
        sock = Socket(bootstrap=[network.relay.url])
        events: list[str] = []
        sock.on("close", lambda: events.append("close event"))
        sock.on("listening", lambda: events.append("listening"))
        port = await bound(sock, 123)
        assert sock.address() == {"address": sock.peer.id.hex(), "port": 123, "family": FAMILY}
        await sock.peer.wait_for_peers(1)
        with pytest.raises(OSError):
            sock.bind()  # already bound
        closed = asyncio.get_running_loop().create_future()
        sock.close(lambda: closed.set_result(None))
        assert sock.closed and port not in datagram_mux(sock.peer).ports
        await asyncio.wait_for(closed, WAIT)
        assert events == ["listening", "close event"]
        with pytest.raises(RuntimeError, match="destroyed"):
            sock.peer.send(b.id, "x")  # the socket's own peer is destroyed with it
        for op in (sock.close, sock.bind, sock.address, lambda: sock.send(b"x", 1, b.id)):
            with pytest.raises(SocketClosedError):
                op()
        # a send still waiting for the peer's start is failed by close
        waiting = Socket(bootstrap=[network.relay.url])
        results: list[BaseException | None] = []
        waiting.send(b"late", 1, b.id, results.append)
        waiting.close()
        await waiting.wait_closed()
        assert len(results) == 1 and isinstance(results[0], SocketClosedError)
        # a peer that cannot start: the error goes to the 'error' event, the port is released
        assert network.relay.url is not None
        busy = int(network.relay.url.rsplit(":", 1)[1])
        failing = Socket(port=busy, host="127.0.0.1")
        errors: asyncio.Queue[BaseException] = asyncio.Queue()
        failing.on("error", errors.put_nowait)
        failing.bind(7)
        assert isinstance(await asyncio.wait_for(errors.get(), WAIT), OSError)
        assert datagram_mux(failing.peer).ports == []
        failing.close()
        await failing.wait_closed()
    finally:
        await network.close()


def test_socket_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        Socket()


# ----------------------------------------------------------------------------- asyncio endpoint


async def test_datagram_endpoint(net: Net) -> None:
    a, b = await net.client(), await net.client()
    ta, pa = await create_datagram_endpoint(Collector, peer=a)
    tb, pb = await create_datagram_endpoint(Collector, peer=b, port=53)
    assert isinstance(ta, asyncio.DatagramTransport) and isinstance(ta, RelayDatagramTransport)
    assert isinstance(pa, Collector) and pa.transport is ta
    a_addr = ta.get_extra_info("sockname")
    assert a_addr[0] == a.id.hex() and isinstance(a_addr[1], int)
    assert tb.get_extra_info("sockname") == (b.id.hex(), 53)
    assert ta.get_extra_info("peername") is None and ta.get_extra_info("peer") is a
    assert ta.get_extra_info("nothing", 5) == 5 and ta.get_write_buffer_size() == 0
    for size in (0, 1, 1000, UDP_MAX_PAYLOAD):
        data = os.urandom(size)
        ta.sendto(data, (b.id.hex(), 53))
        assert await pb.get() == (data, a_addr)
        tb.sendto(data[::-1], a_addr)
        assert await pa.get() == (data[::-1], (b.id.hex(), 53))
    with pytest.raises(DatagramTooLargeError, match="65508 bytes"):
        ta.sendto(bytes(UDP_MAX_PAYLOAD + 1), (b.id.hex(), 53))
    for bad in [("zz" * 20, 53), (b.id.hex(), -1), (b.id.hex(), "53"), b.id.hex(), ("x", 1)]:
        with pytest.raises((TypeError, ValueError)):
            ta.sendto(b"x", bad)
    with pytest.raises(ValueError, match="address"):
        ta.sendto(b"x")  # not connected
    with pytest.raises(TypeError):
        ta.sendto("text", (b.id.hex(), 53))  # type: ignore[arg-type]
    with pytest.raises(OSError):
        await create_datagram_endpoint(Collector, peer=b, port=53)
    # a connected endpoint: sendto without address, and only its remote's datagrams
    tc, pc = await create_datagram_endpoint(Collector, peer=a, remote_addr=(b.id.hex(), 53))
    assert tc.get_extra_info("peername") == (b.id.hex(), 53)
    tc.sendto(b"connected")
    data, c_addr = await pb.get()
    assert data == b"connected"
    with pytest.raises(ValueError):
        tc.sendto(b"x", (b.id.hex(), 54))
    ta.sendto(b"stranger", c_addr)
    tb.sendto(b"from remote", c_addr)
    assert await pc.get() == (b"from remote", (b.id.hex(), 53))
    assert datagram_mux(a).dropped["not-connected"] == 1
    # close: is_closing, connection_lost(None) soon, sendto raises, port released, peer lives
    ta.close()
    assert ta.is_closing()
    assert await asyncio.wait_for(pa.lost, WAIT) is None
    with pytest.raises(SocketClosedError):
        ta.sendto(b"x", (b.id.hex(), 53))
    ta.close()  # idempotent
    tc.abort()
    assert await asyncio.wait_for(pc.lost, WAIT) is None
    assert datagram_mux(a).ports == [] and a.peers
    # an endpoint that made its own peer destroys it on close
    assert net.relay.url is not None
    td, pd = await create_datagram_endpoint(Collector, bootstrap=[net.relay.url])
    own = td.get_extra_info("peer")
    await own.wait_for_peers(1)
    td.sendto(b"own", (b.id.hex(), 53))
    assert (await pb.get())[0] == b"own"
    td.close()
    await asyncio.wait_for(pd.lost, WAIT)
    with pytest.raises(RuntimeError, match="destroyed"):
        own.send(b.id, "x")
    # the peer dies under an endpoint: sendto reports through error_received
    await b.destroy()
    tb.sendto(b"x", a_addr)
    assert len(pb.errors) == 1 and isinstance(pb.errors[0], ConnectionError)
    tb.close()


# ----------------------------------------------------------------------------- kademlia


async def test_kademlia_dht_over_relay(net: Net) -> None:
    """bmuller kademlia 2.2's protocol, unchanged, on three peers that only meet via the relay."""
    from kademlia.network import Server

    peers = [await net.client() for _ in range(3)]
    for i, p in enumerate(peers):
        assert not set(peers[i + 1 :] + peers[:i]) & {bytes(x) for x in p.peers}
    servers = []
    for p in peers:
        server = Server(ksize=8)
        transport, protocol = await create_datagram_endpoint(server._create_protocol, peer=p)
        server.transport, server.protocol = transport, protocol
        servers.append(server)
    try:
        kport = servers[0].transport.get_extra_info("sockname")
        assert await servers[1].bootstrap([kport])
        assert await servers[2].bootstrap([servers[1].transport.get_extra_info("sockname")])
        assert await servers[0].set("greeting", "hello over peer-relay")
        assert await servers[2].get("greeting") == "hello over peer-relay"
        assert await servers[2].set("binary", b"\x00\xff" * 100)
        assert await servers[1].get("binary") == b"\x00\xff" * 100
        assert await servers[1].get("missing") is None
        # the DHT's traffic went through the relay, between peers that are not linked
        assert all(datagram_mux(p).delivered > 0 for p in peers)
        assert net.relay.stats["relayed"] >= sum(datagram_mux(p).sent for p in peers)
        neighbours = servers[2].bootstrappable_neighbors()
        assert {n[0] for n in neighbours} <= {p.id.hex() for p in peers}
    finally:
        for server in servers:
            server.stop()
