"""BrowserPeer: the same :class:`~peer_relay.core.Core`, pumped from a web page under Pyodide.

This is the browser's counterpart of :mod:`peer_relay.node`: it carries out what the core asks
for with the browser's own objects, reached through Pyodide's ``js`` module:

- WebSocket links (outgoing only: a page cannot listen) on ``WebSocket``: the link hello and
  proof, then envelopes, one text frame each, exactly as :mod:`peer_relay.transports.websocket`;
- WebRTC links on ``RTCPeerConnection``: one ordered, reliable data channel opened in-band by
  the initiator, signals in simple-peer's format (``{type: "offer"|"answer", sdp}``, and
  trickled ``{type: "candidate", candidate: {candidate, sdpMLineIndex, sdpMid}}``), frames =
  envelopes, as :mod:`peer_relay.transports.webrtc`, with the same checks of remote signals
  (:mod:`peer_relay.transports.signals`), except that mDNS candidates are kept (a browser
  resolves them);
- the core's one timer on ``setTimeout``, re-armed by the one pump every host shares
  (:mod:`peer_relay.host`).

The page script talks to it through ``peer-relay.js``; values cross as JSON text, so no Python
object is held by JavaScript beyond the peer itself. Errors are the core's, word for word: data
JSON cannot carry crosses marked (:data:`MARK`) and ids and timeouts as JavaScript passed them,
for the core's checks to refuse as they refuse the Python counterparts, and the page throws
what was raised by type name and message (:func:`take_error`), not Pyodide's traceback.
Events go out through one JavaScript callback, ``emit(name, json_args)``. The tokens of
deliveries and requests are 64-bit integers, beyond what a JavaScript number holds exactly, so
they cross as decimal text.

Sessions (``send``, ``deliver``, ``request``) are the core's, over :mod:`peer_relay.noise` with
its pure-Python backend (:mod:`peer_relay.purecrypto`), for the same reason as the signatures.

Keys and signatures use the pure-Python :mod:`peer_relay.ed25519` (``cryptography`` does not
load offline in Pyodide): about 0.7 ms to sign and 2 ms to verify in Chromium. WebCrypto has
Ed25519 too, but only behind Promises, and the core's ``Signer`` and ``Verifier`` are
synchronous by design (a frame is handled to the end before the next). Bridging them would need
JSPI's ``run_sync`` with every entry into the core made as a promising call and serialised;
at these costs that is not worth it.

Nothing here decides anything about routing; nothing here runs outside a browser (the ``js``
module exists only under Pyodide), but the module imports anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..core import Config, Core
from ..events import (
    ConnectResult,
    Delivered,
    DeliveryResult,
    PeerLinked,
    PeerUnlinked,
    Reply,
    RequestReceived,
)
from ..host import Pump
from ..identity import Identity
from ..ids import parse_id, short
from ..transports.signals import (
    Candidate,
    Description,
    Remote,
    SignalFilter,
    check_ice_servers,
)
from ..wire import MAX_SAFE_INTEGER

_log = logging.getLogger("peer_relay.browser")

CHANNEL_LABEL = "peer-relay"
CLOSE_TIMEOUT = 2.0
"""Seconds a closing WebRTC link waits for its data channel to close before the connection."""


def _js() -> Any:
    return importlib.import_module("js")


def _ffi() -> Any:
    return importlib.import_module("pyodide.ffi")


def _number(text: str) -> int | float:
    """A JSON integer from JavaScript: beyond 2**53 it was a double there, and stays one."""
    value = int(text)
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else float(text)


# ---------------------------------------------------------------- values from JavaScript

MARK = "\x00js"
"""The member name of the objects ``peer-relay.js`` writes in place of what JSON cannot carry:
``{"\\u0000js": [kind]}`` (``undefined``, ``function``, ``symbol``, ``bigint``, ``Map``, ...)
and ``{"\\u0000js": ["cycle", levels up]}``; such data is always refused."""
_MARK_JSON = '"\\u0000js"'
_STAND_INS: dict[str, type] = {}


def _function() -> None:
    """What a JavaScript function in data or as an id stands for: a Python function."""


def stand_in(kind: str) -> Any:
    """A Python value for a JavaScript value Python has no counterpart of, named as JavaScript
    names it (``undefined``, ``symbol``, ``bigint``, ``Map``, ...), so that the core's checks
    refuse it with the words they use for a Python type (a function is a Python function)."""
    if kind == "function":
        return _function
    cls = _STAND_INS.get(kind)
    if cls is None:
        cls = type(kind, (), {"__module__": "builtins", "__repr__": lambda self: kind})
        _STAND_INS[kind] = cls
    return cls()


class _Cycle:
    """Where JavaScript data referred back to one of its own containers (``up`` levels up)."""

    __slots__ = ("up",)

    def __init__(self, up: int) -> None:
        self.up = up


def _unmark(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and MARK in obj and isinstance(obj[MARK], list) and obj[MARK]:
        kind, *rest = obj[MARK]
        if kind == "cycle" and rest and isinstance(rest[0], int):
            return _Cycle(rest[0])
        return stand_in(str(kind))
    return obj


def _tie(value: Any, open_: list[Any]) -> Any:
    """``value`` with every :class:`_Cycle` replaced by the container it refers to."""
    if isinstance(value, _Cycle):
        return open_[-value.up] if 0 < value.up <= len(open_) else None
    if isinstance(value, list | dict):
        open_.append(value)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in list(items):
            value[key] = _tie(item, open_)
        open_.pop()
    return value


def _loads(text: str) -> Any:
    """The value of JSON text written by ``peer-relay.js``: numbers as JavaScript meant them
    (NaN and the infinities too, written as Python reads them), and what JSON cannot carry
    (marked, see :data:`MARK`) as stand-ins and cycles: for the core to refuse, as it refuses
    their Python counterparts."""
    try:
        if _MARK_JSON not in text:
            return json.loads(text, parse_int=_number)
        return _tie(json.loads(text, parse_int=_number, object_hook=_unmark), [])
    except RecursionError:  # peer-relay.js writes no more than 512 levels
        raise ValueError("data is nested too deeply") from None


def from_js(value: Any) -> Any:
    """What Pyodide made of a JavaScript argument (an id, a timeout), as the Python value it
    stands for: null as None, a ``Uint8Array`` as bytes, an array as a list, a plain object
    as a dict, a function as a function; anything else as a :func:`stand_in` named as in
    JavaScript. Strings, numbers, booleans and None (undefined) arrive as themselves."""
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    try:
        ffi = _ffi()
    except ImportError:  # not in Pyodide (tests): Python values as they are
        return value
    if value is getattr(ffi, "jsnull", None) or type(value).__name__ == "JsNull":
        return None
    if not isinstance(value, ffi.JsProxy):
        return value
    kind = str(value.typeof)
    if kind == "function":
        return _function
    if kind != "object":
        return stand_in(kind)
    constructor = getattr(value, "constructor", None)
    name = str(getattr(constructor, "name", "Object") or "Object")
    if isinstance(value, ffi.JsBuffer) and name in ("Uint8Array", "Buffer"):
        return bytes(value.to_bytes())
    if isinstance(value, ffi.JsArray) or name == "Object":
        return value.to_py()
    return stand_in(name)


_last_error: tuple[str, str] | None = None
_F = TypeVar("_F", bound=Callable[..., Any])


def _api(method: _F) -> _F:
    """A method ``peer-relay.js`` calls: what it raises is also kept (:func:`take_error`), for
    the page to throw the same error with the same one-line message, not Pyodide's
    ``PythonError`` and its traceback."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        global _last_error
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            _last_error = (type(exc).__name__, str(exc))
            raise

    return call  # type: ignore[return-value]


def take_error() -> str | None:
    """JSON ``[type name, message]`` of what the last call from JavaScript raised, once."""
    global _last_error
    error, _last_error = _last_error, None
    return None if error is None else json.dumps(error)


def _js_object(value: dict[str, Any]) -> Any:
    """A plain JavaScript object (recursively) from a dict."""
    return _ffi().to_js(value, dict_converter=_js().Object.fromEntries)


class _Handlers:
    """Python callables exposed to JavaScript as event handlers, released together."""

    def __init__(self) -> None:
        self._proxies: list[Any] = []

    def __call__(self, fn: Callable[..., Any]) -> Any:
        proxy = _ffi().create_proxy(fn)
        self._proxies.append(proxy)
        return proxy

    def release(self) -> None:
        """Destroy the proxies on a later turn (one of them may be running right now)."""
        proxies, self._proxies = self._proxies, []
        if not proxies:
            return

        def destroy() -> None:
            for proxy in proxies:
                with contextlib.suppress(Exception):
                    proxy.destroy()

        _js().setTimeout(_ffi().create_once_callable(destroy), 0)


class _WsLink:
    """One outgoing browser WebSocket carrying text frames."""

    transport = "ws"

    def __init__(self, peer: BrowserPeer, handle: int, url: str) -> None:
        self._peer = peer
        self._handle = handle
        self._handlers = _Handlers()
        self._closed = False
        self.opened = False
        ws = _js().WebSocket.new(url)
        self._ws = ws
        ws.onopen = self._handlers(self._on_open)
        ws.onmessage = self._handlers(self._on_message)
        ws.onclose = self._handlers(self._on_close)
        ws.onerror = self._handlers(lambda _event: None)  # a close event follows

    @property
    def buffered(self) -> int:
        return int(self._ws.bufferedAmount)

    def send(self, frame: bytes) -> bool:
        ws = self._ws
        if self._closed or ws.readyState != 1:
            return False
        if ws.bufferedAmount + len(frame) > self._peer.max_link_buffer:
            return False
        ws.send(frame.decode("utf-8"))
        return True

    def close(self, reason: str) -> None:
        if self._closed:
            return
        try:
            self._ws.close(1000, reason.encode()[:120].decode("utf-8", "ignore"))
        except Exception:
            self._ws.close()

    def _on_open(self, _event: Any) -> None:
        self.opened = True
        self._peer._core_call("link_connected", self._handle)

    def _on_message(self, event: Any) -> None:
        data = event.data
        if isinstance(data, str):
            self._peer._core_call("frame_received", self._handle, data)
        else:  # our peers and 0.0.2 send text frames only
            drops = self._peer._node_drops
            drops["binary-frame"] = drops.get("binary-frame", 0) + 1

    def _on_close(self, event: Any) -> None:
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = None
        self._handlers.release()
        reason = f"remote closed ({event.code})" if self.opened else "dial failed"
        self._peer._link_gone(self._handle, reason)


class _RtcLink:
    """One WebRTC data channel on the browser's RTCPeerConnection, simple-peer's signals."""

    transport = "webrtc"

    def __init__(self, peer: BrowserPeer, handle: int, initiator: bool) -> None:
        self._peer = peer
        self._handle = handle
        self._initiator = initiator
        self._handlers = _Handlers()
        self._closed = False
        self._finished = False
        self._channel: Any = None
        # The browser resolves mDNS (.local) candidates itself, so they are kept.
        self._filter = SignalFilter(initiator, allow_mdns=True)
        self._signals: asyncio.Queue[Remote] = asyncio.Queue()
        self._have_remote = False
        self._pending: list[Candidate] = []
        self.opened = False
        self.dropped: dict[str, int] = {}
        servers: list[dict[str, str]] = []
        for url in peer.ice_servers:
            server = {"urls": url}
            if url.startswith("turn") and peer.ice_username and peer.ice_credential:
                server.update(username=peer.ice_username, credential=peer.ice_credential)
            servers.append(server)
        pc = _js().RTCPeerConnection.new(_js_object({"iceServers": servers}))
        self._pc = pc
        pc.onicecandidate = self._handlers(self._on_ice_candidate)
        pc.onconnectionstatechange = self._handlers(self._on_state)
        pc.ondatachannel = self._handlers(self._on_remote_channel)
        if initiator:
            self._attach(pc.createDataChannel(CHANNEL_LABEL, _js_object({"ordered": True})))
        peer._spawn(self._run())

    @property
    def buffered(self) -> int:
        channel = self._channel
        return 0 if channel is None else int(channel.bufferedAmount)

    def send(self, frame: bytes) -> bool:
        channel = self._channel
        if self._closed or channel is None or channel.readyState != "open":
            return False
        if channel.bufferedAmount + len(frame) > self._peer.max_link_buffer:
            return False
        channel.send(frame.decode("utf-8"))
        return True

    def add_signal(self, signal: Any) -> None:
        """Queue one remote simple-peer signal; malformed ones are counted and dropped."""
        parts = self._filter.check(signal)
        if isinstance(parts, str):
            self.dropped[parts] = self.dropped.get(parts, 0) + 1
            _log.debug("dropped signal (%s): %.200r", parts, signal)
            return
        for part in parts:
            self._signals.put_nowait(part)

    def close(self, reason: str) -> None:
        """Close the channel first, so that its queued data goes out, then the connection.

        ``RTCPeerConnection.close()`` aborts the association at once (losing what is queued), so
        it waits for the channel's close event, at most :data:`CLOSE_TIMEOUT` seconds.
        """
        if self._closed:
            return
        self._closed = True
        self._filter.close()
        self._peer._link_gone(self._handle, f"webrtc {reason}")
        channel = self._channel
        if channel is not None and channel.readyState in ("connecting", "open"):
            try:
                channel.close()
            except Exception:
                self._finish()
                return
            # Not cleared when the channel closes first: _finish is idempotent, and the
            # once-callable frees itself when it fires.
            _js().setTimeout(_ffi().create_once_callable(self._finish), CLOSE_TIMEOUT * 1000)
        else:
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._pc.close()
        finally:
            self._release()

    async def _run(self) -> None:
        pc = self._pc
        try:
            if self._initiator:
                offer = await pc.createOffer()
                await pc.setLocalDescription(offer)
                self._emit_signal({"type": "offer", "sdp": pc.localDescription.sdp})
            while not self._closed:
                part = await self._signals.get()
                if self._closed:
                    return
                if isinstance(part, Description):
                    await self._apply_description(part)
                elif self._have_remote:
                    await self._add_candidate(part)
                else:
                    self._pending.append(part)
        except Exception as exc:
            if not self._closed:
                _log.warning("WebRTC link %d failed: %r", self._handle, exc)
                self.close("failed")

    async def _apply_description(self, description: Description) -> None:
        pc = self._pc
        await pc.setRemoteDescription(
            _js_object({"type": description.type, "sdp": description.sdp})
        )
        self._have_remote = True
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._add_candidate(candidate)
        if description.type == "offer" and not self._closed:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            self._emit_signal({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _add_candidate(self, candidate: Candidate) -> None:
        init: dict[str, Any] = {"candidate": candidate.line}
        if candidate.sdp_mid is not None:
            init["sdpMid"] = candidate.sdp_mid
        if candidate.sdp_mline_index is not None:
            init["sdpMLineIndex"] = candidate.sdp_mline_index
        try:
            await self._pc.addIceCandidate(_js_object(init))
        except Exception as exc:  # one bad candidate does not end the attempt
            self.dropped["bad-candidate"] = self.dropped.get("bad-candidate", 0) + 1
            _log.debug("candidate refused: %r", exc)

    def _emit_signal(self, signal: dict[str, Any]) -> None:
        if not self._closed:
            self._peer._core_call("send_signal", self._handle, signal)

    def _on_ice_candidate(self, event: Any) -> None:
        candidate = event.candidate
        if not candidate or not getattr(candidate, "candidate", None):
            return  # the end of candidates (JS null): simple-peer never signals it
        self._emit_signal(
            {
                "type": "candidate",
                "candidate": {
                    "candidate": candidate.candidate,
                    "sdpMLineIndex": candidate.sdpMLineIndex,
                    "sdpMid": candidate.sdpMid,
                },
            }
        )

    def _on_state(self, _event: Any) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._end(f"connection {self._pc.connectionState}")

    def _attach(self, channel: Any) -> None:
        self._channel = channel
        channel.onopen = self._handlers(self._on_open)
        channel.onmessage = self._handlers(self._on_message)
        channel.onclose = self._handlers(self._on_channel_close)

    def _on_remote_channel(self, event: Any) -> None:
        if self._channel is not None or self._closed:
            event.channel.close()
            return
        self._attach(event.channel)
        if event.channel.readyState == "open":
            self._on_open(None)

    def _on_open(self, _event: Any) -> None:
        if self.opened or self._closed:
            return
        self.opened = True
        self._peer._core_call("link_connected", self._handle)

    def _on_message(self, event: Any) -> None:
        data = event.data
        if isinstance(data, str) and not self._closed:
            self._peer._core_call("frame_received", self._handle, data)

    def _on_channel_close(self, _event: Any) -> None:
        if self._closed:
            self._finish()  # the close we started is complete
        else:
            self._end("remote-closed")

    def _end(self, reason: str) -> None:
        """The link ended on its own (remote close, ICE failure)."""
        self.close(reason)

    def _release(self) -> None:
        pc, channel = self._pc, self._channel
        pc.onicecandidate = pc.onconnectionstatechange = pc.ondatachannel = None
        if channel is not None:
            channel.onopen = channel.onmessage = channel.onclose = None
        self._handlers.release()


class BrowserPeer:
    """A full peer of the network inside a web page.

    ``emit(name, json_args)`` is called for every event: ``"message"`` with
    ``[data, from_hex, {"verified", "hops"}]``, ``"peer"`` with ``[id_hex, transport]``,
    ``"peer-closed"`` with ``[id_hex, reason]``, ``"connect"`` with ``[id_hex, ok, reason]``,
    ``"delivery"`` with ``[token, ok, reason]`` (a :meth:`deliver` ended), ``"reply"`` with
    ``[token, ok, value, error, remote]`` (a :meth:`request` ended; ``remote``: ``error`` is the
    handler's) and ``"request"`` with ``[token, data, from_hex, hops]`` (answer it with
    :meth:`respond`). Tokens are decimal text. The outcome of a call may be emitted before the
    call returns its token (a delivery to our own id, say).

    Calls raise ``ValueError``/``TypeError``/``RuntimeError`` at once for what the asyncio
    :class:`~peer_relay.PeerRelay` refuses with the same: a bad id, data or timeout. Ids and
    timeouts are taken as JavaScript passed them (:func:`from_js`), data as the JSON text
    ``peer-relay.js`` writes (:data:`MARK`), so that the core's own checks judge them; what a
    call raised is kept for the page (:func:`take_error`).
    """

    @_api
    def __init__(
        self,
        *,
        emit: Callable[[str, str], Any],
        bootstrap: Iterable[str] = (),
        identity: Identity | None = None,
        webrtc: bool = True,
        ice_servers: Iterable[str] = (),
        ice_username: str | None = None,
        ice_credential: str | None = None,
        allow_unsigned: bool = False,
        max_link_buffer: int = 16 << 20,
        **options: Any,
    ) -> None:
        self.identity = identity or Identity.generate()
        self.id = self.identity.id
        self.id_hex = self.id.hex()
        self.ice_servers = check_ice_servers(ice_servers, ice_username, ice_credential)
        self.ice_username = ice_username
        self.ice_credential = ice_credential
        self.max_link_buffer = max_link_buffer
        self._emit_js = emit
        self._bootstrap = list(bootstrap)
        for url in self._bootstrap:
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"bootstrap URL must be ws:// or wss://, got {url!r}")
        options.setdefault("sessions", not allow_unsigned)  # as the asyncio node's default
        self.config = Config(url=None, webrtc=webrtc, require_auth=not allow_unsigned, **options)
        self._core: Core | None = None
        self._pump: Pump | None = None
        self._links: dict[int, _WsLink | _RtcLink] = {}
        self._node_drops: dict[str, int] = {}
        self._timer_id: Any = None
        self._timer_proxy: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._destroyed = False

    # ------------------------------------------------------------------ API for peer-relay.js

    @_api
    def start(self) -> None:
        """Create the core and dial the bootstrap peers."""
        if self._core is not None:
            return
        self._timer_proxy = _ffi().create_proxy(self._on_timer)
        self._core = Core(self.identity, self.config, rng=random.SystemRandom(), now=time.time())
        self._pump = Pump(self._core, _BrowserHost(self))
        self._core.bootstrap(self._bootstrap, time.time())
        self._flush()

    @_api
    def send(self, to: Any, data_json: str) -> None:
        """Send the JSON value ``data_json`` to peer ``to`` (see :func:`from_js`)."""
        core = self._require_core()
        core.send(from_js(to), _loads(data_json), time.time())
        self._flush()

    @_api
    def deliver(self, to: Any, data_json: str, timeout: Any = 10.0) -> str:
        """Send the JSON value ``data_json`` to ``to`` through a session, wanting a receipt;
        return the token of the ``delivery`` event that says how it ended."""
        core = self._require_core()
        token = core.deliver(from_js(to), _loads(data_json), time.time(), from_js(timeout))
        self._flush()
        return str(token)

    @_api
    def request(self, to: Any, data_json: str, timeout: Any = 10.0) -> str:
        """Send the JSON value ``data_json`` to the request handler of ``to``; return the
        token of the ``reply`` event that brings its answer, or why there is none."""
        core = self._require_core()
        token = core.request(from_js(to), _loads(data_json), time.time(), from_js(timeout))
        self._flush()
        return str(token)

    @_api
    def respond(self, token: str, value_json: str, error: str | None = None) -> bool:
        """Answer the request of a ``request`` event: with the JSON value ``value_json``, or
        with ``error`` (the requester's ``RemoteError``). A reply that cannot be sent (not
        I-JSON, too large) goes as an error saying so, as the asyncio node's does. False if
        it was answered already, or the peer is closed."""
        core = self._core
        if core is None or self._destroyed:
            return False
        key = int(token)
        try:
            value = None if error is not None else _loads(value_json)
            answered = core.respond(key, value, time.time(), error)
        except (ValueError, TypeError) as exc:
            _log.warning("the request handler's reply cannot be sent: %s", exc)
            why = f"the handler's reply cannot be sent: {exc}"
            answered = core.respond(key, None, time.time(), why)
        self._flush()
        return answered

    @_api
    def hex_of(self, to: Any) -> str:
        """``to`` as 40 lowercase hex digits; raise as the API calls do for a bad id."""
        self._require_core()
        return parse_id(from_js(to)).hex()

    @_api
    def connect(self, to: Any) -> None:
        """Ask for a direct link; the outcome comes as a ``connect`` event."""
        core = self._require_core()
        core.connect(from_js(to), time.time())
        self._flush()

    @_api
    def disconnect(self, to: Any) -> bool:
        """Close the direct link to ``to``; return whether there was one."""
        core = self._require_core()
        closed = core.disconnect(from_js(to), time.time())
        self._flush()
        return closed

    @_api
    def peers_json(self) -> str:
        """``[{"id", "transport"}, ...]`` of the open links, as JSON."""
        core = self._core
        if core is None:
            return "[]"
        return json.dumps(
            [{"id": p.hex(), "transport": core.link_transport(p)} for p in core.peers]
        )

    @_api
    def stats_json(self) -> str:
        """The core's counters, plus this adapter's drops, as JSON."""
        if self._core is None:
            return "{}"
        out = self._core.stats.as_dict()
        dropped = dict(out["dropped"])
        for reason, count in self._node_drops.items():
            dropped[reason] = dropped.get(reason, 0) + count
        out["dropped"] = dropped
        out["links_open"] = len(self._core.peers)
        return json.dumps(out)

    @_api
    def close(self) -> None:
        """Close every link and stop; idempotent. (``destroy`` is taken by Pyodide's proxies.)"""
        if self._destroyed:
            return
        if self._core is not None:
            self._core.close(time.time())
            self._flush()
        self._destroyed = True
        for link in list(self._links.values()):
            link.close("shutdown")
        self._links.clear()
        if self._timer_id is not None:
            _js().clearTimeout(self._timer_id)
            self._timer_id = None
        if self._timer_proxy is not None:
            proxy, self._timer_proxy = self._timer_proxy, None
            _js().setTimeout(_ffi().create_once_callable(proxy.destroy), 0)
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ the pump

    def _require_core(self) -> Core:
        if self._destroyed:
            raise RuntimeError("this peer has been destroyed")
        if self._core is None:
            raise RuntimeError("call start() first")
        return self._core

    def _core_call(self, name: str, *args: Any) -> None:
        core = self._core
        if core is None or self._destroyed:
            return
        getattr(core, name)(*args, time.time())
        self._flush()

    def _link_gone(self, handle: int, reason: str) -> None:
        """A link ended: tell the core, unless the core closed it (then it is already gone)."""
        if self._links.pop(handle, None) is None:
            return
        core = self._core
        if core is not None and not self._destroyed:
            core.link_closed(handle, time.time(), reason)
            self._flush()

    def _flush(self) -> None:
        """Carry out everything the core asked for, then re-arm its timer (the one pump)."""
        if self._pump is not None:
            self._pump.drive()

    def _set_timer(self, when: float | None) -> None:
        js = _js()
        if self._timer_id is not None:
            js.clearTimeout(self._timer_id)
            self._timer_id = None
        if when is not None and not self._destroyed:
            self._timer_id = js.setTimeout(self._timer_proxy, max(0.0, when - time.time()) * 1000)

    def _emit(self, name: str, args: list[Any]) -> None:
        self._emit_text(name, json.dumps(args, ensure_ascii=False))

    def _emit_text(self, name: str, args_json: str) -> None:
        try:
            self._emit_js(name, args_json)
        except Exception:
            _log.exception("%s listener failed", name)

    def _on_timer(self) -> None:
        self._timer_id = None
        if self._pump is not None and not self._destroyed:
            self._pump.timer_fired()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _BrowserHost:
    """The browser's side of the one pump (:class:`~peer_relay.host.Host`)."""

    __slots__ = ("_peer",)

    def __init__(self, peer: BrowserPeer) -> None:
        self._peer = peer

    def now(self) -> float:
        return time.time()

    def set_timer(self, when: float | None) -> None:
        self._peer._set_timer(when)

    def send_frame(self, handle: int, frame: bytes) -> bool:
        # False when the link is closing, gone or full: the core takes it out of routing and
        # re-routes the frame.
        link = self._peer._links.get(handle)
        return link is not None and link.send(frame)

    def close_link(self, handle: int, reason: str) -> None:
        link = self._peer._links.pop(handle, None)
        if link is not None:
            link.close(reason)

    def dial_websocket(self, handle: int, url: str, expected_id: bytes | None) -> None:
        try:
            self._peer._links[handle] = _WsLink(self._peer, handle, url)
        except Exception as exc:  # the browser refused the URL, say
            self._failed(handle, "dial failed", exc)

    def start_webrtc(self, handle: int, peer_id: bytes, initiator: bool) -> None:
        try:
            self._peer._links[handle] = _RtcLink(self._peer, handle, initiator)
        except Exception as exc:  # the browser refused the configuration, say
            self._failed(handle, "webrtc failed", exc)

    def signal_in(self, handle: int, signal: Any) -> None:
        link = self._peer._links.get(handle)
        if isinstance(link, _RtcLink):
            link.add_signal(signal)

    def delivered(self, event: Delivered) -> None:
        info = {"verified": event.verified, "hops": event.hops}
        self._peer._emit("message", [event.data, event.sender.hex(), info])

    def peer_linked(self, event: PeerLinked) -> None:
        peer = self._peer
        _log.info("%s linked to %s (%s)", short(peer.id), short(event.peer_id), event.transport)
        peer._emit("peer", [event.peer_id.hex(), event.transport])

    def peer_unlinked(self, event: PeerUnlinked) -> None:
        self._peer._emit("peer-closed", [event.peer_id.hex(), event.reason])

    def connect_result(self, event: ConnectResult) -> None:
        self._peer._emit("connect", [event.peer_id.hex(), event.ok, event.reason])

    # Tokens cross as text: they are 64-bit, and a JavaScript number holds 53 bits.

    def delivery_result(self, event: DeliveryResult) -> None:
        self._peer._emit("delivery", [str(event.token), event.ok, event.reason])

    def request_received(self, event: RequestReceived) -> None:
        sender = event.sender.hex()
        self._peer._emit("request", [str(event.token), event.data, sender, event.hops])

    def reply(self, event: Reply) -> None:
        token = str(event.token)
        try:
            text = json.dumps(
                [token, event.ok, event.value, event.error, event.remote], ensure_ascii=False
            )
        except (TypeError, ValueError) as exc:
            # Not JSON (a bug): the caller's Promise still settles, with the reason.
            _log.error("reply %s cannot be passed to JavaScript: %r", token, exc)
            why = f"the reply cannot be passed to JavaScript: {exc}"
            text = json.dumps([token, False, None, why, False])
        self._peer._emit_text("reply", text)

    def _failed(self, handle: int, reason: str, exc: Exception) -> None:
        """A link could not even start: the core hears of it at once (the pump drains)."""
        _log.warning("link %d: %s: %r", handle, reason, exc)
        core = self._peer._core
        if core is not None:
            core.link_closed(handle, time.time(), reason)
