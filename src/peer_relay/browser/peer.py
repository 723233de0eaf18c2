"""BrowserPeer: the same :class:`~peer_relay.core.Core`, pumped from a web page under Pyodide.

This is the browser's counterpart of :mod:`peer_relay.node`: it carries out what the core asks
for with the browser's own objects, reached through Pyodide's ``js`` module:

- WebSocket links (outgoing only: a page cannot listen) on ``WebSocket``: the link hello and
  proof, then envelopes, one text frame each, exactly as :mod:`peer_relay.transports.websocket`;
- WebRTC links on ``RTCPeerConnection``: one ordered, reliable data channel opened in-band by
  the initiator, signals in simple-peer's format (``{type: "offer"|"answer", sdp}``, and
  trickled ``{type: "candidate", candidate: {candidate, sdpMLineIndex, sdpMid}}``), frames =
  envelopes, as :mod:`peer_relay.transports.webrtc`;
- the core's one timer on ``setTimeout``.

The page script talks to it through ``peer-relay.js``; values cross as JSON text, so no Python
object is held by JavaScript beyond the peer itself. Events go out through one JavaScript
callback, ``emit(name, json_args)``.

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
import importlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..core import Config, Core
from ..events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DialWebSocket,
    PeerLinked,
    PeerUnlinked,
    SendFrame,
    SignalIn,
    StartWebRTC,
)
from ..identity import Identity
from ..ids import parse_id, short

_log = logging.getLogger("peer_relay.browser")

CHANNEL_LABEL = "peer-relay"
MAX_SIGNALS = 256
MAX_SDP_CHARS = 64 * 1024
MAX_CANDIDATE_CHARS = 1024
CLOSE_TIMEOUT = 2.0
"""Seconds a closing WebRTC link waits for its data channel to close before the connection."""


def _js() -> Any:
    return importlib.import_module("js")


def _ffi() -> Any:
    return importlib.import_module("pyodide.ffi")


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
        self._signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._signal_count = 0
        self._have_remote = False
        self._pending: list[dict[str, Any]] = []
        self.opened = False
        self.dropped: dict[str, int] = {}
        servers = [{"urls": url} for url in peer.ice_servers]
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
        reason = self._check_signal(signal)
        if reason is not None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            _log.debug("dropped signal (%s): %.200r", reason, signal)
            return
        self._signals.put_nowait(signal)

    def _check_signal(self, signal: Any) -> str | None:
        if self._closed:
            return "closed"
        if type(signal) is not dict:
            return "not-an-object"
        self._signal_count += 1
        if self._signal_count > MAX_SIGNALS:
            return "too-many-signals"
        if "sdp" in signal:
            sdp, kind = signal.get("sdp"), signal.get("type")
            if type(sdp) is not str or not sdp or len(sdp) > MAX_SDP_CHARS:
                return "bad-sdp"
            if kind not in ("offer", "answer") or (kind == "offer") == self._initiator:
                return "unexpected-description"
            return None
        if "candidate" in signal:
            cand = signal["candidate"]
            if type(cand) is not dict or type(cand.get("candidate")) is not str:
                return "bad-candidate"
            line = cand["candidate"]
            if not line:
                return "empty-candidate"
            if len(line) > MAX_CANDIDATE_CHARS:
                return "bad-candidate"
            mid, index = cand.get("sdpMid"), cand.get("sdpMLineIndex")
            if mid is None and index is None:
                return "bad-candidate-mid"
            if mid is not None and type(mid) is not str:
                return "bad-candidate-mid"
            if index is not None and type(index) is not int:
                return "bad-candidate-mid"
            return None
        return "unknown-signal"

    def close(self, reason: str) -> None:
        """Close the channel first, so that its queued data goes out, then the connection.

        ``RTCPeerConnection.close()`` aborts the association at once (losing what is queued), so
        it waits for the channel's close event, at most :data:`CLOSE_TIMEOUT` seconds.
        """
        if self._closed:
            return
        self._closed = True
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
                signal = await self._signals.get()
                if self._closed:
                    return
                if "sdp" in signal:
                    await self._apply_description(signal)
                if "candidate" in signal:
                    candidate = signal["candidate"]
                    if self._have_remote:
                        await self._add_candidate(candidate)
                    else:
                        self._pending.append(candidate)
        except Exception as exc:
            if not self._closed:
                _log.warning("WebRTC link %d failed: %r", self._handle, exc)
                self.close("failed")

    async def _apply_description(self, signal: dict[str, Any]) -> None:
        if self._have_remote:
            self.dropped["duplicate"] = self.dropped.get("duplicate", 0) + 1
            return
        pc = self._pc
        await pc.setRemoteDescription(_js_object({"type": signal["type"], "sdp": signal["sdp"]}))
        self._have_remote = True
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._add_candidate(candidate)
        if signal["type"] == "offer" and not self._closed:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            self._emit_signal({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _add_candidate(self, candidate: dict[str, Any]) -> None:
        init = {"candidate": candidate["candidate"]}
        if candidate.get("sdpMid") is not None:
            init["sdpMid"] = candidate["sdpMid"]
        if candidate.get("sdpMLineIndex") is not None:
            init["sdpMLineIndex"] = candidate["sdpMLineIndex"]
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
    ``"peer-closed"`` with ``[id_hex, reason]`` and ``"connect"`` with ``[id_hex, ok, reason]``.
    """

    def __init__(
        self,
        *,
        emit: Callable[[str, str], Any],
        bootstrap: Iterable[str] = (),
        identity: Identity | None = None,
        webrtc: bool = True,
        ice_servers: Iterable[str] = (),
        allow_unsigned: bool = False,
        max_link_buffer: int = 16 << 20,
        **options: Any,
    ) -> None:
        self.identity = identity or Identity.generate()
        self.id = self.identity.id
        self.id_hex = self.id.hex()
        self.ice_servers = tuple(ice_servers)
        self.max_link_buffer = max_link_buffer
        self._emit_js = emit
        self._bootstrap = list(bootstrap)
        for url in self._bootstrap:
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"bootstrap URL must be ws:// or wss://, got {url!r}")
        self.config = Config(url=None, webrtc=webrtc, require_auth=not allow_unsigned, **options)
        self._core: Core | None = None
        self._links: dict[int, _WsLink | _RtcLink] = {}
        self._node_drops: dict[str, int] = {}
        self._timer_id: Any = None
        self._timer_at: float | None = None
        self._timer_proxy: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._destroyed = False

    # ------------------------------------------------------------------ API for peer-relay.js

    def start(self) -> None:
        """Create the core and dial the bootstrap peers."""
        if self._core is not None:
            return
        self._timer_proxy = _ffi().create_proxy(self._on_timer)
        self._core = Core(self.identity, self.config, rng=random.SystemRandom(), now=time.time())
        self._core.bootstrap(self._bootstrap, time.time())
        self._flush()

    def send(self, to: str, data_json: str) -> None:
        """Send the JSON value ``data_json`` to peer ``to`` (hex)."""
        core = self._require_core()
        core.send(parse_id(to), json.loads(data_json), time.time())
        self._flush()

    def connect(self, to: str) -> None:
        """Ask for a direct link; the outcome comes as a ``connect`` event."""
        core = self._require_core()
        core.connect(parse_id(to), time.time())
        self._flush()

    def disconnect(self, to: str) -> bool:
        """Close the direct link to ``to``; return whether there was one."""
        core = self._require_core()
        closed = core.disconnect(parse_id(to), time.time())
        self._flush()
        return closed

    def peers_json(self) -> str:
        """``[{"id", "transport"}, ...]`` of the open links, as JSON."""
        core = self._core
        if core is None:
            return "[]"
        return json.dumps(
            [{"id": p.hex(), "transport": core.link_transport(p)} for p in core.peers]
        )

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
        self._links.pop(handle, None)
        core = self._core
        if core is not None and not self._destroyed:
            core.link_closed(handle, time.time(), reason)
            self._flush()

    def _flush(self) -> None:
        core = self._core
        if core is None:
            return
        events = core.events()
        while events:  # handling an event may give the core more to do (a re-routed frame)
            for event in events:
                try:
                    self._handle(event)
                except Exception:
                    _log.exception("handling %r failed", type(event).__name__)
            events = core.events()
        if self._destroyed:
            return
        when = core.get_timer()
        if when is not None and when != self._timer_at:
            js = _js()
            if self._timer_id is not None:
                js.clearTimeout(self._timer_id)
            self._timer_at = when
            self._timer_id = js.setTimeout(self._timer_proxy, max(0.0, when - time.time()) * 1000)

    def _handle(self, event: object) -> None:
        if isinstance(event, SendFrame):
            link = self._links.get(event.handle)
            core = self._core
            # Closing, gone or full: the core takes the link out of routing and re-routes.
            if (link is None or not link.send(event.frame)) and core is not None:
                core.frame_undeliverable(event.handle, event.frame, time.time())
        elif isinstance(event, Delivered):
            info = {"verified": event.verified, "hops": event.hops}
            self._emit("message", [event.data, event.sender.hex(), info])
        elif isinstance(event, CloseLink):
            link = self._links.pop(event.handle, None)
            if link is not None:
                link.close(event.reason)
        elif isinstance(event, DialWebSocket):
            self._links[event.handle] = _WsLink(self, event.handle, event.url)
        elif isinstance(event, StartWebRTC):
            self._links[event.handle] = _RtcLink(self, event.handle, event.initiator)
        elif isinstance(event, SignalIn):
            link = self._links.get(event.handle)
            if isinstance(link, _RtcLink):
                link.add_signal(event.signal)
        elif isinstance(event, PeerLinked):
            _log.info("%s linked to %s (%s)", short(self.id), short(event.peer_id), event.transport)
            self._emit("peer", [event.peer_id.hex(), event.transport])
        elif isinstance(event, PeerUnlinked):
            self._emit("peer-closed", [event.peer_id.hex(), event.reason])
        elif isinstance(event, ConnectResult):
            self._emit("connect", [event.peer_id.hex(), event.ok, event.reason])

    def _emit(self, name: str, args: list[Any]) -> None:
        try:
            self._emit_js(name, json.dumps(args, ensure_ascii=False))
        except Exception:
            _log.exception("%s listener failed", name)

    def _on_timer(self) -> None:
        self._timer_id = None
        self._timer_at = None
        if self._core is not None and not self._destroyed:
            self._core.handle_timer(time.time())
            self._flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
