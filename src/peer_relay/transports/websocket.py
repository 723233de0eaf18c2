"""WebSocket links on ``picows``: a server, a dialer, and one link per connection.

A link only moves frames: every message it reads goes to ``on_frame`` from inside the socket's
read callback (no task per link). The frames the node sends during one turn of the event loop
are framed and written to the socket together at the end of that turn: a relay that read a
hundred frames in one read forwards them in one write, not a hundred system calls. The send
buffer is bounded in bytes; frames beyond it are refused and the node re-routes them. A link
never interprets a frame and never decides anything about routing.

Why picows, not ``websockets``: measured side by side (``benchmarks/compare.py``), a bare relay
chain on picows moves several times the messages of the same chain on websockets' asyncio API or
on its sans-I/O protocol driven synchronously, because picows parses and frames in C and calls
back without futures or tasks. ``websockets`` stays a dependency of the tests and tools that act
as foreign clients.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..addresses import OBSERVED_HEADER
from ..randomness import PooledRandom

_log = logging.getLogger("peer_relay.websocket")
_picows_log = logging.getLogger("peer_relay.websocket.picows")
if _picows_log.level == logging.NOTSET:
    # picows logs every connection and disconnection at INFO: that is debugging detail here.
    _picows_log.setLevel(logging.WARNING)
# Given a Logger, picows makes a child logger for every connection (about 1 KiB each, kept until
# the connection ends); given an adapter, it logs through it.
_picows_logger = logging.LoggerAdapter(_picows_log, {})

_masks = PooledRandom()
MAX_FRAGMENTS = 1024
"""Most fragments one incoming message may come in (browsers, ``ws`` and picows send one)."""
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n"
    b"Connection: close\r\n\r\ntoo many connections from your address\n"
)


@dataclass(frozen=True, slots=True)
class WsOptions:
    """Settings of every WebSocket link of a node."""

    max_frame: int = 1 << 20
    """Largest incoming message; a bigger one closes the connection (code 1009)."""
    max_buffer: int = 16 << 20
    """Most bytes waiting in one link's send buffer; frames beyond are refused and counted."""
    ping_interval: float | None = 20.0
    """Seconds of silence from the remote before a keepalive ping (None: no pings)."""
    ping_timeout: float | None = 20.0
    """Seconds a keepalive ping has to be answered before the connection is dropped."""
    open_timeout: float = 10.0
    """Seconds a dial has to connect and finish the WebSocket upgrade."""
    accept_timeout: float = 3.0
    """Seconds an inbound connection has to finish the WebSocket upgrade."""
    close_timeout: float = 5.0
    """Seconds a closing link waits for its send buffer to drain before it is dropped."""
    read_buffer: int = 1024
    """Initial read buffer of a connection, in bytes (it grows to the largest message read)."""
    hold_refused: float = 2.4
    """Seconds a connection from an address over its handshake budget is held, unread, before
    it is refused with 503: refused at once, an attacker would connect again at once."""
    max_held: int = 1024
    """Most connections held so at a time; beyond, they are dropped at once."""


class WsLink(WSListener):
    """One WebSocket connection carrying text frames.

    Until :meth:`bind` is called, what arrives is kept (at most ``max_buffer`` bytes) and handed
    over then, with the close, if the connection ended meanwhile.
    """

    # A node holds one per link end: slots keep each a few hundred bytes smaller.
    __slots__ = (
        "_close_reason",
        "_closing",
        "_disconnected",
        "_drop_timer",
        "_early",
        "_early_bytes",
        "_ended",
        "_fragments",
        "_loop",
        "_on_close",
        "_on_connected",
        "_on_frame",
        "_options",
        "_out",
        "_out_bytes",
        "_parts",
        "bytes_in",
        "bytes_out",
        "dropped",
        "frames_in",
        "frames_out",
        "observed",
        "remote_ip",
        "request_host",
        "transport",
    )

    def __init__(
        self, options: WsOptions, on_connected: Callable[[WsLink], None] | None = None
    ) -> None:
        super().__init__()
        self._options = options
        self._on_connected = on_connected
        self.transport: WSTransport | None = None
        self.remote_ip: str | None = None
        self.observed: str | None = None
        """The address the remote says it sees us at (the dialler's side only)."""
        self.request_host: str | None = None
        """The ``Host`` header of the upgrade request (the listening side only)."""
        self._on_frame: Callable[[bytes], None] | None = None
        self._on_close: Callable[[str], None] | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._parts: bytearray | None = None
        """The fragments of a message read so far (None: no fragmented message under way)."""
        self._fragments = 0
        self._closing = False
        self._close_reason: str | None = None
        self._ended: str | None = None
        self._drop_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._disconnected: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self.dropped = 0
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        """Messages and their bytes read and sent on this link (payloads, not framing)."""

    # ------------------------------------------------------------------ the node's side

    def bind(self, on_frame: Callable[[bytes], None], on_close: Callable[[str], None]) -> None:
        """Start handing frames to ``on_frame``; ``on_close(reason)`` is called once at the end."""
        self._on_frame = on_frame
        self._on_close = on_close
        early, self._early = self._early, []
        self._early_bytes = 0
        for frame in early:
            on_frame(frame)
        if self._ended is not None:
            on_close(self._ended)

    @property
    def closing(self) -> bool:
        """True once the link has started closing; it sends nothing more."""
        return self._closing or self._ended is not None

    @property
    def buffered(self) -> int:
        """Bytes handed to the connection and not yet written to the socket."""
        transport = self.transport
        if transport is None or self._ended is not None:
            return 0
        return self._out_bytes + int(transport.underlying_transport.get_write_buffer_size())

    def send(self, frame: bytes) -> bool:
        """Send one text frame (written at the end of this turn of the event loop); False
        (and dropped) if the link is closing or its buffer is full."""
        transport = self.transport
        if (
            transport is None
            or self._closing
            or self._ended is not None
            or self._out_bytes + transport.underlying_transport.get_write_buffer_size() + len(frame)
            > self._options.max_buffer
        ):
            self.dropped += 1
            return False
        if not self._out:
            self._loop.call_soon(self.write)
        self._out.append(frame)
        self.frames_out += 1
        self.bytes_out += len(frame)
        self._out_bytes += len(frame)
        return True

    def write(self) -> None:
        """Frame what :meth:`send` took this turn and write it to the socket in one go."""
        out = self._out
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        transport = self.transport
        if transport is None or self._ended is not None or transport.is_close_frame_sent:
            return
        mask = transport.is_client_side
        transport.underlying_transport.write(b"".join([_text_frame(f, mask) for f in out]))

    def close(self, reason: str) -> None:
        """Start the closing handshake: send a close frame, read (and ignore) what comes until
        the remote's close frame, then end the connection; drop it after ``close_timeout``.
        Closing the socket while the remote still sends would reset it, and the remote could
        lose our close frame and its reason."""
        if self._closing or self._ended is not None:
            return
        self._closing = True
        self._close_reason = reason
        self._send_close(WSCloseCode.OK, reason)

    def _send_close(self, code: WSCloseCode, reason: str) -> None:
        transport = self.transport
        if transport is None or transport.is_close_frame_sent:
            return
        self.write()
        transport.send_close(code, _reason_bytes(reason))
        if self._drop_timer is None:
            self._drop_timer = asyncio.get_running_loop().call_later(
                self._options.close_timeout, transport.disconnect, False
            )

    def abort(self, reason: str) -> None:
        """Drop the connection at once, without a closing handshake (for a connection that
        never became a link: its remote may never answer one)."""
        if not self._closing:
            self._closing = True
            self._close_reason = reason
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    async def wait_closed(self) -> None:
        """Return once the connection is gone."""
        if self._ended is not None:
            return
        if self._disconnected is None:
            self._disconnected = self._loop.create_future()
        await asyncio.shield(self._disconnected)

    # ------------------------------------------------------------------ picows' side

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        if peer:
            self.remote_ip = str(peer[0])
        on_connected, self._on_connected = self._on_connected, None
        if on_connected is not None:
            on_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # No extension was negotiated: a reserved bit is a protocol error (RFC 6455 5.2).
            self._fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
        elif kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if self._parts is not None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
            elif frame.fin:
                self._received(frame.get_payload_as_bytes())
            else:
                self._parts = bytearray()
                self._part(frame)
        elif kind is WSMsgType.CONTINUATION:
            if self._parts is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "a continuation of no message")
                return
            self._part(frame)
            if frame.fin and self._parts is not None:
                message = bytes(self._parts)
                self._parts = None
                self._fragments = 0
                self._received(message)
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            if self._close_reason is None:
                self._close_reason = f"remote closed ({int(code.value)})"
            if not transport.is_close_frame_sent:
                transport.send_close(code, frame.get_close_message())
            self._closing = True
            transport.disconnect(graceful=True)
        # Anything else (pings and pongs are picows'; a frame after we started closing) is
        # ignored.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        reason = self._close_reason or "remote closed (no close frame)"
        self._ended = reason
        self._parts = None
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            self._on_frame = None
            on_close(reason)

    def pause_writing(self) -> None:
        """The socket's buffer crossed its high-water mark: :meth:`send` bounds it."""

    def resume_writing(self) -> None:
        """The socket's buffer drained below its low-water mark."""

    # ------------------------------------------------------------------ inside

    def _received(self, message: bytes) -> None:
        if self._closing:
            return
        self.frames_in += 1
        self.bytes_in += len(message)
        on_frame = self._on_frame
        if on_frame is not None:
            on_frame(message)
        elif self._ended is None and self._early_bytes + len(message) <= self._options.max_buffer:
            self._early.append(message)
            self._early_bytes += len(message)

    def _part(self, frame: WSFrame) -> None:
        """Add a fragment to the message under way: at most ``max_frame`` bytes in at most
        :data:`MAX_FRAGMENTS` fragments (empty ones count: they cost a callback each)."""
        parts = self._parts
        assert parts is not None
        self._fragments += 1
        if len(parts) + frame.payload_size > self._options.max_frame:
            self._fail(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
        elif self._fragments > MAX_FRAGMENTS:
            self._fail(WSCloseCode.MESSAGE_TOO_BIG, "message in too many fragments")
        else:
            parts += frame.get_payload_as_memoryview()

    def _fail(self, code: WSCloseCode, reason: str) -> None:
        """The remote broke the protocol: close with ``code`` and drop the connection."""
        self._parts = None
        self._fragments = 0
        if self._close_reason is None:
            self._close_reason = f"protocol error: {reason}"
        self._closing = True
        self._send_close(code, reason)


def _text_frame(payload: bytes, masked: bool) -> bytes:
    """One unfragmented text frame (RFC 6455 5.2); a client's is masked with a random key."""
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", 0x81, bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, bit | 127, size)
    if not masked:
        return head + payload
    key = _masks.randbytes(4)
    stream = (key * ((size >> 2) + 1))[:size]
    body = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return head + key + body.to_bytes(size, "little")


def _reason_bytes(reason: str) -> bytes:
    """A close reason as a close frame carries it: at most 123 bytes of UTF-8."""
    return reason.encode()[:123].decode(errors="ignore").encode()


async def dial(url: str, options: WsOptions) -> WsLink:
    """Open a WebSocket client connection to ``url``; raise OSError, TimeoutError or a picows
    handshake error if it fails within ``open_timeout``."""
    options_ = options

    def listener(_request: Any, response: WSUpgradeResponse) -> WsLink:
        link = WsLink(options_)
        link.observed = response.headers.get(OBSERVED_HEADER)
        return link

    _transport, link = await asyncio.wait_for(
        ws_connect(
            listener,
            url,
            websocket_handshake_timeout=options.open_timeout,
            logger_name=_picows_logger,
            enable_auto_ping=options.ping_interval is not None,
            auto_ping_idle_timeout=options.ping_interval or 20.0,
            auto_ping_reply_timeout=options.ping_timeout or 20.0,
            auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
            max_frame_size=options.max_frame,
            max_redirects=0,
            read_buffer_init_size=options.read_buffer,
            # asyncio's own transports, as the server uses: measured smaller per connection
            # (about 2 KiB) than aiofastnet's.
            use_aiofastnet=False,
        ),
        options.open_timeout,
    )
    assert isinstance(link, WsLink)
    return link


class WsServer:
    """A listening socket whose upgraded connections become :class:`WsLink` objects."""

    def __init__(
        self,
        on_link: Callable[[WsLink], None],
        admits: Callable[[str], bool],
        on_request: Callable[[WsLink, WSUpgradeRequest], None],
        options: WsOptions,
    ) -> None:
        self._on_link = on_link
        self._admits = admits
        self._on_request = on_request
        self._options = options
        self._server: asyncio.Server | None = None
        self.held = 0
        """Connections held before they are refused (see ``WsOptions.hold_refused``)."""
        self.refused = 0

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), host or None, port)

    def close(self) -> None:
        """Stop listening (open links are closed by their owner)."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Return once the listening socket is closed."""
        if self._server is not None:
            await self._server.wait_closed()

    def _protocol(self, remote_ip: str) -> Any:
        options = self._options

        def listener(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
            link = WsLink(options, self._on_link)
            link.remote_ip = remote_ip
            link.request_host = request.headers.get("Host")
            self._on_request(link, request)
            response = WSUpgradeResponse.create_101_response({OBSERVED_HEADER: remote_ip})
            return WSUpgradeResponseWithListener(response, link)

        return WSProtocol(
            None,
            None,
            False,
            listener,
            _picows_logger,
            True,
            options.accept_timeout,
            options.ping_interval is not None,
            options.ping_interval or 20.0,
            options.ping_timeout or 20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,
            options.max_frame,
            None,
            options.read_buffer,
        )


class _Gate(asyncio.Protocol):
    """The first protocol of every accepted connection: it hands the connection to picows, or,
    for an address over its handshake budget, holds it unread and then refuses it."""

    def __init__(self, server: WsServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self._server
        peer = transport.get_extra_info("peername")
        remote_ip = str(peer[0]) if peer else ""
        if server._admits(remote_ip):
            protocol = server._protocol(remote_ip)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        server.refused += 1
        if server.held >= server._options.max_held:
            transport.abort()
            return
        server.held += 1
        self._transport = transport
        transport.pause_reading()
        self._timer = asyncio.get_running_loop().call_later(
            server._options.hold_refused, self._refuse
        )

    def _refuse(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.write(_REFUSAL)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._server.held -= 1
            if self._timer is not None:
                self._timer.cancel()
