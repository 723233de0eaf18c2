"""PeerRelay: the asyncio node. It hosts the core on asyncio, and is the public API.

All decisions are the core's (:mod:`peer_relay.core`); this module only carries them out, through
the one pump every host shares (:mod:`peer_relay.host`): it runs the WebSocket server, dials,
moves frames, arms the core's one timer on the event loop, and calls the application's callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from picows import WSHandshakeError

from . import addresses
from .addresses import AddressLearner
from .core import Config, Core
from .errors import DeliveryError, RemoteError
from .events import (
    ConnectResult,
    Delivered,
    DeliveryResult,
    PeerLinked,
    PeerUnlinked,
    Reply,
    RequestReceived,
)
from .host import Pump, source_of
from .identity import Identity
from .ids import parse_id, short
from .randomness import PooledRandom
from .transports.signals import check_ice_servers
from .transports.websocket import WsLink, WsOptions, WsServer, dial
from .wire import is_ws_url

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .transports.rtc_adapter import OpenRtcLink, RtcAdapter

_log = logging.getLogger("peer_relay.node")

EVENTS = ("message", "peer", "peer-closed", "request")
_HELD_PER_PENDING = 32
"""Connections held before they are turned away (see ``WsOptions.hold_refused``), per inbound
handshake slot (``max_pending_links``): 1,024 by default."""
_CONFIG_FIELDS = frozenset(f.name for f in fields(Config)) - {"url", "webrtc", "require_auth"}
INBOX_WARNING_INTERVAL = 10.0
"""Seconds between two warnings that :meth:`PeerRelay.messages` dropped messages: the first drop
is logged at once, later ones add up and are logged once per interval while they go on."""


class _Link(Protocol):
    """What the node needs of an open link, WebSocket or WebRTC."""

    frames_in: int
    bytes_in: int
    frames_out: int
    bytes_out: int

    @property
    def buffered(self) -> int: ...

    def send(self, frame: bytes) -> bool: ...

    def close(self, reason: str) -> None: ...


class PeerId(bytes):
    """A 20-byte peer id as given to message callbacks; ``verified`` says if it is proven."""

    verified: bool

    def __new__(cls, value: bytes, verified: bool = True) -> PeerId:
        self = super().__new__(cls, value)
        self.verified = verified
        return self

    def __repr__(self) -> str:
        return f"PeerId({self.hex()!r}, verified={self.verified})"


class Message:
    """A received message. Unpacks as ``data, sender``; also has ``verified`` and ``hops``."""

    __slots__ = ("data", "hops", "sender", "verified")

    def __init__(self, data: Any, sender: PeerId, hops: int) -> None:
        self.data = data
        self.sender = sender
        self.verified = sender.verified
        self.hops = hops

    def __iter__(self) -> Any:
        yield self.data
        yield self.sender

    def __repr__(self) -> str:
        return f"Message(data={self.data!r}, sender={self.sender.hex()}, hops={self.hops})"


@dataclass(frozen=True, slots=True)
class BootstrapFailure:
    """Why the latest dial of a bootstrap URL failed (see :meth:`PeerRelay.bootstrap_failures`)."""

    url: str
    reason: str
    """What happened and what to do, in one line."""
    lasting: bool
    """Whether waiting cannot mend it (the connection was refused, the server is no peer of
    ours, it is a 0.0.2 peer and unsigned peers are not admitted): someone must change
    something first."""
    at: float
    """When it failed (``time.time()``)."""


class PeerRelay:
    """A peer of the relay network.

    ``port=None`` runs no server (a client-only peer, like a browser); ``port=0`` takes a free port.
    ``bootstrap`` lists WebSocket URLs of peers already in the network. ``public_url`` is the URL
    to advertise when the listening address is not what others should dial. ``identity`` is this
    peer's key (a new one by default). ``allow_unsigned`` admits peers of the original 0.0.2 and
    unsigned messages, whose senders are then marked unverified. Every other keyword is a
    :class:`~peer_relay.core.Config` limit or policy (``max_links``, ``max_frame``, ...), and
    ``max_inbox`` bounds the queue behind :meth:`messages`.

    Two peers can link directly only if one of them listens (has a ``port``) or both enable
    WebRTC (``wrtc=True``); otherwise their messages go through relays.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "0.0.0.0",
        bootstrap: Iterable[str] = (),
        public_url: str | None = None,
        identity: Identity | None = None,
        allow_unsigned: bool = False,
        wrtc: bool = False,
        ice_servers: Iterable[str] = (),
        ice_username: str | None = None,
        ice_credential: str | None = None,
        ice_host_addresses: Iterable[str] | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_inbox: int = 1024,
        max_link_buffer: int = 16 << 20,
        metrics: str | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - _CONFIG_FIELDS
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        if port is not None and not 0 <= port <= 65535:
            raise ValueError("port must be in 0..65535 or None")
        if isinstance(bootstrap, str | bytes):
            raise TypeError(
                "bootstrap must be a list of ws:// or wss:// URLs, not one string: wrap it in [...]"
            )
        if type(max_inbox) is not int or max_inbox < 1:
            raise ValueError(f"max_inbox must be a positive number of messages, got {max_inbox!r}")
        self.identity = identity or Identity.generate()
        self.id: bytes = self.identity.id
        # A peer in the original's mode (admitting unsigned peers, or not signing) sends plain.
        options.setdefault("sessions", not allow_unsigned and options.get("sign", True))
        self._config = Config(require_auth=not allow_unsigned, webrtc=wrtc, **options)
        self._port = port
        self._host = host
        self._bootstrap = list(bootstrap)
        for url in self._bootstrap:
            if type(url) is not str or not url.startswith(("ws://", "wss://")):
                raise ValueError(f"bootstrap URL must be ws:// or wss://, got {url!r}")
        self._bootstrap_urls = frozenset(self._bootstrap)
        self._bootstrap_dials: dict[int, str] = {}
        """Bootstrap dials under way or open, by link handle."""
        self._bootstrap_failed: dict[str, BootstrapFailure] = {}
        if public_url is not None and not is_ws_url(public_url):
            # It is sent to peers to dial; 0.0.2 peers crash on a URL they cannot parse.
            raise ValueError(f"public_url must be a ws:// or wss:// URL, got {public_url!r}")
        self._public_url = public_url
        if metrics is not None:
            from .metrics import parse_metrics_spec

            parse_metrics_spec(metrics)  # a bad HOST:PORT raises ValueError here, not in start()
        self._metrics_spec = metrics
        self._metrics: MetricsServer | None = None
        self._ws_options = WsOptions(
            max_frame=self._config.max_frame,
            max_buffer=max_link_buffer,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            open_timeout=self._config.link_timeout,
            accept_timeout=self._config.hello_timeout,
            hold_refused=0.8 * self._config.hello_timeout,
            max_held=_HELD_PER_PENDING * self._config.max_pending_links,
        )
        self._wrtc = wrtc
        self._ice_servers = check_ice_servers(ice_servers, ice_username, ice_credential)
        self._ice_username = ice_username
        self._ice_credential = ice_credential
        self._ice_host_addresses = None if ice_host_addresses is None else tuple(ice_host_addresses)
        self._learner: AddressLearner | None = None
        self._rtc: RtcAdapter | None = None
        self._max_inbox = max_inbox
        self._core: Core | None = None
        self._pump: Pump | None = None
        self._server: WsServer | None = None
        self._links: dict[int, _Link] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._listeners: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}
        self._connect_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        """Deliveries and requests waiting for their outcome, by token."""
        self._inbox: asyncio.Queue[Message | None] | None = None
        """What :meth:`messages` reads; None, put last when this peer is destroyed, ends it."""
        self._inbox_ended = False
        self._inbox_unreported = 0
        """Messages dropped from the inbox since the last warning."""
        self._inbox_warning: asyncio.TimerHandle | None = None
        self._node_drops: Counter[str] = Counter()
        self._link_ready: asyncio.Event | None = None
        self._starting: asyncio.Future[None] | None = None
        self._destroyed = False
        self.url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> PeerRelay:
        """Start the server (if a port was given) and dial the bootstrap peers.

        Safe to call concurrently (every caller returns once the peer runs) and to call again
        after a failure (a port in use, say).
        """
        if self._destroyed:
            raise RuntimeError("this peer has been destroyed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        starting = self._starting
        try:
            await asyncio.shield(starting)
        except BaseException:
            if starting.done() and self._starting is starting:
                self._starting = None
            raise
        return self

    async def _start(self) -> None:
        self._link_ready = asyncio.Event()
        if self._metrics_spec is not None and self._metrics is None:
            from .metrics import start_metrics

            self._metrics = await start_metrics(self, self._metrics_spec)
        if self._port is not None:
            server = WsServer(self._accepted, self._admits, self._upgrading, self._ws_options)
            await server.start(self._host, self._port)
            self._server = server
            self.url = self._public_url or self._choose_url(server)
        else:
            self.url = self._public_url
        self._core = Core(
            self.identity,
            Config(**{**_config_dict(self._config), "url": self.url}),
            rng=PooledRandom(),
            now=time.time(),
        )
        self._pump = Pump(self._core, _NodeHost(self))
        if self._wrtc:
            self._rtc = self._webrtc_adapter()
        self._core.bootstrap(self._bootstrap, time.time())
        self._flush()
        _log.info("peer %s started, url %s", short(self.id), self.url)

    def _choose_url(self, server: WsServer) -> str:
        """The URL others should dial: the real bound port, and a real address (see
        :mod:`peer_relay.addresses`; never a loopback address while another exists)."""
        port = server.port
        if self._host not in ("", "0.0.0.0", "::"):
            return addresses.url_for(self._host, port)
        learner = AddressLearner(port, addresses.interface_addresses(), ipv6=self._host == "::")
        self._learner = learner
        if learner.fallback:
            _warn_loopback_once(learner.url)
        return learner.url

    def _heard_address(self, claimed: str | None, reporter: str | None) -> None:
        """A remote says we are reachable at ``claimed``: adopt it once enough agree, while
        we advertise a loopback fallback."""
        learner = self._learner
        if learner is None or not learner.fallback or self._core is None:
            return
        url = learner.heard(claimed, reporter)
        if url is not None:
            self.url = url
            self._core.set_url(url)

    async def destroy(self) -> None:
        """Close every link and the server; idempotent; returns once all are closed."""
        if self._destroyed:
            return
        self._destroyed = True
        if self._core is not None:
            self._core.close(time.time())
            self._flush()
        if self._timer is not None:
            self._timer.cancel()
        if self._inbox_warning is not None:
            self._inbox_warning.cancel()
            self._report_inbox_drops()
        if self._rtc is not None:
            await self._rtc.close()
        ws_links = [link for link in self._links.values() if isinstance(link, WsLink)]
        for link in list(self._links.values()):
            link.close("shutdown")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if ws_links:
            await asyncio.wait(
                [asyncio.ensure_future(link.wait_closed()) for link in ws_links],
                timeout=self._ws_options.close_timeout,
            )
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._ws_options.close_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for target, waiters in self._connect_waiters.items():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(self._connect_error(target, "shutdown"))
        self._connect_waiters.clear()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(DeliveryError("this peer was destroyed before an answer came"))
        self._waiting.clear()
        if self._inbox is not None and not self._inbox_ended:
            self._inbox_ended = True
            self._inbox.put_nowait(None)
        if self._metrics is not None:
            await self._metrics.close()
        _log.info("peer %s destroyed", short(self.id))

    async def __aenter__(self) -> PeerRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()

    # ------------------------------------------------------------------ public API

    @property
    def peers(self) -> list[bytes]:
        """Ids of the peers this one is directly linked to."""
        return [] if self._core is None else self._core.peers

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: frames and bytes in and out, delivered, relayed, drops by reason, links.

        ``stats["dropped"]`` counts what was dropped, by reason: among them ``inbox-full``,
        messages :meth:`messages` dropped because ``max_inbox`` of them waited unread.
        """
        if self._core is None:
            return {}
        out = self._core.stats.as_dict()
        dropped: Counter[str] = Counter(out["dropped"])
        dropped.update(self._node_drops)
        out["dropped"] = dict(dropped)
        out["links_open"] = len(self._core.peers)
        return out

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Every bounded structure's size now, next to its limit: the core's (see
        :meth:`peer_relay.core.Core.bounds`) and this node's: ``inbox`` (messages waiting in
        :meth:`messages`), ``host_links`` (links carrying frames, open or closing),
        ``rtc_links`` (WebRTC links not yet closed) and ``held_upgrades`` (upgrade requests
        from addresses over their handshake budget, held before they are turned away)."""
        if self._core is None:
            return {}
        out = self._core.bounds()
        cfg = self._config
        inbox = 0 if self._inbox is None else self._inbox.qsize() - (1 if self._inbox_ended else 0)
        out["inbox"] = (inbox, self._max_inbox)
        out["host_links"] = (len(self._links), 2 * cfg.max_links + cfg.max_pending_links)
        rtc = 0 if self._rtc is None else len(self._rtc.links)
        out["rtc_links"] = (rtc, cfg.max_links + cfg.max_pending_links)
        held = 0 if self._server is None else self._server.held
        out["held_upgrades"] = (held, self._ws_options.max_held)
        return out

    def inspect(self) -> dict[str, Any]:
        """Whom this peer deals with now (see :meth:`peer_relay.core.Core.inspect`), and the
        ICE servers its WebRTC links use. An open link also shows its ``traffic``: messages and
        their bytes read and sent on it (``frames_in``, ``bytes_in``, ``frames_out``,
        ``bytes_out``)."""
        if self._core is None:
            return {}
        readout = {**self._core.inspect(), "ice_servers": list(self._ice_servers)}
        for link in readout["links"]:
            carrier = self._links.get(link["handle"])
            if carrier is not None:
                link["traffic"] = {
                    "frames_in": carrier.frames_in,
                    "bytes_in": carrier.bytes_in,
                    "frames_out": carrier.frames_out,
                    "bytes_out": carrier.bytes_out,
                }
        if self._learner is not None:
            readout["address"] = self._learner.readout()
        return readout

    @property
    def metrics(self) -> MetricsServer | None:
        """The server of ``metrics="HOST:PORT"`` once started (``.url``, ``.port``), else None."""
        return self._metrics

    @property
    def config(self) -> Config:
        """The limits and policies in force."""
        return self._config

    def link_transport(self, peer_id: object) -> str | None:
        """``"ws"`` or ``"webrtc"`` for a directly linked peer, else None."""
        return None if self._core is None else self._core.link_transport(parse_id(peer_id))

    def send(self, peer_id: object, data: Any) -> None:
        """Send ``data`` (JSON: I-JSON numbers, string keys) to ``peer_id``; returns at once.

        Raises ``ValueError``/``TypeError`` at once for a malformed id or payload.
        """
        core = self._require_core()
        core.send(peer_id, data, time.time())
        self._flush()

    async def deliver(self, peer_id: object, data: Any, timeout: float = 10.0) -> None:
        """Send ``data`` to ``peer_id``, end to end encrypted, and return once its receipt,
        signed by the destination's session, is back. Late receipts make it send again over
        other first hops (a relay that loses messages is routed around).

        Raises ``DeliveryError`` (a ``ConnectionError``) after ``timeout`` seconds without a
        receipt, saying why; ``ValueError``/``TypeError`` at once for a bad id, payload or
        timeout.
        """
        core = self._require_core()
        token = core.deliver(peer_id, data, time.time(), timeout)
        started = time.monotonic()
        await self._outcome(token)
        if self._metrics is not None:
            self._metrics.observe_delivery(time.monotonic() - started, "deliver")

    async def request(self, peer_id: object, data: Any, timeout: float = 10.0) -> Any:
        """Send ``data`` to the request handler of ``peer_id`` (see :meth:`on`) and return its
        reply. The handler runs at most once however often the request is sent again.

        Raises ``RemoteError`` with the handler's message if it failed, ``DeliveryError``
        when no reply came within ``timeout`` seconds, ``ValueError``/``TypeError`` at once for
        a bad id, payload or timeout.
        """
        core = self._require_core()
        token = core.request(peer_id, data, time.time(), timeout)
        started = time.monotonic()
        reply = await self._outcome(token)
        if self._metrics is not None:
            self._metrics.observe_delivery(time.monotonic() - started, "request")
        return reply

    async def _outcome(self, token: int) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        self._flush()
        try:
            return await fut
        finally:
            self._waiting.pop(token, None)

    async def drain(self, low_water: int = 1 << 20) -> None:
        """Wait until every link's send buffer is below ``low_water`` bytes, and no message
        waits for a session to open (flow control)."""
        core = self._core
        while any(link.buffered > low_water for link in self._links.values()) or (
            core is not None and not self._destroyed and core.waiting()
        ):
            await asyncio.sleep(0.001)

    async def connect(self, peer_id: object, timeout: float | None = None) -> None:
        """Form a direct link to ``peer_id`` through a relayed handshake.

        One of the two peers must listen (have a ``port``), or both must enable WebRTC
        (``wrtc=True``). Raises ``ConnectionError`` when the link cannot open (the message says
        why and what to try), ``TimeoutError`` when it has not opened within ``timeout`` seconds
        (by default the ``connect_timeout`` limit), ``ValueError``/``TypeError`` at once for a
        bad id or timeout.
        """
        core = self._require_core()
        target = parse_id(peer_id)
        if timeout is not None and not (type(timeout) in (int, float) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connect_waiters.setdefault(target, []).append(fut)
        core.connect(target, time.time())
        self._flush()
        wait = timeout if timeout is not None else self._config.connect_timeout + 1.0
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            if fut.done():
                raise  # the core's attempt timed out: its own message
            raise TimeoutError(
                f"connect to {short(target)}: no direct link within {wait:g}s (the timeout "
                f"given); the attempt goes on for up to connect_timeout "
                f"({self._config.connect_timeout:g}s): wait longer, or check the peer is online"
            ) from None
        finally:
            waiters = self._connect_waiters.get(target, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._connect_waiters.pop(target, None)

    def disconnect(self, peer_id: object) -> bool:
        """Close the direct link to ``peer_id``; return whether there was one."""
        core = self._require_core()
        closed = core.disconnect(peer_id, time.time())
        self._flush()
        return closed

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event``: ``message(data, sender)``, ``peer(id)``,
        ``peer-closed(id, reason)``. Coroutine functions are run as tasks; exceptions are logged.

        ``request`` sets the request handler (the last one set answers): ``handler(data,
        sender)`` returns or awaits the reply (JSON); what it raises reaches the caller as a
        ``RemoteError`` with its message. Without a handler, requests fail with one saying so.
        """
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._listeners[event].append(callback)

    def off(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event``."""
        with contextlib.suppress(KeyError, ValueError):
            self._listeners[event].remove(callback)

    def messages(self) -> AsyncIterator[Message]:
        """Messages addressed to this peer, as they arrive: ``async for data, sender in ...``.

        Messages are kept from the first call on (earlier ones are not); the iteration ends
        once this peer is destroyed and what was kept has been read. When ``max_inbox`` wait
        unread, each new one drops the oldest: a warning is logged (at once, then at most once
        every :data:`INBOX_WARNING_INTERVAL` seconds, with the count since the last one), and
        ``stats["dropped"]["inbox-full"]`` counts them all. Read faster, or raise
        ``max_inbox``; :meth:`deliver` tells the sender when a message arrived.
        """
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            if self._destroyed:
                self._inbox_ended = True
                self._inbox.put_nowait(None)
        return self._read_inbox(self._inbox)

    async def _read_inbox(self, inbox: asyncio.Queue[Message | None]) -> AsyncIterator[Message]:
        while (message := await inbox.get()) is not None:
            yield message
        inbox.put_nowait(None)  # the end, for every other reader too

    def bootstrap_failures(self) -> list[BootstrapFailure]:
        """The bootstrap URLs whose latest dial failed, and why, in the order given (a URL
        dialled again, or that led to a link, is not listed).

        While this peer has no link, it dials them again after ``bootstrap_retry`` seconds,
        then after twice that each time, up to a minute (see :mod:`peer_relay.core.bootstrap`).
        """
        dialling = set(self._bootstrap_dials.values())
        return [
            failure
            for url in dict.fromkeys(self._bootstrap)
            if (failure := self._bootstrap_failed.get(url)) is not None and url not in dialling
        ]

    async def wait_for_peers(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` direct links are open; raise ``TimeoutError`` (with
        the bootstrap peers' failures, if any) after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.peers) < count:
            if asyncio.get_running_loop().time() > deadline:
                why = "".join(f"; {f.url}: {f.reason}" for f in self.bootstrap_failures())
                raise TimeoutError(f"{len(self.peers)} of {count} links open after {timeout}s{why}")
            assert self._link_ready is not None
            self._link_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._link_ready.wait(), 0.5)

    def __repr__(self) -> str:
        return f"PeerRelay(id={self.id.hex()}, url={self.url!r}, links={len(self.peers)})"

    # ------------------------------------------------------------------ the pump

    def _require_core(self) -> Core:
        if self._destroyed:
            raise RuntimeError("this peer has been destroyed")
        if self._core is None:
            raise RuntimeError("call 'await peer.start()' (or use 'async with') first")
        return self._core

    def _flush(self) -> None:
        """Carry out everything the core asked for, then re-arm its timer (the one pump)."""
        if self._pump is not None:
            self._pump.drive()

    def _set_timer(self, when: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None and not self._destroyed:
            delay = max(0.0, when - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pump is not None and not self._destroyed:
            self._pump.timer_fired()

    def _peer_linked(self, event: PeerLinked) -> None:
        _log.info("%s linked to %s (%s)", short(self.id), short(event.peer_id), event.transport)
        if self._link_ready is not None:
            self._link_ready.set()
        if self._metrics is not None:
            self._metrics.observe_handshake(event.handshake, event.transport)
        self._emit("peer", PeerId(event.peer_id, event.authenticated))

    def _peer_unlinked(self, event: PeerUnlinked) -> None:
        _log.info("%s unlinked %s: %s", short(self.id), short(event.peer_id), event.reason)
        self._emit("peer-closed", PeerId(event.peer_id), event.reason)

    def _connect_result(self, event: ConnectResult) -> None:
        for fut in self._connect_waiters.get(event.peer_id, []):
            if not fut.done():
                if event.ok:
                    fut.set_result(None)
                else:
                    fut.set_exception(self._connect_error(event.peer_id, event.reason))

    def _connect_error(self, target: bytes, reason: str) -> OSError:
        """What :meth:`connect` raises when the core's attempt ended for ``reason``."""
        who = f"connect to {short(target)}"
        if reason == "timeout":
            if self.url is None and not self._wrtc:
                hint = (
                    "this peer cannot be dialled (no port, no WebRTC), so the other must "
                    "listen (a port) or both must enable WebRTC (wrtc=True)"
                )
            else:
                hint = "check that it is online and that it can reach this peer or be reached"
            return TimeoutError(
                f"{who}: no direct link within connect_timeout "
                f"({self._config.connect_timeout:g}s): it did not answer, or the link it "
                f"answered with did not open; {hint}"
            )
        if reason == "unreachable":
            return ConnectionError(
                f"{who}: neither peer can reach the other: one of them must listen (a port) or "
                "both must enable WebRTC (wrtc=True)"
            )
        if reason in ("link-limit", "bucket-full"):
            return ConnectionError(
                f"{who}: this peer has no room for another link ({reason}): raise max_links "
                f"({self._config.max_links}) or disconnect() a peer"
            )
        if reason == "shutdown":
            return ConnectionError(f"{who}: this peer was destroyed before the link opened")
        return ConnectionError(f"{who} failed: {reason}")

    def _deliver(self, event: Delivered) -> None:
        sender = PeerId(event.sender, event.verified)
        inbox = self._inbox
        if inbox is not None and not self._inbox_ended:
            if inbox.qsize() >= self._max_inbox:
                inbox.get_nowait()
                self._inbox_dropped()
            inbox.put_nowait(Message(event.data, sender, event.hops))
        self._emit("message", event.data, sender)

    def _inbox_dropped(self) -> None:
        self._node_drops["inbox-full"] += 1
        self._inbox_unreported += 1
        if self._inbox_warning is None:
            self._report_inbox_drops()

    def _report_inbox_drops(self) -> None:
        """Warn of the messages dropped since the last warning, if any, and of those to come
        only after :data:`INBOX_WARNING_INTERVAL` seconds."""
        count, self._inbox_unreported = self._inbox_unreported, 0
        self._inbox_warning = None
        if not count:
            return
        _log.warning(
            "peer %s dropped %d message%s from messages(): %d waited unread (max_inbox); "
            "read them faster or raise max_inbox (all drops: stats['dropped']['inbox-full'])",
            short(self.id),
            count,
            "" if count == 1 else "s",
            self._max_inbox,
        )
        if not self._destroyed:
            loop = asyncio.get_running_loop()
            self._inbox_warning = loop.call_later(INBOX_WARNING_INTERVAL, self._report_inbox_drops)

    def _delivery_result(self, event: DeliveryResult) -> None:
        fut = self._waiting.get(event.token)
        if fut is not None and not fut.done():
            if event.ok:
                fut.set_result(None)
            else:
                fut.set_exception(DeliveryError(f"not delivered: {event.reason}"))

    def _reply(self, event: Reply) -> None:
        fut = self._waiting.get(event.token)
        if fut is None or fut.done():
            return
        if event.ok:
            fut.set_result(event.value)
        elif event.remote:
            fut.set_exception(RemoteError(event.error))
        else:
            fut.set_exception(DeliveryError(f"no reply: {event.error}"))

    def _request_received(self, event: RequestReceived) -> None:
        handlers = self._listeners["request"]
        sender = PeerId(event.sender)
        if not handlers:
            self._respond(event.token, None, f"no request handler at {short(self.id)}")
            return
        self._spawn(self._handle_request(handlers[-1], event.token, event.data, sender))

    async def _handle_request(
        self, handler: Callable[..., Any], token: int, data: Any, sender: PeerId
    ) -> None:
        try:
            reply = handler(data, sender)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception as exc:
            self._respond(token, None, str(exc) or type(exc).__name__)
            return
        self._respond(token, reply, None)

    def _respond(self, token: int, value: Any, error: str | None) -> None:
        core = self._core
        if core is None or self._destroyed:
            return
        try:
            core.respond(token, value, time.time(), error)
        except (ValueError, TypeError) as exc:
            _log.warning("the request handler's reply cannot be sent: %s", exc)
            core.respond(token, None, time.time(), f"the handler's reply cannot be sent: {exc}")
        self._flush()

    def _emit(self, name: str, *args: Any) -> None:
        for callback in list(self._listeners[name]):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    self._spawn(_logged(result, name))
            except Exception:
                _log.exception("%s callback failed", name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ WebSocket links

    def _admits(self, remote_ip: str) -> bool:
        """Whether a new connection from ``remote_ip`` may start a handshake now. One from an
        address that holds all the handshakes it may is held, unread, and then refused (see
        ``WsOptions.hold_refused``)."""
        core = self._core
        if core is None or not remote_ip or core.admits(source_of(remote_ip)):
            return True
        self._node_drops["too-many-pending-source"] += 1
        return False

    def _upgrading(self, link: WsLink, request: Any) -> None:
        """An upgrade request arrived: a peer on a loopback-only view of itself learns its
        address from the ``Host`` its dialers used."""
        if self._learner is not None and self._learner.fallback and link.remote_ip:
            claimed = addresses.url_from_host_header(link.request_host)
            self._heard_address(claimed, link.remote_ip)

    def _accepted(self, link: WsLink) -> None:
        core = self._core
        if self._destroyed or core is None:
            link.abort("shutting down")
            return
        source = source_of(link.remote_ip) if link.remote_ip else None
        handle = core.link_accepted(time.time(), "ws", source)
        if not core.has_link(handle):
            # Refused at once (the handshake budgets were spent): no closing handshake, which
            # an idle attacker would never answer and which would hold the socket for seconds.
            link.abort("refused")
            self._flush()
            return
        self._bind(handle, link)

    async def _dial(self, handle: int, url: str) -> None:
        try:
            link = await dial(url, self._ws_options)
        except Exception as exc:
            url_dialled = self._bootstrap_dials.pop(handle, None)
            if url_dialled is not None and not self._destroyed:
                self._bootstrap_dial_failed(url_dialled, *self._dial_failure(exc))
            if self._core is not None:
                self._core.link_closed(handle, time.time(), f"dial failed: {exc!r}"[:200])
                self._flush()
            return
        if self._destroyed or self._core is None:
            link.close("shutting down")
            return
        if self._learner is not None and self._learner.fallback:
            self._heard_address(
                addresses.url_from_observed(link.observed, self._learner.port), link.remote_ip
            )
        self._core.link_connected(handle, time.time())
        self._bind(handle, link)

    def _bind(self, handle: int, link: WsLink) -> None:
        """Make ``link`` carry link ``handle``'s frames, from and to the core."""
        core = self._core
        assert core is not None
        flush = self._flush

        def on_frame(frame: bytes) -> None:
            core.frame_received(handle, frame, time.time())
            flush()

        def on_close(reason: str) -> None:
            self._link_gone(handle, reason)
            flush()

        self._links[handle] = link
        # The core may have queued the hello before the link object existed.
        flush()
        link.bind(on_frame, on_close)

    def _link_gone(self, handle: int, reason: str) -> None:
        """WebSocket link ``handle`` ended on the remote's side (or broke): tell the core."""
        core = self._core
        assert core is not None
        self._links.pop(handle, None)
        url = self._bootstrap_dials.pop(handle, None)
        linked = len(core.peers)
        core.link_closed(handle, time.time(), reason)
        if url is not None and len(core.peers) == linked and not self._destroyed:
            # A bootstrap link that closed before it opened.
            self._bootstrap_refused(url, reason)

    # ------------------------------------------------------------------ bootstrap failures

    def _bootstrap_refused(self, url: str, reason: str) -> None:
        """A bootstrap link closed in its handshake, for the core's or the remote's
        ``reason``."""
        failure = _handshake_failure(reason)
        if failure is not None:
            self._bootstrap_dial_failed(url, *failure)

    def _dial_failure(self, exc: Exception) -> tuple[str, bool]:
        """Why a dial failed, in a line that says what to do, and whether it lasts."""
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused: nothing listens there (is the peer running?)", True
        if isinstance(exc, socket.gaierror):
            return (
                f"cannot resolve its host name ({exc.strerror}): check the URL",
                exc.errno != socket.EAI_AGAIN,
            )
        if isinstance(exc, TimeoutError):
            wait = self._ws_options.open_timeout
            return f"no answer within {wait:g}s: is the host up, its port open?", False
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed ({exc.reason or exc}): does it serve wss:// there?", True
        if isinstance(exc, WSHandshakeError):
            return f"not a WebSocket server ({exc}): check the URL's port and path", True
        if isinstance(exc, OSError):
            return f"cannot connect ({exc.strerror or exc}): check the network and the URL", False
        return f"dial failed: {exc!r}"[:200], False

    def _bootstrap_dial_failed(self, url: str, reason: str, lasting: bool) -> None:
        self._bootstrap_failed[url] = BootstrapFailure(url, reason, lasting, time.time())
        _log.info("%s: bootstrap %s failed: %s", short(self.id), url, reason)

    # ------------------------------------------------------------------ WebRTC links

    def _webrtc_adapter(self) -> RtcAdapter:
        from .transports.rtc_adapter import RtcAdapter
        from .transports.webrtc import RTCConfig

        config = RTCConfig(
            ice_servers=self._ice_servers,
            ice_username=self._ice_username,
            ice_credential=self._ice_credential,
            host_addresses=self._ice_host_addresses,
            open_timeout=self._config.connect_timeout,
            max_frame=self._config.max_frame,
            # The same send buffer as a WebSocket link (max_link_buffer): a burst that one
            # absorbs must not make the other fail its sends and close.
            max_buffered=self._ws_options.max_buffer,
        )
        return RtcAdapter(
            config,
            on_signal=self._rtc_signal,
            on_open=self._rtc_open,
            on_frame=self._rtc_frame,
            on_close=self._rtc_close,
        )

    def _rtc_signal(self, handle: int, signal: dict[str, Any]) -> None:
        if self._core is not None:
            self._core.send_signal(handle, signal, time.time())
            self._flush()

    def _rtc_open(self, handle: int, link: OpenRtcLink) -> None:
        self._links[handle] = link
        if self._core is not None:
            self._core.link_connected(handle, time.time())
            self._flush()

    def _rtc_frame(self, handle: int, frame: str) -> None:
        link = self._links.get(handle)
        if link is not None:
            link.frames_in += 1
            link.bytes_in += len(frame.encode())
        if self._core is not None:
            self._core.frame_received(handle, frame, time.time())
            self._flush()

    def _rtc_close(self, handle: int, reason: str) -> None:
        self._links.pop(handle, None)
        if self._core is not None:
            with contextlib.suppress(Exception):
                self._core.link_closed(handle, time.time(), f"webrtc {reason}")
                self._flush()


class _NodeHost:
    """The node's side of the one pump (:class:`~peer_relay.host.Host`): asyncio and real links."""

    __slots__ = ("_peer",)

    def __init__(self, peer: PeerRelay) -> None:
        self._peer = peer

    def now(self) -> float:
        return time.time()

    def set_timer(self, when: float | None) -> None:
        self._peer._set_timer(when)

    def send_frame(self, handle: int, frame: bytes) -> bool:
        # False when the link is closing, gone or full: the core re-routes the frame.
        link = self._peer._links.get(handle)
        if link is None:
            return False
        if link.send(frame):
            return True
        if isinstance(link, WsLink) and link.closing:
            # The core sends only on links it has not closed: the remote closed this one, and
            # its end is yet to be reported. Report it now, or the core would close the link
            # for "send failed" and make a normal close look like a failure.
            self._peer._link_gone(handle, "remote closed")
        return False

    def close_link(self, handle: int, reason: str) -> None:
        peer = self._peer
        link = peer._links.get(handle)
        url = peer._bootstrap_dials.pop(handle, None)
        never_opened = peer._core is not None and not peer._core.has_link(handle)
        if url is not None and never_opened and not peer._destroyed:
            peer._bootstrap_refused(url, reason)
        if isinstance(link, WsLink) and never_opened:
            # It never opened (the core forgot it already): no closing handshake to wait for,
            # and nothing more to carry.
            peer._links.pop(handle, None)
            link.abort(reason)
        elif link is not None:
            link.close(reason)
        elif peer._rtc is not None:
            peer._rtc.close_link(handle, reason)

    def dial_websocket(self, handle: int, url: str, expected_id: bytes | None) -> None:
        peer = self._peer
        if expected_id is None and url in peer._bootstrap_urls:
            peer._bootstrap_dials[handle] = url
            peer._bootstrap_failed.pop(url, None)
        peer._spawn(peer._dial(handle, url))

    def start_webrtc(self, handle: int, peer_id: bytes, initiator: bool) -> None:
        if self._peer._rtc is not None:
            self._peer._rtc.start(handle, initiator)

    def signal_in(self, handle: int, signal: Any) -> None:
        if self._peer._rtc is not None:
            self._peer._rtc.add_signal(handle, signal)

    def delivered(self, event: Delivered) -> None:
        self._peer._deliver(event)

    def peer_linked(self, event: PeerLinked) -> None:
        self._peer._peer_linked(event)

    def peer_unlinked(self, event: PeerUnlinked) -> None:
        self._peer._peer_unlinked(event)

    def connect_result(self, event: ConnectResult) -> None:
        self._peer._connect_result(event)

    def delivery_result(self, event: DeliveryResult) -> None:
        self._peer._delivery_result(event)

    def request_received(self, event: RequestReceived) -> None:
        self._peer._request_received(event)

    def reply(self, event: Reply) -> None:
        self._peer._reply(event)


async def _logged(awaitable: Any, name: str) -> None:
    try:
        await awaitable
    except Exception:
        _log.exception("%s callback failed", name)


_loopback_warned = False


def _warn_loopback_once(url: str) -> None:
    global _loopback_warned
    if not _loopback_warned:
        _loopback_warned = True
        _log.warning(
            "this host has no address but loopback: peers on other hosts cannot dial %s; "
            "pass public_url (--public-url) with an address they can reach",
            url,
        )


_HANDSHAKE_FAILURES: dict[str, tuple[str, bool]] = {
    "unauthenticated-peer": (
        "it is a peer of the original 0.0.2, which cannot prove its id, and unsigned peers are "
        "not admitted: admit them with allow_unsigned=True (--allow-unsigned)",
        True,
    ),
    "self-link": ("it is this peer itself: bootstrap from another peer", True),
    "handshake-timeout": (
        "it took the connection but did not finish the handshake in time: is it a peer-relay "
        "peer, and is it overloaded?",
        False,
    ),
}


def _handshake_failure(reason: str) -> tuple[str, bool] | None:
    """Why a link closed in its handshake, in a line that says what to do, and whether that
    lasts; None for a close that is no failure."""
    if reason in ("shutdown", "duplicate", "superseded"):
        return None  # closing down, or linked to that peer already
    known = _HANDSHAKE_FAILURES.get(reason)
    if known is not None:
        return known
    if reason.startswith(("bad-handshake", "bad-hello", "bad-proof", "key-mismatch")):
        return f"its handshake is not ours ({reason}): is it a peer-relay peer?", True
    if reason in ("link-limit", "bucket-full"):
        return f"this peer has no room for the link ({reason})", False
    if reason.startswith("remote closed"):
        return f"it closed the connection in the handshake ({reason}): full, or stopping?", False
    return reason, False


def _config_dict(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}
