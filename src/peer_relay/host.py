"""The one pump between a core and its host: every host drives its core through :class:`Pump`.

A host (the asyncio node, the browser peer, the simulator) does I/O; the core decides. After the
host has fed the core an input (a frame, a link that opened or closed, a call of the
application), it calls :meth:`Pump.drive`, which

1. drains the core's events, again and again while carrying them out gives the core more to do
   (a frame a link refused, reported back with ``frame_undeliverable``, is re-routed at once);
2. hands each event to the host's method for its kind (:class:`Host`);
3. re-arms the host's one timer when the core's deadline changed. When that timer goes off, the
   host calls :meth:`Pump.timer_fired`.

Errors, one policy for every host: an exception raised by a host's method is logged with its
traceback and counted in :attr:`Pump.errors`, and the drain goes on with the next event, so one
failing handler neither strands the events behind it nor leaves the timer unarmed. A frame whose
``send_frame`` raised is reported undeliverable, so the core re-routes it and counts it. An
exception raised by the core itself (a bug: the core never raises on remote input) propagates to
the host's caller, after the timer is re-armed. Since it is all synchronous and in order, a
deterministic host (the simulator) stays deterministic.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from .core import Core
from .events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DeliveryResult,
    DialWebSocket,
    Event,
    PeerLinked,
    PeerUnlinked,
    Reply,
    RequestReceived,
    SendFrame,
    SignalIn,
    StartWebRTC,
)

__all__ = ["Host", "Pump"]

_log = logging.getLogger("peer_relay.host")


class Host(Protocol):
    """What a host offers the pump: its clock, its one timer, and one method per kind of event.

    Link events come as their fields; application events (``delivered``, ``peer_linked``,
    ``peer_unlinked``, ``connect_result``) as the event value, which hosts hand on as it is.
    The methods run inside :meth:`Pump.drive`; they may feed the core (a link that fails at
    once reports ``link_closed``), and the pump carries out what that produces before it
    returns, after the events it already holds.
    """

    def now(self) -> float:
        """The current time on the clock the core runs on (seconds)."""
        ...

    def set_timer(self, when: float | None) -> None:
        """Arm the one timer to call :meth:`Pump.timer_fired` at ``when`` (on :meth:`now`'s
        clock), replacing the one armed; None disarms it. A timer that went off is spent."""
        ...

    def send_frame(self, handle: int, frame: bytes) -> bool:
        """Send ``frame`` on link ``handle``; False if the link is gone, closing or full (the
        pump then reports it undeliverable). A host that learns of a failure later reports it
        itself with ``Core.frame_undeliverable``."""
        ...

    def close_link(self, handle: int, reason: str) -> None:
        """Close link ``handle`` (open or still opening); the core has already forgotten it."""
        ...

    def dial_websocket(self, handle: int, url: str, expected_id: bytes | None) -> None:
        """Open a WebSocket to ``url`` as link ``handle``; report the outcome to the core
        (``link_connected`` or ``link_closed``)."""
        ...

    def start_webrtc(self, handle: int, peer_id: bytes, initiator: bool) -> None:
        """Start WebRTC link ``handle`` to ``peer_id`` (the initiator makes the offer)."""
        ...

    def signal_in(self, handle: int, signal: Any) -> None:
        """Hand a remote signal (verified by the core, written by the remote) to WebRTC link
        ``handle``."""
        ...

    def delivered(self, event: Delivered) -> None:
        """A message for the application arrived."""
        ...

    def peer_linked(self, event: PeerLinked) -> None:
        """A direct link to a peer opened."""
        ...

    def peer_unlinked(self, event: PeerUnlinked) -> None:
        """A direct link to a peer closed."""
        ...

    def connect_result(self, event: ConnectResult) -> None:
        """A connection attempt the application asked for ended."""
        ...

    def delivery_result(self, event: DeliveryResult) -> None:
        """A delivery the application asked for ended (receipt, or failure)."""
        ...

    def request_received(self, event: RequestReceived) -> None:
        """A request for the application's handler arrived."""
        ...

    def reply(self, event: Reply) -> None:
        """A request the application made ended (its reply, or failure)."""
        ...


class Pump:
    """Drives one core for one host. See the module docstring for what it promises."""

    __slots__ = (
        "_armed",
        "_close_link",
        "_connect_result",
        "_core",
        "_delivered",
        "_delivery_result",
        "_dial_websocket",
        "_now",
        "_peer_linked",
        "_peer_unlinked",
        "_reply",
        "_request_received",
        "_send_frame",
        "_set_timer",
        "_signal_in",
        "_start_webrtc",
        "errors",
        "trace",
    )

    def __init__(self, core: Core, host: Host) -> None:
        self._core = core
        # The host's methods, bound once: the dispatch below is the simulator's hot path.
        self._now = host.now
        self._set_timer = host.set_timer
        self._send_frame = host.send_frame
        self._close_link = host.close_link
        self._dial_websocket = host.dial_websocket
        self._start_webrtc = host.start_webrtc
        self._signal_in = host.signal_in
        self._delivered = host.delivered
        self._peer_linked = host.peer_linked
        self._peer_unlinked = host.peer_unlinked
        self._connect_result = host.connect_result
        self._delivery_result = host.delivery_result
        self._request_received = host.request_received
        self._reply = host.reply
        self._armed: float | None = None
        self.errors: Counter[str] = Counter()
        """Exceptions raised by the host's methods, by kind of event."""
        self.trace: Callable[[Event], None] | None = None
        """If set, called with every event before it is carried out (tests, traces)."""

    @property
    def core(self) -> Core:
        """The core this pump drives."""
        return self._core

    def drive(self) -> None:
        """Carry out every event of the core, then re-arm the host's timer if the core's
        deadline changed."""
        core = self._core
        send_frame = self._send_frame
        try:
            events = core.events()
            while events:
                trace = self.trace
                for event in events:
                    if trace is not None:
                        trace(event)
                    if type(event) is SendFrame:
                        try:
                            if send_frame(event.handle, event.frame):
                                continue
                        except Exception:
                            self._failed(event)
                        core.frame_undeliverable(event.handle, event.frame, self._now())
                    else:
                        try:
                            self._dispatch(event)
                        except Exception:
                            self._failed(event)
                events = core.events()
        finally:
            when = core.get_timer()
            if when != self._armed:
                self._armed = when
                self._set_timer(when)

    def timer_fired(self) -> None:
        """The host's timer went off: run the core's timers, then :meth:`drive`."""
        self._armed = None
        try:
            self._core.handle_timer(self._now())
        finally:
            self.drive()

    def _dispatch(self, event: Event) -> None:
        """Hand one event other than SendFrame to the host's method for its kind."""
        if type(event) is Delivered:
            self._delivered(event)
        elif type(event) is CloseLink:
            self._close_link(event.handle, event.reason)
        elif type(event) is DialWebSocket:
            self._dial_websocket(event.handle, event.url, event.expected_id)
        elif type(event) is PeerLinked:
            self._peer_linked(event)
        elif type(event) is PeerUnlinked:
            self._peer_unlinked(event)
        elif type(event) is SignalIn:
            self._signal_in(event.handle, event.signal)
        elif type(event) is StartWebRTC:
            self._start_webrtc(event.handle, event.peer_id, event.initiator)
        elif type(event) is ConnectResult:
            self._connect_result(event)
        elif type(event) is DeliveryResult:
            self._delivery_result(event)
        elif type(event) is RequestReceived:
            self._request_received(event)
        elif type(event) is Reply:
            self._reply(event)
        else:
            raise TypeError(f"unknown event {event!r}")

    def _failed(self, event: Event) -> None:
        name = type(event).__name__
        self.errors[name] += 1
        _log.exception("the host failed to carry out %s", name)


def source_of(address: str) -> str:
    """The handshake-budget source of a remote address (see ``Core.link_accepted``): an IPv4
    address as it is (also when mapped into IPv6), an IPv6 address by its /64, which one host
    commonly holds whole."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
