"""One WebRTC data-channel link on aiortc, speaking simple-peer's signal format.

:class:`RTCLink` knows nothing about routing: it turns remote signals into an open,
ordered, reliable data channel and moves text frames over it.  The node relays the
signals (``on_signal`` out, :meth:`RTCLink.add_signal` in) and decides what frames mean.

Compatibility with simple-peer 6 (peer-relay 0.0.2) and 9:

* Outgoing signals are ``{"type": "offer"|"answer", "sdp": ...}``.  aiortc gathers all
  candidates before it returns a description, so the SDP carries them and nothing is
  ever trickled.
* Incoming signals are dispatched on their keys (``sdp`` / ``candidate``), never on
  ``type``, so simple-peer 6 candidates (no ``type``) and 9 candidates
  (``type: "candidate"``) are the same thing.  They are checked, and malformed ones
  counted by reason, by :class:`~peer_relay.transports.signals.SignalFilter`, the checks
  the browser link shares.  Candidates that arrive before the remote description are
  queued and applied, in order, right after it is set.
* Like simple-peer, the initiator creates the channel in-band (DCEP, not
  pre-negotiated), ordered and reliable; the answerer takes whatever channel the remote
  opens.  simple-peer labels it with 40 random hex digits; we use ``"peer-relay"``.
  Neither side looks at the label.
* Browser ``.local`` (mDNS) candidates are dropped, both trickled and inside an SDP:
  resolving them would need multicast on the LAN, and peers still link through their
  other candidates (or ours, as peer-reflexive).

Host addresses (:attr:`RTCConfig.host_addresses`): aioice gathers host candidates
from ``aioice.ice.get_host_addresses``, which skips 127.0.0.1, so a loopback-only
machine gathers nothing.  aiortc offers no hook, so the function has to be replaced,
but only in a scoped way: while at least one link is gathering, the module attribute
is swapped for a wrapper (reference-counted, restored by the last link to finish,
and left alone if somebody else replaced it meanwhile).  The wrapper reads a
:class:`contextvars.ContextVar` that the gathering link sets in its own task; asyncio
copies the context into the tasks aiortc spawns to gather, so each link sees its own
addresses, concurrent links with different settings do not interfere, and any other
aioice user (context var unset) gets the original function.

Lifecycle: :meth:`RTCLink.start`, then signals, then ``on_open``.  Every ending goes
through one shutdown path that closes the data channel first (a bare
``RTCPeerConnection.close()`` aborts the SCTP association, loses unacknowledged data,
and shows as an error in browsers), then the peer connection, and then calls
``on_close(reason)`` exactly once with one of :data:`CLOSE_REASONS`.

Receive buffer (:attr:`RTCConfig.rcvbuf`): aioice already asks for 256 KiB.  Measured
here (loopback, sender flooding): a 4 MiB SO_RCVBUF removes the early RcvbufErrors for
4 KiB frames, but is slower overall, and under a flood of 100-byte frames it lets
aiortc's SCTP grow its window to ~10,000 single-chunk packets (aiortc neither bundles
chunks nor honours the peer's rwnd); throughput then decays and the queueing delay
makes ICE consent checks fail, killing the link after ~30 s.  With the default buffer,
losses keep the window small (brief stalls, higher throughput, link survives), so the
option exists but is off.

Backpressure: :meth:`RTCLink.send` *raises* :class:`BufferFullError` when the
channel's ``bufferedAmount`` would exceed :attr:`RTCConfig.max_buffered`; nothing is
queued outside aiortc.  Callers decide whether to drop, reroute or
``await link.drain()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import candidate_from_sdp

from .signals import (
    MAX_CANDIDATE_CHARS,
    MAX_REMOTE_CANDIDATES,
    MAX_SDP_CHARS,
    MAX_SIGNALS,
    Candidate,
    Description,
    Remote,
    SignalFilter,
    strip_mdns_candidates,
)

__all__ = [
    "CLOSE_REASONS",
    "MAX_CANDIDATE_CHARS",
    "MAX_REMOTE_CANDIDATES",
    "MAX_SDP_CHARS",
    "MAX_SIGNALS",
    "BufferFullError",
    "FrameTooLargeError",
    "LinkNotOpenError",
    "RTCConfig",
    "RTCLink",
    "RTCLinkError",
]

logger = logging.getLogger("peer_relay.webrtc")

#: Reasons passed to ``on_close``.
CLOSE_REASONS: Final = ("closed", "remote-closed", "timeout", "failed")

CHANNEL_LABEL: Final = "peer-relay"


class RTCLinkError(Exception):
    """Base class for errors raised by :class:`RTCLink`."""


class LinkNotOpenError(RTCLinkError):
    """The data channel is not open (not yet, or no longer)."""


class FrameTooLargeError(RTCLinkError, ValueError):
    """The frame exceeds ``max_frame`` or the remote's max-message-size."""


class BufferFullError(RTCLinkError):
    """Sending would push ``bufferedAmount`` past ``max_buffered``."""


@dataclass(frozen=True)
class RTCConfig:
    """Settings of one link; all sizes in bytes, times in seconds."""

    #: ICE server URLs ("stun:host:port", "turn:host:port?transport=udp"); none by default.
    ice_servers: tuple[str, ...] = ()
    #: Username and credential for the TURN servers in ``ice_servers``.
    ice_username: str | None = None
    ice_credential: str | None = None
    #: Host addresses ICE binds to instead of aioice's interface scan (None: the scan).
    host_addresses: tuple[str, ...] | None = None
    #: An attempt not open after this long closes with reason "timeout".
    open_timeout: float = 15.0
    #: How long close() waits for the channel to close cleanly before the pc is closed.
    close_timeout: float = 2.0
    #: Largest frame sent or accepted (UTF-8 bytes).
    max_frame: int = 1 << 20
    #: send() refuses a frame that would leave more than this queued in aiortc.
    max_buffered: int = 1 << 20
    #: SO_RCVBUF asked for on the ICE UDP sockets (the kernel caps it at rmem_max);
    #: 0 keeps aioice's 256 KiB.  Bigger is not better by default: see the module notes.
    rcvbuf: int = 0

    def __post_init__(self) -> None:
        for url in self.ice_servers:
            parse_stun_turn_uri(url)  # raises ValueError on a malformed URL
        if self.host_addresses is not None:
            for address in self.host_addresses:
                ipaddress.ip_address(address)  # raises ValueError if not an IP literal
        if self.open_timeout <= 0 or self.close_timeout < 0:
            raise ValueError("open_timeout must be > 0 and close_timeout >= 0")
        if self.max_frame <= 0 or self.max_buffered <= 0 or self.rcvbuf < 0:
            raise ValueError("max_frame and max_buffered must be > 0, rcvbuf >= 0")


# --- scoped override of aioice's host-address scan ----------------------------------

_host_override: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "peer_relay_webrtc_host_addresses", default=None
)
_HostFn = Callable[[bool, bool], list[str]]
_original_get_host_addresses: _HostFn | None = None
_override_users = 0


def _scoped_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for ``aioice.ice.get_host_addresses`` while links gather."""
    override = _host_override.get()
    if override is None:
        assert _original_get_host_addresses is not None
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    wanted = {4: use_ipv4, 6: use_ipv6}
    return [a for a in override if wanted[ipaddress.ip_address(a).version]]


@contextlib.contextmanager
def _host_addresses(addresses: tuple[str, ...] | None) -> Iterator[None]:
    """Within this block (and tasks it spawns), aioice gathers on ``addresses``."""
    global _original_get_host_addresses, _override_users
    if addresses is None:
        yield
        return
    if _override_users == 0:
        _original_get_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _scoped_get_host_addresses
    _override_users += 1
    token = _host_override.set(addresses)
    try:
        yield
    finally:
        _host_override.reset(token)
        _override_users -= 1
        if _override_users == 0:
            if aioice.ice.get_host_addresses is _scoped_get_host_addresses:
                assert _original_get_host_addresses is not None
                aioice.ice.get_host_addresses = _original_get_host_addresses  # type: ignore[assignment]
            else:
                logger.warning("aioice.ice.get_host_addresses was replaced meanwhile; left as is")
            _original_get_host_addresses = None


# --- ICE servers -------------------------------------------------------------------


def _rtc_ice_servers(config: RTCConfig) -> list[RTCIceServer]:
    servers = []
    for url in config.ice_servers:
        if url.startswith("turn"):
            servers.append(
                RTCIceServer(
                    urls=url, username=config.ice_username, credential=config.ice_credential
                )
            )
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


# --- the link ----------------------------------------------------------------------


class RTCLink:
    """A single WebRTC data channel to one remote peer.

    Callbacks run on the event loop and must not block; exceptions they raise are
    logged and otherwise ignored.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        on_signal: Callable[[dict[str, Any]], None],
        on_open: Callable[[], None],
        on_frame: Callable[[str], None],
        on_close: Callable[[str], None],
        config: RTCConfig | None = None,
    ) -> None:
        self.initiator = initiator
        self.config = config if config is not None else RTCConfig()
        #: Counts of remote signals and incoming frames that were not applied, by reason.
        self.dropped: Counter[str] = Counter()
        self._on_signal = on_signal
        self._on_open = on_open
        self._on_frame = on_frame
        self._on_close = on_close

        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._open = False
        self._started = False
        self._closing = False
        self._close_reason: str | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None
        self._filter = SignalFilter(initiator)
        self._signals: asyncio.Queue[Remote] = asyncio.Queue()
        self._gather_idle = asyncio.Event()
        self._gather_idle.set()
        self._have_remote_description = False
        self._pending_candidates: list[Candidate] = []
        self._channel_closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # -- public API --------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True from ``on_open`` until the link starts closing."""
        return self._open and not self._closing

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by :meth:`send` that aiortc has not yet handed to SCTP."""
        return self._channel.bufferedAmount if self._channel is not None else 0

    @property
    def close_reason(self) -> str | None:
        """The reason given to ``on_close``, once closing has begun."""
        return self._close_reason

    async def start(self) -> None:
        """Create the peer connection; as initiator also the channel and the offer.

        Failures do not raise: they close the link with reason "failed".
        """
        if self._started:
            raise RuntimeError("RTCLink.start() called twice")
        self._started = True
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=_rtc_ice_servers(self.config)))
        self._pc = pc
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("datachannel", self._on_remote_channel)
        self._timer = loop.call_later(self.config.open_timeout, self._on_open_timeout)
        if self.initiator:
            self._attach_channel(pc.createDataChannel(CHANNEL_LABEL, ordered=True))
            try:
                await self._set_local_description(await pc.createOffer())
            except Exception as exc:
                self._fail_during_setup("creating the offer", exc)
                return
            if self._closing:
                return
            self._emit_signal({"type": "offer", "sdp": pc.localDescription.sdp})
        self._worker = loop.create_task(self._process_signals(), name="rtc-link-signals")

    def add_signal(self, signal: object) -> None:
        """Queue one remote simple-peer signal; malformed ones are counted in ``dropped``.

        The checks are :class:`~peer_relay.transports.signals.SignalFilter`'s, made before this
        returns; what passes is applied in arrival order.
        """
        parts = self._filter.check(signal)
        if isinstance(parts, str):
            self._drop(parts, signal)
            return
        for part in parts:
            self._signals.put_nowait(part)

    def send(self, frame: str) -> None:
        """Send one text frame.

        Raises :class:`LinkNotOpenError`, :class:`FrameTooLargeError` or
        :class:`BufferFullError`; a frame that raises was not sent.
        """
        channel = self._channel
        if not self._open or self._closing or channel is None or channel.readyState != "open":
            raise LinkNotOpenError("WebRTC data channel is not open")
        if not isinstance(frame, str):
            raise TypeError(f"frame must be str, not {type(frame).__name__}")
        size = len(frame) if frame.isascii() else len(frame.encode("utf-8"))
        limit = self.config.max_frame
        remote_limit = channel.transport._remote_max_message_size
        if remote_limit:
            limit = min(limit, remote_limit)
        if size > limit:
            raise FrameTooLargeError(f"frame of {size} bytes exceeds the limit of {limit}")
        if channel.bufferedAmount + size > self.config.max_buffered:
            self._writable.clear()
            raise BufferFullError(
                f"{channel.bufferedAmount} bytes already buffered (max {self.config.max_buffered})"
            )
        channel.send(frame)
        if channel.bufferedAmount > channel.bufferedAmountLowThreshold:
            self._writable.clear()

    async def drain(self) -> None:
        """Wait until the send buffer is at most half of ``max_buffered``.

        Raises :class:`LinkNotOpenError` if the link is (or becomes) not open.
        """
        while True:
            if not self.is_open or self._channel is None:
                raise LinkNotOpenError("WebRTC data channel is not open")
            if self._channel.bufferedAmount <= self._channel.bufferedAmountLowThreshold:
                return
            self._writable.clear()
            await self._writable.wait()

    async def close(self) -> None:
        """Close the link (idempotent); returns once its resources are released."""
        self._begin_close("closed")
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    # -- signalling ----------------------------------------------------------------

    async def _process_signals(self) -> None:
        """Apply remote signals one at a time, in arrival order."""
        while True:
            part = await self._signals.get()
            try:
                if isinstance(part, Description):
                    await self._apply_description(part)
                elif self._have_remote_description:
                    await self._add_candidate(part)
                else:
                    self._pending_candidates.append(part)
            except Exception as exc:
                self._fail_during_setup("applying a remote signal", exc)
                return
            if self._closing:
                return

    async def _apply_description(self, description: Description) -> None:
        pc = self._pc
        assert pc is not None
        sdp, removed = strip_mdns_candidates(description.sdp)
        if removed:
            self.dropped["mdns-candidate"] += removed
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=description.type))
        self._have_remote_description = True
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)
        if description.type == "offer":
            await self._set_local_description(await pc.createAnswer())
            if not self._closing:
                self._emit_signal({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _add_candidate(self, candidate: Candidate) -> None:
        assert self._pc is not None
        ice = candidate_from_sdp(candidate.sdp)
        ice.sdpMid = candidate.sdp_mid
        ice.sdpMLineIndex = candidate.sdp_mline_index
        await self._pc.addIceCandidate(ice)

    async def _set_local_description(self, description: RTCSessionDescription) -> None:
        """setLocalDescription (which gathers), on the configured host addresses."""
        assert self._pc is not None
        self._gather_idle.clear()
        try:
            with _host_addresses(self.config.host_addresses):
                await self._pc.setLocalDescription(description)
        finally:
            self._gather_idle.set()
        self._enlarge_rcvbuf()

    def _enlarge_rcvbuf(self) -> None:
        """Ask for a larger SO_RCVBUF on the ICE sockets (reaches into aioice)."""
        if not self.config.rcvbuf or self._pc is None or self._pc.sctp is None:
            return
        try:
            protocols = self._pc.sctp.transport.transport._connection._protocols
        except AttributeError:  # aiortc/aioice internals moved
            logger.debug("cannot reach the ICE sockets to set SO_RCVBUF")
            return
        for protocol in protocols:
            sock = protocol.transport.get_extra_info("socket")
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
            except OSError as exc:
                logger.debug("SO_RCVBUF not set: %s", exc)

    def _emit_signal(self, signal: dict[str, Any]) -> None:
        try:
            self._on_signal(signal)
        except Exception:
            logger.exception("on_signal callback raised")

    def _drop(self, reason: str, signal: object) -> None:
        self.dropped[reason] += 1
        level = logging.INFO if self.dropped[reason] == 1 else logging.DEBUG
        logger.log(level, "dropped remote signal (%s): %.200r", reason, signal)

    # -- data channel ----------------------------------------------------------------

    def _attach_channel(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.bufferedAmountLowThreshold = self.config.max_buffered // 2
        channel.on("open", self._on_channel_open)
        channel.on("message", self._on_message)
        channel.on("close", self._on_channel_close)
        channel.on("bufferedamountlow", self._writable.set)

    def _on_remote_channel(self, channel: RTCDataChannel) -> None:
        if self._channel is not None or self._closing:
            self.dropped["extra-channel"] += 1
            logger.info("closing extra data channel %r from the remote", channel.label)
            channel.close()
            return
        self._attach_channel(channel)
        if channel.readyState == "open":  # aiortc hands remote channels over already open
            self._on_channel_open()

    def _on_channel_open(self) -> None:
        if self._open or self._closing:
            return
        self._open = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        logger.debug("data channel %r open", self._channel.label if self._channel else None)
        try:
            self._on_open()
        except Exception:
            logger.exception("on_open callback raised")

    def _on_message(self, message: str | bytes) -> None:
        if self._closing:
            return
        limit = self.config.max_frame
        if isinstance(message, bytes):
            if len(message) > limit:
                self.dropped["frame-too-large"] += 1
                return
            try:
                message = message.decode("utf-8")
            except UnicodeDecodeError:
                self.dropped["invalid-utf8"] += 1
                return
        elif len(message) > limit or (
            4 * len(message) > limit and len(message.encode("utf-8", "surrogatepass")) > limit
        ):
            self.dropped["frame-too-large"] += 1
            return
        try:
            self._on_frame(message)
        except Exception:
            logger.exception("on_frame callback raised")

    def _on_channel_close(self) -> None:
        self._channel_closed.set()
        self._writable.set()
        self._begin_close("remote-closed")

    # -- ending ----------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        if self._pc is None:
            return
        state = self._pc.connectionState
        logger.debug("connection state %s", state)
        if state == "failed":
            self._begin_close("failed")
        elif state == "closed":
            self._begin_close("remote-closed")

    def _on_open_timeout(self) -> None:
        self._timer = None
        if not self._open:
            self._begin_close("timeout")

    def _fail_during_setup(self, what: str, exc: Exception) -> None:
        if self._closing:
            return
        logger.warning("WebRTC link failed while %s: %r", what, exc)
        self._begin_close("failed")

    def _begin_close(self, reason: str) -> None:
        """Start the one shutdown of this link (later calls are no-ops)."""
        if self._close_task is not None:
            return
        self._closing = True
        self._filter.close()
        self._close_reason = reason
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_task = asyncio.get_running_loop().create_task(
            self._shutdown(reason), name="rtc-link-close"
        )

    async def _shutdown(self, reason: str) -> None:
        logger.debug("closing WebRTC link: %s", reason)
        try:
            # Let a running gather finish: closing the pc in the middle of it could
            # leave sockets that aioice binds after its close() has run.
            await self._gather_idle.wait()
            worker = self._worker
            if worker is not None and worker is not asyncio.current_task():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            channel = self._channel
            if channel is not None and channel.readyState not in ("closing", "closed"):
                channel.close()  # a stream reset: sent after the data already queued
            if channel is not None and channel.readyState != "closed" and self._open:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._channel_closed.wait(), self.config.close_timeout)
            if self._pc is not None:
                await self._pc.close()
        except Exception:
            logger.exception("error while closing WebRTC link")
        finally:
            self._open = False
            try:
                self._on_close(reason)
            except Exception:
                logger.exception("on_close callback raised")
