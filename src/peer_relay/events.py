"""What the core asks its adapter to do, and what it tells the application.

The core returns these from :meth:`peer_relay.core.Core.events`; an adapter (the asyncio node, the
simulator) carries them out. They are plain immutable values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send ``frame`` (UTF-8 JSON, to go out as one text frame) on link ``handle``."""

    handle: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Close link ``handle``; the core has already forgotten it."""

    handle: int
    reason: str


@dataclass(frozen=True, slots=True)
class DialWebSocket:
    """Open a WebSocket to ``url`` as link ``handle``.

    Report success with ``Core.link_connected(handle, ...)`` and failure with
    ``Core.link_closed(handle, ...)``. ``expected_id`` is the id the remote must prove, if known.
    """

    handle: int
    url: str
    expected_id: bytes | None


@dataclass(frozen=True, slots=True)
class StartWebRTC:
    """Start a WebRTC link ``handle`` to ``peer_id``; the initiator makes the offer."""

    handle: int
    peer_id: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class SignalIn:
    """A verified signalling message from the remote of WebRTC link ``handle``."""

    handle: int
    signal: Any


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message addressed to us arrived. ``verified`` says whether ``sender`` is proven."""

    data: Any
    sender: bytes
    verified: bool
    hops: int


@dataclass(frozen=True, slots=True)
class PeerLinked:
    """A direct link to ``peer_id`` opened."""

    peer_id: bytes
    transport: str
    authenticated: bool
    handshake: float = field(default=0.0, repr=False, compare=False)
    """Seconds from the link's start (our dial, or the connection accepted) to its opening (a
    measurement, not part of the event's value: left out of its repr and equality)."""


@dataclass(frozen=True, slots=True)
class PeerUnlinked:
    """The direct link to ``peer_id`` closed."""

    peer_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """The outcome of a connection attempt that the application asked for."""

    peer_id: bytes
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """A :meth:`~peer_relay.core.Core.deliver` ended: its receipt came back (``ok``), or it
    ran out of time; ``reason`` says why it failed."""

    token: int
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request for our handler; answer it with ``Core.respond(token, ...)``."""

    token: int
    data: Any
    sender: bytes
    hops: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A :meth:`~peer_relay.core.Core.request` ended: its reply ``value`` came back (``ok``),
    or it failed: ``error`` is the handler's error when ``remote``, else why it failed."""

    token: int
    ok: bool
    value: Any
    error: str
    remote: bool


Event = (
    SendFrame
    | CloseLink
    | DialWebSocket
    | StartWebRTC
    | SignalIn
    | Delivered
    | PeerLinked
    | PeerUnlinked
    | ConnectResult
    | DeliveryResult
    | RequestReceived
    | Reply
)
