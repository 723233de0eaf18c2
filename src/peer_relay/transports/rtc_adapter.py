"""WebRTC links for a host: creates :class:`~peer_relay.transports.webrtc.RTCLink` objects on
request and reports what happens on them through callbacks, as a WebSocket link does.

The core decides when a WebRTC link starts (``StartWebRTC``) and hands over verified remote
signals (``SignalIn``); the host passes them to :meth:`RtcAdapter.start` and
:meth:`RtcAdapter.add_signal`. The adapter knows nothing of the host: it reports a link's outgoing
signals, its opening (with an :class:`OpenRtcLink` to send on), its frames and its end through the
four callbacks it was given, each with the link's handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any

from .webrtc import RTCConfig, RTCLink, RTCLinkError


class OpenRtcLink:
    """An open WebRTC link as a host sends on it: :meth:`send` never raises, :meth:`close`
    returns at once (the link closes in the background)."""

    __slots__ = ("_link", "_spawn", "bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self, link: RTCLink, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._link = link
        self._spawn = spawn
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        """Messages and their bytes read (counted by the host) and sent on this link."""

    @property
    def buffered(self) -> int:
        """Bytes sent and not yet handed to SCTP."""
        return self._link.buffered_amount

    def send(self, frame: bytes) -> bool:
        """Send one frame; False if the link is not open, the frame too large or the buffer full."""
        try:
            self._link.send(frame.decode())
        except (RTCLinkError, ValueError):
            return False
        self.frames_out += 1
        self.bytes_out += len(frame)
        return True

    def close(self, reason: str) -> None:
        """Start closing the link; its ``on_close`` follows."""
        self._spawn(self._link.close())


class RtcAdapter:
    """Creates and tracks the WebRTC links of one host.

    ``on_signal(handle, signal)``: a signal to relay to the remote; ``on_open(handle, link)``: the
    data channel opened; ``on_frame(handle, frame)``: a text frame arrived; ``on_close(handle,
    reason)``: the link ended (once per link, whether it opened or not; ``reason`` is one of
    :data:`~peer_relay.transports.webrtc.CLOSE_REASONS`).
    """

    def __init__(
        self,
        config: RTCConfig,
        *,
        on_signal: Callable[[int, dict[str, Any]], None],
        on_open: Callable[[int, OpenRtcLink], None],
        on_frame: Callable[[int, str], None],
        on_close: Callable[[int, str], None],
    ) -> None:
        self._config = config
        self._on_signal = on_signal
        self._on_open = on_open
        self._on_frame = on_frame
        self._on_close = on_close
        self._links: dict[int, RTCLink] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def config(self) -> RTCConfig:
        """The settings every link gets."""
        return self._config

    @property
    def links(self) -> Mapping[int, RTCLink]:
        """The links not yet closed, by handle (a read-only view)."""
        return MappingProxyType(self._links)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that :meth:`close` waits for."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, handle: int, initiator: bool) -> None:
        """Start link ``handle``; the initiator makes the offer."""
        link = RTCLink(
            initiator=initiator,
            on_signal=lambda signal: self._on_signal(handle, signal),
            on_open=lambda: self._on_open(handle, OpenRtcLink(link, self.spawn)),
            on_frame=lambda frame: self._on_frame(handle, frame),
            on_close=lambda reason: self._closed(handle, reason),
            config=self._config,
        )
        self._links[handle] = link
        self.spawn(link.start())

    def add_signal(self, handle: int, signal: Any) -> None:
        """Hand a remote signal to link ``handle`` (ignored if there is no such link)."""
        link = self._links.get(handle)
        if link is not None:
            link.add_signal(signal)

    def close_link(self, handle: int, reason: str) -> None:
        """Close link ``handle`` (one the host gave up on before it opened, say)."""
        link = self._links.get(handle)
        if link is not None:
            self.spawn(link.close())

    async def close(self) -> None:
        """Close every link and wait (at most 5 s) for them and for the tasks started."""
        for link in list(self._links.values()):
            self.spawn(link.close())
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    def _closed(self, handle: int, reason: str) -> None:
        self._links.pop(handle, None)
        self._on_close(handle, reason)
