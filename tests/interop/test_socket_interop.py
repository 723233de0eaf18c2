"""Our Socket and datagram endpoint exchange datagrams with a 0.0.2 ``Socket`` (npm, Node).

Both ways, through a Python relay and through a 0.0.2 relay (which rewrites ``to``/``from`` as
Buffer JSON). Our peers run with ``allow_unsigned=True`` so that 0.0.2 peers may link.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from peer_relay.node import PeerRelay
from peer_relay.socket import (
    FAMILY,
    UDP_MAX_PAYLOAD,
    Socket,
    create_datagram_endpoint,
    datagram_mux,
)

from .original import OriginalNetwork

pytestmark = pytest.mark.interop

T = 10.0
"""Seconds allowed for any single wait."""

PAYLOADS = [b"", b"\x00", bytes(range(256)), b"\xff" * 1000, os.urandom(UDP_MAX_PAYLOAD)]


@pytest.fixture
async def peers() -> AsyncIterator[list[PeerRelay]]:
    """Python peers made by a test (append to the list); destroyed afterwards."""
    made: list[PeerRelay] = []
    try:
        yield made
    finally:
        for peer in reversed(made):
            await peer.destroy()


async def started(made: list[PeerRelay], **options: Any) -> PeerRelay:
    peer = PeerRelay(allow_unsigned=True, **options)
    made.append(peer)
    await peer.start()
    return peer


async def linked(peer: PeerRelay, other: bytes) -> None:
    """Wait until ``peer`` has a direct link to ``other``."""
    async with asyncio.timeout(T):
        while other not in peer.peers:
            await asyncio.sleep(0.005)


class Inbox:
    def __init__(self, sock: Socket) -> None:
        self.queue: asyncio.Queue[tuple[bytes, dict[str, Any]]] = asyncio.Queue()
        sock.on("message", lambda data, rinfo: self.queue.put_nowait((data, rinfo)))

    async def get(self) -> tuple[bytes, dict[str, Any]]:
        return await asyncio.wait_for(self.queue.get(), T)


async def test_socket_datagrams_with_original_via_python_relay(
    original: OriginalNetwork, peers: list[PeerRelay]
) -> None:
    relay = await started(peers, port=0, host="127.0.0.1")
    assert relay.url is not None
    ours = await started(peers, bootstrap=[relay.url])
    await ours.wait_for_peers(1, timeout=T)
    orig = await original.socket_create("o", port=None, bootstrap=[relay.url])
    o_addr = await original.socket_bind("o", timeout=T)
    o_port = o_addr["port"]
    await linked(relay, orig.id)  # 0.0.2 reports its link before our relay has it
    assert orig.id not in ours.peers  # neither has a server: datagrams go via the relay

    sock = Socket(peer=ours)
    inbox = Inbox(sock)
    listening = asyncio.get_running_loop().create_future()
    sock.bind(callback=lambda: listening.set_result(None))
    await asyncio.wait_for(listening, T)
    port = sock.address()["port"]

    for payload in PAYLOADS:
        # ours -> 0.0.2: it sees our id and port as the sender
        sock.send(payload, 0, len(payload), o_port, orig.id_hex)
        data, rinfo = await original.wait_socket_message("o", timeout=T)
        assert data == payload
        assert rinfo == {"address": ours.id.hex(), "port": port, "family": FAMILY}
        # 0.0.2 -> ours, answering to the rinfo it got (0.0.2 sends no destination port:
        # it goes to the socket bound first on our peer)
        await original.socket_send("o", payload[::-1], port=rinfo["port"], to=rinfo["address"])
        data, our_rinfo = await inbox.get()
        assert data == payload[::-1]
        assert our_rinfo == {
            "address": orig.id_hex,
            "port": o_port,
            "family": FAMILY,
            "size": len(payload),
        }
    # 0.0.2 slices buffer.slice(offset, length); we slice offset:offset + length
    await original.socket_send("o", b"0123456789", offset=2, length=5, port=port, to=ours.id)
    assert (await inbox.get())[0] == b"234"
    sock.send(b"0123456789", 2, 5, o_port, orig.id_hex)
    assert (await original.wait_socket_message("o", timeout=T))[0] == b"23456"
    assert relay.stats["relayed"] >= 2 * len(PAYLOADS) + 2
    assert datagram_mux(ours).dropped == {}
    sock.close()
    await sock.wait_closed()
    await original.socket_close("o")
    original.assert_alive()


async def test_endpoint_datagrams_with_original_via_original_relay(
    original: OriginalNetwork, peers: list[PeerRelay]
) -> None:
    hub = await original.create("hub", port=0)
    assert hub.url_ipv4 is not None
    ours = await started(peers, bootstrap=[hub.url_ipv4])
    await ours.wait_for_peers(1, timeout=T)
    orig = await original.socket_create("o", port=None, bootstrap=[hub.url_ipv4])
    o_port = (await original.socket_bind("o", timeout=T))["port"]
    await original.wait_peer("hub", orig, timeout=T)  # or the hub has no route to it yet

    received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Echo(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait((data, addr))

    transport, _ = await create_datagram_endpoint(Echo, peer=ours, port=5353)
    for payload in PAYLOADS:
        transport.sendto(payload, (orig.id_hex, o_port))
        data, rinfo = await original.wait_socket_message("o", timeout=T)
        assert data == payload
        assert rinfo == {"address": ours.id.hex(), "port": 5353, "family": FAMILY}
        await original.socket_send("o", payload[::-1], port=5353, to=ours.id)
        data, addr = await asyncio.wait_for(received.get(), T)
        assert (data, addr) == (payload[::-1], (orig.id_hex, o_port))
    assert orig.id not in ours.peers  # relayed by the 0.0.2 hub
    transport.close()
    await original.socket_close("o")
    original.assert_alive()
