"""WebSocket links on the ``websockets`` library: a server, a dialer, and one link per connection.

A link only moves frames: everything it reads goes to ``on_frame``, everything the node asks it to
send is queued (bounded in bytes) and written in order by one writer task. It never interprets a
frame and never decides anything about routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.http11 import Request, Response

from ..addresses import OBSERVED_HEADER

_log = logging.getLogger("peer_relay.websocket")


@dataclass(frozen=True, slots=True)
class WsOptions:
    """Settings of every WebSocket link of a node."""

    max_frame: int = 1 << 20
    """Largest incoming frame; bigger ones close the connection (websockets' ``max_size``)."""
    max_buffer: int = 16 << 20
    """Most bytes queued for sending on one link; frames beyond are dropped and counted."""
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    """Seconds a dial has to connect and finish the WebSocket upgrade."""
    accept_timeout: float = 3.0
    """Seconds an inbound connection has to finish the WebSocket upgrade."""
    close_timeout: float = 5.0


class WsLink:
    """One open WebSocket connection carrying text frames."""

    def __init__(
        self,
        ws: Connection,
        on_frame: Callable[[bytes], None],
        on_close: Callable[[str], None],
        options: WsOptions,
        on_undelivered: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.ws = ws
        self._on_frame = on_frame
        self._on_close = on_close
        self._on_undelivered = on_undelivered
        self._options = options
        self._outbox: deque[bytes] = deque()
        self._buffered = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._close_reason = "closed"
        self.dropped = 0

    @property
    def closing(self) -> bool:
        """True once the link has started closing; it sends nothing more."""
        return self._closing

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet handed to the connection."""
        return self._buffered

    def send(self, frame: bytes) -> bool:
        """Queue one frame; return False (and drop it) if the link's buffer is full or closing."""
        if self._closing or self._buffered + len(frame) > self._options.max_buffer:
            self.dropped += 1
            return False
        self._outbox.append(frame)
        self._buffered += len(frame)
        self._wake.set()
        return True

    def close(self, reason: str) -> None:
        """Start closing; :meth:`run` returns once the connection is closed."""
        if not self._closing:
            self._closing = True
            self._close_reason = reason
            self._wake.set()

    def abort(self, reason: str) -> None:
        """Drop the connection at once, without a closing handshake (for a connection that
        never became a link: its remote may never answer one)."""
        if not self._closing:
            self._closing = True
            self._close_reason = reason
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()
        self._wake.set()

    async def run(self) -> None:
        """Read frames until the connection ends, then report ``on_close`` exactly once."""
        writer = asyncio.create_task(self._write())
        reason = "closed"
        try:
            ws = self.ws
            on_frame = self._on_frame
            while True:
                message = await ws.recv(decode=False)
                on_frame(message if isinstance(message, bytes) else message.encode())
        except ConnectionClosed as exc:
            reason = f"remote closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except Exception as exc:  # any failure of one connection ends that link only
            reason = f"error: {exc!r}"
        finally:
            if self._closing:
                reason = self._close_reason
            self._closing = True
            self._wake.set()
            # Tell the node at once, so that nothing more is routed here while we clean up.
            self._on_close(reason)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, self._options.close_timeout)
            with contextlib.suppress(Exception):
                await self.ws.close(1000, reason[:100])

    async def _write(self) -> None:
        """Write queued frames in order; after :meth:`close`, flush them and close the socket."""
        outbox = self._outbox
        send = self.ws.send
        try:
            while True:
                while outbox:
                    frame = outbox[0]
                    await send(frame, text=True)
                    # Popped only once written: a frame whose write failed is handed back.
                    outbox.popleft()
                    self._buffered -= len(frame)
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionClosed, WebSocketException):
            pass
        finally:
            if not self._closing:
                self._closing = True
                self._close_reason = "write failed"
            leftover = list(outbox)
            outbox.clear()
            self._buffered = 0
            if leftover and self._on_undelivered is not None:
                self._on_undelivered(leftover)
            # Closing the connection also ends the reader's pending recv().
            with contextlib.suppress(Exception):
                await self.ws.close(1000, self._close_reason[:100])


async def dial(url: str, options: WsOptions) -> Connection:
    """Open a WebSocket client connection to ``url`` (no compression, no proxy)."""
    return await connect(
        url,
        compression=None,
        proxy=None,
        max_size=options.max_frame,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        open_timeout=options.open_timeout,
        close_timeout=options.close_timeout,
        user_agent_header=None,
    )


def _tell_observed(connection: ServerConnection, request: Request, response: Response) -> None:
    """Tell the dialler the address we see it at (a listening peer behind a loopback-only
    view of itself learns its address from these; see :mod:`peer_relay.addresses`)."""
    remote = connection.remote_address
    if remote and response.status_code == 101:
        response.headers[OBSERVED_HEADER] = str(remote[0])


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str,
    port: int,
    options: WsOptions,
    screen: Callable[[ServerConnection, Request], Awaitable[Response | None]] | None = None,
) -> Server:
    """Start a WebSocket server on ``host:port`` (port 0 picks a free one). ``screen`` sees
    each upgrade request first and may answer it with a response of its own (a refusal)."""
    return await serve(
        handler,
        host,
        port,
        process_request=screen,
        process_response=_tell_observed,
        compression=None,
        max_size=options.max_frame,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        open_timeout=options.accept_timeout,
        close_timeout=options.close_timeout,
        server_header=None,
    )
