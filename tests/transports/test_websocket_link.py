"""The picows WebSocket links on 127.0.0.1, against websockets as the foreign end: framing both
ways (masked and not, every length encoding), fragments, limits, the closing handshake, the
send buffer's bound, frames before ``bind``, and the refusal of an address over its budget."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from peer_relay.transports.websocket import MAX_FRAGMENTS, WsLink, WsOptions, WsServer, dial

SIZES = (0, 1, 125, 126, 65535, 65536, 200_000)
"""Payload lengths at each boundary of the three length encodings (RFC 6455 5.2)."""


class Accepted:
    """What a test server saw: its links, their frames and close reasons."""

    def __init__(self) -> None:
        self.links: list[WsLink] = []
        self.frames: list[bytes] = []
        self.closed: list[str] = []
        self.arrived = asyncio.Event()

    def on_link(self, link: WsLink) -> None:
        self.links.append(link)
        link.bind(self._frame, self.closed.append)

    def _frame(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.arrived.set()

    async def wait_frames(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def server(
    options: WsOptions | None = None, admits: Callable[[str], bool] = lambda ip: True
) -> AsyncIterator[tuple[WsServer, Accepted, str]]:
    accepted = Accepted()
    ws_server = WsServer(
        accepted.on_link, admits, lambda link, request: None, options or WsOptions()
    )
    await ws_server.start("127.0.0.1", 0)
    try:
        yield ws_server, accepted, f"ws://127.0.0.1:{ws_server.port}"
    finally:
        for link in accepted.links:
            link.abort("test over")
        ws_server.close()
        await ws_server.wait_closed()


def payload(size: int) -> bytes:
    return bytes((i * 7 + 3) % 94 + 33 for i in range(size))


async def test_frames_of_every_length_reach_a_foreign_client_and_back() -> None:
    async with server() as (_srv, accepted, url), connect(url, max_size=None) as ws:
        for size in SIZES:
            await ws.send(payload(size).decode())
        await accepted.wait_frames(len(SIZES))
        assert accepted.frames == [payload(size) for size in SIZES]
        [link] = accepted.links
        for size in SIZES:
            assert link.send(payload(size))
        echoed = [await ws.recv(decode=False) for _ in SIZES]
        assert echoed == [payload(size) for size in SIZES]


async def test_a_dialled_link_masks_what_it_sends_and_a_foreign_server_reads_it() -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(message.encode() if isinstance(message, str) else message)
            if len(got) == len(SIZES):
                done.set()
            await ws.send(message)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as foreign:
        port = next(iter(foreign.sockets)).getsockname()[1]
        link = await dial(f"ws://127.0.0.1:{port}", WsOptions())
        echoed: list[bytes] = []
        link.bind(echoed.append, lambda reason: None)
        for size in SIZES:
            assert link.send(payload(size))
        async with asyncio.timeout(5):
            await done.wait()
            while len(echoed) < len(SIZES):
                await asyncio.sleep(0.01)
        assert got == [payload(size) for size in SIZES]
        assert echoed == got
        link.close("done")
        await asyncio.wait_for(link.wait_closed(), 5)


async def test_fragments_are_joined_and_a_message_over_max_frame_closes_with_1009() -> None:
    async with server(WsOptions(max_frame=1000)) as (_srv, accepted, url):
        async with connect(url) as ws:
            await ws.send(["ab", "cd", "ef"])
            await accepted.wait_frames(1)
            assert accepted.frames == [b"abcdef"]
            await ws.send(["x" * 600, "y" * 600])  # each fragment fits; the message does not
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert accepted.frames == [b"abcdef"]
        async with asyncio.timeout(5):
            while not accepted.closed:
                await asyncio.sleep(0.01)
        assert accepted.closed == ["protocol error: message too big"]


async def test_a_reserved_bit_is_a_protocol_error() -> None:
    async with server() as (_srv, accepted, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101")
            # A masked text frame "hi" with RSV1 set (no extension was negotiated).
            writer.write(bytes((0xC1, 0x82, 0, 0, 0, 0)) + b"hi")
            answer = await asyncio.wait_for(reader.read(1024), 5)
        finally:
            writer.close()
        assert answer[:1] == b"\x88" and int.from_bytes(answer[2:4], "big") == 1002
        assert accepted.frames == []


async def test_a_message_in_too_many_fragments_closes_with_1009_even_if_they_are_empty() -> None:
    async with server() as (_srv, accepted, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            empty_text = bytes((0x01, 0x80, 0, 0, 0, 0))  # a text frame, not final, empty
            empty_more = bytes((0x00, 0x80, 0, 0, 0, 0))  # a continuation, not final, empty
            writer.write(empty_text + empty_more * (MAX_FRAGMENTS + 10))
            answer = await asyncio.wait_for(reader.read(1024), 5)
        finally:
            writer.close()
        assert answer[:1] == b"\x88" and int.from_bytes(answer[2:4], "big") == 1009
        assert accepted.frames == []
        async with asyncio.timeout(5):
            while not accepted.closed:
                await asyncio.sleep(0.01)
        assert accepted.closed == ["protocol error: message in too many fragments"]


async def test_closing_sends_the_reason_and_waits_for_the_remote_close() -> None:
    async with server() as (_srv, accepted, url), connect(url) as ws:
        await ws.send("hello")
        await accepted.wait_frames(1)
        [link] = accepted.links
        link.close("misbehaving")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "misbehaving")
        await asyncio.wait_for(link.wait_closed(), 5)
        assert accepted.closed == ["misbehaving"]
        assert not link.send(b"late")


async def test_a_remote_close_is_reported_with_its_code() -> None:
    async with server() as (_srv, accepted, url):
        async with connect(url) as ws:
            await ws.send("x")
            await accepted.wait_frames(1)
            await ws.close(4000, "bye")
        [link] = accepted.links
        await asyncio.wait_for(link.wait_closed(), 5)
        assert accepted.closed == ["remote closed (4000)"]


async def test_the_send_buffer_is_bounded() -> None:
    async with server(WsOptions(max_buffer=10_000)) as (_srv, accepted, url):
        ws = await connect(url)
        try:
            await ws.send("x")
            await accepted.wait_frames(1)
            [link] = accepted.links
            # Within one turn of the loop nothing is written yet: the bound counts it all.
            assert all(link.send(b"y" * 1000) for _ in range(10))
            assert not link.send(b"y")
            assert link.dropped == 1 and link.buffered >= 10_000
        finally:
            await ws.close()


async def test_frames_before_bind_are_kept_and_handed_over_in_order() -> None:
    got: list[bytes] = []

    async def handler(ws: ServerConnection) -> None:
        for i in range(5):
            await ws.send(f"early {i}")
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as foreign:
        port = next(iter(foreign.sockets)).getsockname()[1]
        link = await dial(f"ws://127.0.0.1:{port}", WsOptions())
        await asyncio.wait_for(link.wait_closed(), 5)
        reasons: list[str] = []
        link.bind(got.append, reasons.append)
    assert got == [f"early {i}".encode() for i in range(5)]
    assert reasons == ["remote closed (1000)"]


async def test_an_address_over_its_budget_is_held_then_refused_with_503() -> None:
    options = WsOptions(hold_refused=0.3)
    async with server(options, admits=lambda ip: False) as (srv, accepted, url):
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, open_timeout=5)
        assert refused.value.response.status_code == 503
        assert loop.time() - start >= 0.25
        assert srv.refused == 1 and srv.held == 0 and accepted.links == []


async def test_beyond_max_held_a_refused_connection_is_dropped_at_once() -> None:
    options = WsOptions(hold_refused=5.0, max_held=1)
    async with server(options, admits=lambda ip: False) as (srv, _accepted, url):
        port = int(url.rsplit(":", 1)[1])
        held = socket.create_connection(("127.0.0.1", port))
        try:
            async with asyncio.timeout(5):
                while srv.held < 1:
                    await asyncio.sleep(0.01)
            with pytest.raises((InvalidMessage, ConnectionClosed, OSError)):
                await connect(url, open_timeout=5)
            assert srv.held == 1 and srv.refused == 2
        finally:
            held.close()
