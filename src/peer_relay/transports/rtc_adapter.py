"""Glue between the node and :class:`~peer_relay.transports.webrtc.RTCLink`.

The core decides when a WebRTC link starts (``StartWebRTC``) and hands over verified signals
(``SignalIn``); this adapter creates the links, relays their outgoing signals through the core,
and registers open links with the node so that frames flow like on any other link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..events import SignalIn, StartWebRTC
from .webrtc import RTCConfig, RTCLink, RTCLinkError

if TYPE_CHECKING:
    from ..node import PeerRelay

_log = logging.getLogger("peer_relay.webrtc")


class _OpenRtcLink:
    """The node-facing side of an open RTCLink: ``send`` never raises, ``close`` is sync."""

    __slots__ = ("_adapter", "_link")

    def __init__(self, adapter: RtcAdapter, link: RTCLink) -> None:
        self._adapter = adapter
        self._link = link

    @property
    def buffered(self) -> int:
        return self._link.buffered_amount

    def send(self, frame: bytes) -> bool:
        try:
            self._link.send(frame.decode())
        except (RTCLinkError, ValueError):
            return False
        return True

    def close(self, reason: str) -> None:
        self._adapter.spawn(self._link.close())


class RtcAdapter:
    """Creates and tracks the WebRTC links of one node."""

    def __init__(
        self,
        node: PeerRelay,
        ice_servers: tuple[str, ...],
        host_addresses: tuple[str, ...] | None,
    ) -> None:
        self._node = node
        cfg = node.config
        self._config = RTCConfig(
            ice_servers=ice_servers,
            host_addresses=host_addresses,
            open_timeout=cfg.connect_timeout,
            max_frame=cfg.max_frame,
            # The same send buffer as a WebSocket link (max_link_buffer): a burst that one
            # absorbs must not make the other fail its sends and close.
            max_buffered=node._ws_options.max_buffer,
        )
        self._links: dict[int, RTCLink] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task that :meth:`close` waits for."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handle(self, event: StartWebRTC | SignalIn) -> None:
        """Carry out a WebRTC event of the core."""
        if isinstance(event, StartWebRTC):
            self._start(event.handle, event.initiator)
        else:
            link = self._links.get(event.handle)
            if link is not None:
                link.add_signal(event.signal)

    def close_link(self, handle: int, reason: str) -> None:
        """Close a link the core gave up on before it opened."""
        link = self._links.get(handle)
        if link is not None:
            self.spawn(link.close())

    async def close(self) -> None:
        """Close every WebRTC link and wait for them."""
        for link in list(self._links.values()):
            self.spawn(link.close())
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    def _start(self, handle: int, initiator: bool) -> None:
        node = self._node

        def core_call(name: str, *args: Any) -> None:
            core = node._core
            if core is not None:
                getattr(core, name)(*args)
                node._flush()

        def on_signal(signal: dict[str, Any]) -> None:
            core_call("send_signal", handle, signal, time.time())

        def on_open() -> None:
            node._links[handle] = _OpenRtcLink(self, link)
            core_call("link_connected", handle, time.time())

        def on_frame(frame: str) -> None:
            core_call("frame_received", handle, frame, time.time())

        def on_close(reason: str) -> None:
            self._links.pop(handle, None)
            node._links.pop(handle, None)
            with contextlib.suppress(Exception):
                core_call("link_closed", handle, time.time(), f"webrtc {reason}")

        link = RTCLink(
            initiator=initiator,
            on_signal=on_signal,
            on_open=on_open,
            on_frame=on_frame,
            on_close=on_close,
            config=self._config,
        )
        self._links[handle] = link
        self.spawn(link.start())
