"""Datagrams over the relay: UDP-style programs addressed by peer id and port.

Two faces over one per-peer demultiplexer (:class:`DatagramMux`):

* :class:`Socket`, the original's dgram-like ``PeerRelay.Socket`` in Python (``bind``, ``send``,
  ``close``, ``address`` and the ``message``/``error``/``close``/``listening`` events);
* :func:`create_datagram_endpoint`, the asyncio form: a real :class:`asyncio.DatagramTransport`
  whose addresses are ``(peer_id_hex, port)``, so existing datagram protocols run unchanged.

A datagram is a ``user`` message in exactly the shape a 0.0.2 ``Socket`` sends::

    {"buffer": {"type": "Buffer", "data": [0, 1, ...]}, "address": "<sender id hex>",
     "port": <sender's port>, "dport": <destination port>}

``dport`` is ours (0.0.2 ignores it and never sends it); a datagram without it, as every 0.0.2
Socket sends, goes to the socket bound first on the receiving peer. Everything here must run on
the event loop of the underlying :class:`~peer_relay.node.PeerRelay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import random
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypeVar

from .ids import ID_HEX, parse_id, short
from .node import PeerId, PeerRelay

__all__ = [
    "FAMILY",
    "UDP_MAX_PAYLOAD",
    "DatagramMux",
    "DatagramTooLargeError",
    "RelayDatagramTransport",
    "Socket",
    "SocketClosedError",
    "create_datagram_endpoint",
    "datagram_mux",
    "is_datagram",
    "max_datagram_size",
]

_log = logging.getLogger("peer_relay.socket")

FAMILY: Final = "peer-relay"
"""The ``family`` of every address: what ``address()`` and ``rinfo`` report."""

UDP_MAX_PAYLOAD: Final = 65_507
"""Largest UDP/IPv4 payload; the default datagram limit when the frame limit allows it."""

ENVELOPE_RESERVE: Final = 4096
"""Bytes of a frame kept for everything but the datagram's bytes, at worst ~2.5 KB: ids as
Buffer JSON (0.0.2 relays rewrite them so), a full 20-hop path and route hint, a 128-character
nonce, the signature, and the datagram's ``address``/``port``/``dport``."""

BYTE_CHARS: Final = 4
"""Characters one byte takes at most in Buffer JSON: ``255,``."""

LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
"""Addresses that mean "this peer" (the analogue of sending to localhost)."""

_EPHEMERAL: Final = (49152, 65535)
_EVENTS: Final = ("message", "error", "close", "listening")

BufferLike = bytes | bytearray | memoryview
Address = tuple[str, int]
SendCallback = Callable[[BaseException | None], object]
_P = TypeVar("_P", bound=asyncio.DatagramProtocol)


class DatagramTooLargeError(ValueError):
    """A datagram is larger than the socket's ``max_datagram``."""


class SocketClosedError(RuntimeError):
    """The socket or transport is closed (or its peer is gone)."""


SEALED_RESERVE: Final = 512
"""Bytes of a sealed datagram's JSON apart from its bytes (``address``, ``port``, ``dport``,
the Buffer JSON's keys), and of the session's header, message header and tag."""


def max_datagram_size(max_frame: int, sealed: bool = False) -> int:
    """The largest datagram whose frame stays within ``max_frame`` bytes on every hop; when
    ``sealed`` (sent through a session, as by default), its JSON travels in base64."""
    room = max_frame - ENVELOPE_RESERVE
    if sealed:
        room = room * 3 // 4 - SEALED_RESERVE
    return max(0, room // BYTE_CHARS)


def is_datagram(data: object) -> bool:
    """Whether a ``user`` message's data is (meant to be) a datagram rather than a plain message.

    Datagrams are objects with a ``buffer`` key, or with both ``address`` and ``port``.
    """
    return type(data) is dict and ("buffer" in data or ("address" in data and "port" in data))


def _check_port(port: object, what: str = "port") -> int:
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"{what} must be an int in 0..65535, got {port!r}")
    return port


def _parse_buffer(value: object) -> bytes | str:
    """Buffer JSON to bytes, or the drop reason."""
    if type(value) is not dict or value.get("type") != "Buffer":
        return "bad-buffer"
    items = value.get("data")
    if type(items) is not list:
        return "bad-buffer"
    if items and not set(map(type, items)) <= {int}:
        return "bad-bytes"
    try:
        return bytes(items)
    except ValueError:
        return "bad-bytes"


class _Endpoint(Protocol):
    """What the mux delivers to: a bound Socket or transport."""

    max_datagram: int

    def _datagram(self, data: bytes, addr: Address) -> None: ...


class DatagramMux:
    """The datagram side of one :class:`PeerRelay`: its bound ports and its counters.

    Get it with :func:`datagram_mux`. It listens to the peer's ``message`` event and hands each
    datagram to the endpoint bound to its ``dport``. Plain (non-datagram) messages are left
    alone: they reach the peer's own listeners as usual, as do datagrams (the node has no way
    to consume a message; use :func:`is_datagram` to skip them there).
    """

    def __init__(self, peer: PeerRelay) -> None:
        self._peer_ref = weakref.ref(peer)
        self.id_hex = peer.id.hex()
        self._bindings: dict[int, _Endpoint] = {}
        self._start: asyncio.Task[PeerRelay] | None = None
        self.sent = 0
        """Datagrams handed to the peer."""
        self.received = 0
        """Datagram messages that arrived (before any check)."""
        self.delivered = 0
        """Datagrams given to a socket or protocol."""
        self.dropped: Counter[str] = Counter()
        """Dropped datagrams by reason: ``unbound-port``, ``oversize``, ``bad-buffer``,
        ``bad-bytes``, ``bad-port``, ``bad-address``, ``not-connected``."""
        peer.on("message", self._on_message)

    @property
    def peer(self) -> PeerRelay:
        """The peer; raises :class:`SocketClosedError` once it has been garbage collected."""
        peer = self._peer_ref()
        if peer is None:
            raise SocketClosedError("the peer is gone")
        return peer

    @property
    def ports(self) -> list[int]:
        """The bound ports, the default one (for datagrams without ``dport``) first."""
        return list(self._bindings)

    @property
    def stats(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {
            "sent": self.sent,
            "received": self.received,
            "delivered": self.delivered,
            "dropped": dict(self.dropped),
            "ports": self.ports,
        }

    # ---------------------------------------------------------------- ports

    def check_free(self, port: int | None) -> None:
        """Raise ``OSError(EADDRINUSE)`` if ``port`` is bound already (None/0: any port)."""
        if port and port in self._bindings:
            raise OSError(errno.EADDRINUSE, f"port {port} is already bound on this peer")

    def bind(self, endpoint: _Endpoint, port: int | None) -> int:
        """Reserve ``port`` (None or 0: a free ephemeral one) for ``endpoint``; return it."""
        if port is not None:
            _check_port(port)
        self.check_free(port)
        if not port:
            low, high = _EPHEMERAL
            if len(self._bindings) > (high - low) // 2:
                raise OSError(errno.EADDRINUSE, "no free ephemeral port on this peer")
            port = random.randint(low, high)
            while port in self._bindings:
                port = random.randint(low, high)
        self._bindings[port] = endpoint
        return port

    def unbind(self, port: int, endpoint: _Endpoint) -> None:
        """Release ``port`` if ``endpoint`` holds it."""
        if self._bindings.get(port) is endpoint:
            del self._bindings[port]

    async def started(self) -> PeerRelay:
        """Start the peer once (however many sockets ask) and return it."""
        if self._start is None:
            self._start = asyncio.ensure_future(self.peer.start())
        return await asyncio.shield(self._start)

    async def start_settled(self) -> None:
        """Wait for a start in progress to succeed or fail (without raising)."""
        if self._start is not None:
            await asyncio.wait([self._start])

    # ---------------------------------------------------------------- traffic

    def send(self, data: bytes, src_port: int, to: bytes, dport: int) -> None:
        """Send one datagram; raises what ``PeerRelay.send`` raises (e.g. peer destroyed)."""
        message = {
            "buffer": {"type": "Buffer", "data": list(data)},
            "address": self.id_hex,
            "port": src_port,
            "dport": dport,
        }
        self.peer.send(to, message)
        self.sent += 1

    def _drop(self, reason: str, sender: bytes, detail: object = "") -> None:
        self.dropped[reason] += 1
        _log.debug(
            "%s dropped a datagram from %s: %s %s", self.id_hex[:8], short(sender), reason, detail
        )

    def _on_message(self, data: Any, sender: PeerId) -> None:
        if not is_datagram(data):
            return
        self.received += 1
        src_port = data.get("port")
        if type(src_port) is not int or not 0 <= src_port <= 65535:
            self._drop("bad-port", sender, src_port)
            return
        dport = data.get("dport")
        if dport is not None and (type(dport) is not int or not 0 <= dport <= 65535):
            self._drop("bad-port", sender, dport)
            return
        if "address" in data and type(data["address"]) is not str:
            self._drop("bad-address", sender)
            return
        endpoint = (
            self._bindings.get(dport)
            if dport is not None
            else next(iter(self._bindings.values()), None)
        )
        if endpoint is None:
            self._drop("unbound-port", sender, dport)
            return
        buffer = data.get("buffer")
        items = buffer.get("data") if type(buffer) is dict else None
        if type(items) is list and len(items) > endpoint.max_datagram:
            self._drop("oversize", sender, len(items))
            return
        payload = _parse_buffer(buffer)
        if isinstance(payload, str):
            self._drop(payload, sender)
            return
        addr = (sender.hex(), src_port)
        if bytes(sender) == self.peer.id:
            # Sent to ourselves: the node delivered it inside the sender's call; defer it.
            asyncio.get_running_loop().call_soon(self._deliver, endpoint, payload, addr)
        else:
            self._deliver(endpoint, payload, addr)

    def _deliver(self, endpoint: _Endpoint, payload: bytes, addr: Address) -> None:
        self.delivered += 1
        endpoint._datagram(payload, addr)


_muxes: weakref.WeakKeyDictionary[PeerRelay, DatagramMux] = weakref.WeakKeyDictionary()


def datagram_mux(peer: PeerRelay) -> DatagramMux:
    """The :class:`DatagramMux` of ``peer`` (made on first use; one per peer)."""
    mux = _muxes.get(peer)
    if mux is None:
        mux = _muxes[peer] = DatagramMux(peer)
    return mux


def _resolve_limit(peer: PeerRelay, max_datagram: int | None) -> int:
    fits = max_datagram_size(peer.config.max_frame, peer.config.sessions)
    if max_datagram is None:
        return min(UDP_MAX_PAYLOAD, fits)
    if type(max_datagram) is not int or not 0 <= max_datagram <= fits:
        raise ValueError(
            f"max_datagram must be an int in 0..{fits} (max_frame {peer.config.max_frame}), "
            f"got {max_datagram!r}"
        )
    return max_datagram


def _parse_address(mux: DatagramMux, addr: object) -> tuple[bytes, int]:
    """``(peer_id, port)`` from ``(hex id | bytes id | "localhost", port)``; raise on junk."""
    if not isinstance(addr, tuple | list) or len(addr) != 2:
        raise TypeError(f"address must be a (peer_id_hex, port) tuple, got {addr!r}")
    host, port = addr
    _check_port(port)
    if host is None or host in LOCAL_HOSTS:
        return mux.peer.id, port
    if isinstance(host, str) and len(host) != ID_HEX:
        raise ValueError(f"address must be a {ID_HEX}-hex-digit peer id, got {host!r}")
    return parse_id(host), port


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"data must be bytes-like or str, not {type(data).__name__}")


_tasks: set[asyncio.Future[Any]] = set()


def _call(what: str, callback: Callable[..., Any], *args: Any) -> None:
    """Call an application callback; log what it raises, run what it returns if awaitable."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
    except Exception:
        _log.exception("%s callback failed", what)


# ==================================================================================== Socket


class Socket:
    """The original's dgram-like Socket: ``bind``, ``send``, ``close``, ``address`` and events.

    Create it inside a running event loop. ``Socket(**options)`` makes and owns a new
    :class:`PeerRelay` (``options`` are its arguments; it is started by :meth:`bind` or the
    first :meth:`send` and destroyed by :meth:`close`). ``Socket(peer=p)`` shares ``p`` with
    other sockets (told apart by port) and leaves it running on close. ``max_datagram`` bounds
    datagrams both ways (default: 65507, or less if ``max_frame`` needs it).

    Events (``on``/``once``/``off``): ``message(data: bytes, rinfo: dict)``, ``error(exc)``,
    ``close()``, ``listening()``. ``rinfo`` is ``{"address": sender id hex, "port": N,
    "family": "peer-relay", "size": len(data)}``.
    """

    def __init__(
        self, *, peer: PeerRelay | None = None, max_datagram: int | None = None, **options: Any
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "Socket() must be created inside a running asyncio event loop"
            ) from None
        if peer is not None and options:
            raise TypeError("give either peer= or PeerRelay options, not both")
        self._owns_peer = peer is None
        self.peer: PeerRelay = PeerRelay(**options) if peer is None else peer
        self._mux = datagram_mux(self.peer)
        self.max_datagram = _resolve_limit(self.peer, max_datagram)
        self._listeners: dict[str, list[tuple[Callable[..., Any], bool]]] = {
            name: [] for name in _EVENTS
        }
        self._port: int | None = None
        self._listening = False
        self._closed = False
        self._close_done: asyncio.Future[None] = self._loop.create_future()
        self._pending: list[tuple[bytes, bytes, int, SendCallback | None]] = []

    # ---------------------------------------------------------------- events

    def on(self, event: str, callback: Callable[..., Any]) -> Socket:
        """Call ``callback`` on every ``event``."""
        self._add(event, callback, once=False)
        return self

    def once(self, event: str, callback: Callable[..., Any]) -> Socket:
        """Call ``callback`` on the next ``event`` only."""
        self._add(event, callback, once=True)
        return self

    def off(self, event: str, callback: Callable[..., Any]) -> Socket:
        """Stop calling ``callback`` on ``event``."""
        entries = self._listeners.get(event, [])
        for entry in entries:
            if entry[0] == callback:
                entries.remove(entry)
                break
        return self

    def _add(self, event: str, callback: Callable[..., Any], *, once: bool) -> None:
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(_EVENTS)}")
        self._listeners[event].append((callback, once))

    def _emit(self, event: str, *args: Any) -> None:
        entries = self._listeners[event]
        if event == "error" and not entries:
            _log.error("unhandled Socket error: %r", args[0] if args else None)
            return
        self._listeners[event] = [e for e in entries if not e[1]]
        for callback, _once in entries:
            _call(event, callback, *args)

    # ---------------------------------------------------------------- API

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def mux(self) -> DatagramMux:
        """The peer's :class:`DatagramMux` (ports and counters), shared with other sockets."""
        return self._mux

    def address(self) -> dict[str, Any]:
        """``{"address": our id hex, "port": bound port, "family": "peer-relay"}``."""
        self._require_open()
        if self._port is None:
            raise OSError(errno.EINVAL, "socket is not bound")
        return {"address": self.peer.id.hex(), "port": self._port, "family": FAMILY}

    def bind(
        self,
        port: int | Callable[[], object] | None = None,
        callback: Callable[[], object] | None = None,
    ) -> None:
        """Take ``port`` (None/0: a free one) on the peer; ``listening`` follows once it runs.

        The port is ours at once (:meth:`address` works); ``listening`` waits for the peer to
        start, not for a first link (unlike 0.0.2): datagrams sent earlier wait in the socket,
        then in the node's queue until a link opens. Raises ``OSError(EADDRINUSE)`` if the port
        is taken on this peer. ``bind(callback)`` is short for ``bind(None, callback)``.
        """
        self._require_open()
        if callable(port):
            port, callback = None, port
        if self._port is not None:
            raise OSError(errno.EINVAL, "Socket is already bound")
        self._port = self._mux.bind(self, port)
        if callback is not None:
            self.once("listening", callback)
        _spawn(self._start())

    async def _start(self) -> None:
        try:
            await self._mux.started()
        except Exception as exc:
            if self._closed:
                return
            if self._port is not None:
                self._mux.unbind(self._port, self)
                self._port = None
            self._fail_pending(exc)
            self._emit("error", exc)
            return
        if self._closed:
            return
        self._listening = True
        pending, self._pending = self._pending, []
        for data, to, dport, callback in pending:
            self._send_now(data, to, dport, callback)
        self._emit("listening")

    def send(
        self,
        buffer: BufferLike | str | Sequence[BufferLike],
        *args: Any,
        offset: int | None = None,
        length: int | None = None,
        port: int | None = None,
        peer_id: str | bytes | None = None,
        callback: SendCallback | None = None,
    ) -> None:
        """Send a datagram: ``send(buffer, offset, length, port, peer_id[, callback])`` or
        ``send(buffer, port[, peer_id][, callback])`` (also as keywords).

        Sends ``buffer[offset:offset + length]`` (a list of buffers is joined) to ``port`` on
        ``peer_id`` (hex or bytes; ``None``/``"localhost"`` means this peer). Binds to a free
        port first if unbound. Bad arguments raise ``TypeError``/``ValueError``, an oversize
        datagram :class:`DatagramTooLargeError`; later failures go to ``callback(exc)``, else to
        the ``error`` event. ``callback(None)`` follows once the peer has taken the datagram.
        """
        self._require_open()
        positional = list(args)
        if positional and callable(positional[-1]):
            if callback is not None:
                raise TypeError("callback given twice")
            callback = positional.pop()
        names = (
            ("offset", "length", "port", "peer_id") if len(positional) >= 3 else ("port", "peer_id")
        )
        if len(positional) > len(names):
            raise TypeError("send() takes at most 5 positional arguments after buffer")
        given: dict[str, Any] = {
            "offset": offset,
            "length": length,
            "port": port,
            "peer_id": peer_id,
        }
        for name, value in zip(names, positional, strict=False):
            if given[name] is not None:
                raise TypeError(f"send() got {name} twice")
            given[name] = value
        offset, length, port, peer_id = (
            given["offset"],
            given["length"],
            given["port"],
            given["peer_id"],
        )
        if port is None:
            raise TypeError("send() needs a port")
        if isinstance(buffer, list | tuple):
            if offset is not None or length is not None:
                raise TypeError("offset/length work only with a single buffer")
            data = b"".join(_as_bytes(part) for part in buffer)
        else:
            data = _as_bytes(buffer)
        start = 0 if offset is None else offset
        if type(start) is not int or not 0 <= start <= len(data):
            raise ValueError(f"offset must be an int in 0..{len(data)}, got {offset!r}")
        end = len(data) if length is None else start + length
        if type(length) not in (int, type(None)) or not start <= end <= len(data):
            raise ValueError(f"length must be an int in 0..{len(data) - start}, got {length!r}")
        data = data[start:end]
        if len(data) > self.max_datagram:
            raise DatagramTooLargeError(
                f"datagram of {len(data)} bytes exceeds max_datagram ({self.max_datagram})"
            )
        to, dport = _parse_address(self._mux, (peer_id, port))
        if self._port is None:
            self.bind()
        if self._listening:
            self._send_now(data, to, dport, callback)
        else:
            self._pending.append((data, to, dport, callback))

    def _send_now(self, data: bytes, to: bytes, dport: int, callback: SendCallback | None) -> None:
        assert self._port is not None
        error: BaseException | None = None
        try:
            self._mux.send(data, self._port, to, dport)
        except Exception as exc:
            error = exc
        if callback is not None:
            self._loop.call_soon(_call, "send", callback, error)
        elif error is not None:
            self._loop.call_soon(self._emit, "error", error)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        for *_, callback in pending:
            if callback is not None:
                self._loop.call_soon(_call, "send", callback, exc)

    def close(self, callback: Callable[[], object] | None = None) -> None:
        """Unbind, and destroy the peer if this socket made it; then emit ``close``.

        ``callback`` runs on ``close``. Raises :class:`SocketClosedError` if already closed.
        """
        self._require_open()
        self._closed = True
        if self._port is not None:
            self._mux.unbind(self._port, self)
        self._fail_pending(SocketClosedError("socket closed before the datagram left"))
        if callback is not None:
            self.once("close", callback)
        _spawn(self._finish_close())

    async def _finish_close(self) -> None:
        try:
            if self._owns_peer:
                await self._mux.start_settled()
                await self.peer.destroy()
        finally:
            self._emit("close")
            if not self._close_done.done():
                self._close_done.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until ``close`` has been emitted (after :meth:`close`)."""
        await asyncio.shield(self._close_done)

    def _require_open(self) -> None:
        if self._closed:
            raise SocketClosedError("Not running: the socket is closed")

    def _datagram(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        rinfo = {"address": addr[0], "port": addr[1], "family": FAMILY, "size": len(data)}
        self._emit("message", data, rinfo)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"port={self._port}"
        return f"Socket(id={self.peer.id.hex()}, {state})"


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as a task that is kept alive and whose failure is logged."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Future[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.error("socket task failed", exc_info=task.exception())


# ==================================================================================== asyncio


class RelayDatagramTransport(asyncio.DatagramTransport):
    """An :class:`asyncio.DatagramTransport` over a peer; addresses are ``(peer_id_hex, port)``.

    Made by :func:`create_datagram_endpoint`. Extra info: ``sockname`` (our address),
    ``peername`` (the ``remote_addr``, if given), ``peer`` (the :class:`PeerRelay`), ``mux``.
    """

    def __init__(
        self,
        mux: DatagramMux,
        protocol: asyncio.DatagramProtocol,
        max_datagram: int,
        remote: tuple[bytes, int] | None,
        owns_peer: bool,
    ) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._mux = mux
        self._protocol = protocol
        self.max_datagram = max_datagram
        self._remote = remote
        self._owns_peer = owns_peer
        self._port = 0
        self._closing = False

    def _attach(self, port: int | None) -> None:
        self._port = self._mux.bind(self, port)
        peer = self._mux.peer
        self._extra = {
            "sockname": (peer.id.hex(), self._port),
            "peername": None if self._remote is None else (self._remote[0].hex(), self._remote[1]),
            "peer": peer,
            "mux": self._mux,
            "socket": None,
        }

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        """Always 0: each datagram is handed to the peer at once."""
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Accepted and ignored (nothing is buffered here)."""

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send ``data`` to ``addr`` = ``(peer_id_hex, port)`` (or to ``remote_addr``).

        Raises :class:`SocketClosedError` when closing, ``TypeError``/``ValueError`` for a bad
        address, :class:`DatagramTooLargeError` beyond ``max_datagram``. A failure of the peer
        itself goes to the protocol's ``error_received``.
        """
        if self._closing:
            raise SocketClosedError("sendto on a closed transport")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if addr is None:
            if self._remote is None:
                raise ValueError("sendto needs an address: no remote_addr was given")
            to, dport = self._remote
        else:
            to, dport = _parse_address(self._mux, addr)
            if self._remote is not None and (to, dport) != self._remote:
                raise ValueError(f"address must be None or {self._extra['peername']}")
        if len(data) > self.max_datagram:
            raise DatagramTooLargeError(
                f"datagram of {len(data)} bytes exceeds max_datagram ({self.max_datagram})"
            )
        try:
            self._mux.send(bytes(data), self._port, to, dport)
        except Exception as exc:
            error = exc if isinstance(exc, OSError) else ConnectionError(f"peer-relay: {exc}")
            self._protocol.error_received(error)

    def _datagram(self, data: bytes, addr: Address) -> None:
        if self._closing:
            return
        remote = self._remote
        if remote is not None and (remote[0].hex(), remote[1]) != addr:
            self._mux.dropped["not-connected"] += 1
            return
        try:
            self._protocol.datagram_received(data, addr)
        except Exception as exc:
            self._loop.call_exception_handler(
                {
                    "message": "datagram_received failed",
                    "exception": exc,
                    "protocol": self._protocol,
                }
            )

    def close(self) -> None:
        """Unbind and call ``connection_lost(None)`` soon (after destroying an owned peer)."""
        if self._closing:
            return
        self._closing = True
        self._mux.unbind(self._port, self)
        _spawn(self._finish())

    def abort(self) -> None:
        """Same as :meth:`close`: nothing is buffered."""
        self.close()

    async def _finish(self) -> None:
        try:
            if self._owns_peer:
                await self._mux.peer.destroy()
        finally:
            self._protocol.connection_lost(None)

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<RelayDatagramTransport {self._mux.id_hex}:{self._port} {state}>"


async def create_datagram_endpoint(
    protocol_factory: Callable[[], _P],
    *,
    peer: PeerRelay | None = None,
    port: int | None = None,
    remote_addr: tuple[str | bytes, int] | None = None,
    max_datagram: int | None = None,
    **options: Any,
) -> tuple[RelayDatagramTransport, _P]:
    """Like ``loop.create_datagram_endpoint``, over the relay: return ``(transport, protocol)``.

    Uses ``peer`` (started if needed, left running on close) or a new :class:`PeerRelay` made
    from ``options`` (destroyed on close). ``port`` (None/0: a free one) is the local port on
    that peer; ``remote_addr`` connects the transport to one ``(peer_id_hex, port)``.
    """
    if peer is not None and options:
        raise TypeError("give either peer= or PeerRelay options, not both")
    owns_peer = peer is None
    node = PeerRelay(**options) if peer is None else peer
    mux = datagram_mux(node)
    limit = _resolve_limit(node, max_datagram)
    if port is not None:
        _check_port(port)
    mux.check_free(port)
    remote = None if remote_addr is None else _parse_address(mux, remote_addr)
    protocol = protocol_factory()
    transport = RelayDatagramTransport(mux, protocol, limit, remote, owns_peer)
    try:
        await mux.started()
        transport._attach(port)
    except BaseException:
        if owns_peer:
            with contextlib.suppress(Exception):
                await node.destroy()
        raise
    # No await between binding and connection_made: nothing can arrive before it.
    protocol.connection_made(transport)
    return transport, protocol
