"""BrowserPeer in CPython, against stand-ins for the browser's objects (no browser needed).

The real thing runs in Chromium in ``test_pyodide_browser.py``; here the adapter's own logic is
pinned down fast: the pump, the timer, frames both ways with a real core on the other end, and
remote signals that are malformed (they arrive from the network, so they must be counted and
dropped, never raise).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from peer_relay import wire
from peer_relay.browser import BrowserPeer
from peer_relay.browser.peer import _RtcLink
from peer_relay.core import Config, Core
from peer_relay.events import (
    Delivered,
    PeerLinked,
    Reply,
    RequestReceived,
    SendFrame,
)
from peer_relay.identity import Identity


class FakeWebSocket:
    instances: ClassVar[list[FakeWebSocket]] = []

    def __init__(self, url: str) -> None:
        self.url = url
        self.readyState = 0
        self.bufferedAmount = 0
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.onopen = self.onmessage = self.onclose = self.onerror = None
        FakeWebSocket.instances.append(self)

    def send(self, text: str) -> None:
        self.sent.append(text)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.readyState = 3


class FakePeerConnection:
    instances: ClassVar[list[FakePeerConnection]] = []

    def __init__(self, config: Any) -> None:
        self.config = config
        self.remote: list[Any] = []
        self.candidates: list[Any] = []
        self.localDescription: Any = None
        self.connectionState = "new"
        self.closed = False
        self.onicecandidate = self.onconnectionstatechange = self.ondatachannel = None
        FakePeerConnection.instances.append(self)

    def createDataChannel(self, label: str, options: Any) -> Any:
        return types.SimpleNamespace(
            label=label, readyState="connecting", bufferedAmount=0, close=lambda: None
        )

    async def createOffer(self) -> Any:
        return {"type": "offer", "sdp": "v=0 offer"}

    async def createAnswer(self) -> Any:
        return {"type": "answer", "sdp": "v=0 answer"}

    async def setLocalDescription(self, description: Any) -> None:
        self.localDescription = types.SimpleNamespace(**description)

    async def setRemoteDescription(self, description: Any) -> None:
        self.remote.append(description)

    async def addIceCandidate(self, candidate: Any) -> None:
        self.candidates.append(candidate)

    def close(self) -> None:
        self.closed = True


class Timers:
    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, Any]] = {}
        self.next_id = 1

    def set(self, fn: Any, ms: float = 0) -> int:
        tid = self.next_id
        self.next_id += 1
        self.pending[tid] = (ms, fn)
        return tid

    def clear(self, tid: int) -> None:
        self.pending.pop(tid, None)


@pytest.fixture
def fake_browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timers]:
    timers = Timers()
    js = types.ModuleType("js")
    js.WebSocket = types.SimpleNamespace(new=FakeWebSocket)  # type: ignore[attr-defined]
    js.RTCPeerConnection = types.SimpleNamespace(new=FakePeerConnection)  # type: ignore[attr-defined]
    js.Object = types.SimpleNamespace(fromEntries=dict)  # type: ignore[attr-defined]
    js.setTimeout = timers.set  # type: ignore[attr-defined]
    js.clearTimeout = timers.clear  # type: ignore[attr-defined]
    ffi = types.ModuleType("pyodide.ffi")

    class Proxy:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __call__(self, *args: Any) -> Any:
            return self.fn(*args)

        def destroy(self) -> None:
            pass

    ffi.create_proxy = Proxy  # type: ignore[attr-defined]
    ffi.create_once_callable = Proxy  # type: ignore[attr-defined]
    ffi.to_js = lambda value, dict_converter=None: value  # type: ignore[attr-defined]
    pyodide = types.ModuleType("pyodide")
    pyodide.ffi = ffi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "js", js)
    monkeypatch.setitem(sys.modules, "pyodide", pyodide)
    monkeypatch.setitem(sys.modules, "pyodide.ffi", ffi)
    FakeWebSocket.instances.clear()
    FakePeerConnection.instances.clear()
    yield timers


def event(**fields: Any) -> Any:
    return types.SimpleNamespace(**fields)


class Linked:
    """A BrowserPeer on a fake WebSocket to a real core (``server``); :meth:`pump` moves the
    frames both ways until neither side has more, and returns the server's other events."""

    def __init__(self, fake_browser: Timers) -> None:
        self.emitted: list[tuple[str, Any]] = []
        self.peer = BrowserPeer(
            emit=lambda name, args: self.emitted.append((name, json.loads(args))),
            bootstrap=["ws://server"],
        )
        self.peer.start()
        [self.ws] = FakeWebSocket.instances
        assert self.ws.url == "ws://server"
        assert fake_browser.pending, "the core's timer is armed"
        self.server_id = Identity.generate()
        now = time.time()
        self.server = Core(self.server_id, Config(url="ws://server"), rng=random.Random(1), now=now)
        self.handle = self.server.link_accepted(now)
        self.ws.readyState = 1
        self.ws.onopen(event())  # type: ignore[misc]

    def pump(self) -> list[Any]:
        ws, server = self.ws, self.server
        out = []
        for _ in range(20):
            frames, ws.sent = ws.sent, []
            for frame in frames:
                server.frame_received(self.handle, frame, time.time())
            moved = bool(frames)
            for ev in server.events():
                if isinstance(ev, SendFrame):
                    ws.onmessage(event(data=ev.frame.decode()))  # type: ignore[misc]
                    moved = True
                else:
                    out.append(ev)
            if not moved:
                break
        return out


async def test_pump_over_a_fake_websocket_to_a_real_core(fake_browser: Timers) -> None:
    linked = Linked(fake_browser)
    peer, server_id, ws, emitted, pump = (
        linked.peer,
        linked.server_id,
        linked.ws,
        linked.emitted,
        linked.pump,
    )
    server = linked.server

    out = pump()
    assert any(isinstance(e, PeerLinked) and e.authenticated for e in out)
    assert ("peer", [server_id.id.hex(), "ws"]) in emitted
    assert json.loads(peer.peers_json()) == [{"id": server_id.id.hex(), "transport": "ws"}]

    peer.send(server_id.id.hex(), json.dumps({"hello": [1, "é"]}))
    delivered = [e for e in pump() if isinstance(e, Delivered)]
    assert [(d.data, d.sender, d.verified) for d in delivered] == [
        ({"hello": [1, "é"]}, peer.id, True)
    ]
    server.send(peer.id, "back", time.time())
    pump()
    assert ("message", ["back", server_id.id.hex(), {"verified": True, "hops": 1}]) in emitted

    # A binary frame is counted, not parsed; the remote closing ends the link.
    ws.onmessage(event(data=object()))  # type: ignore[misc]
    ws.onclose(event(code=1006))  # type: ignore[misc]
    assert ("peer-closed", [server_id.id.hex(), "remote closed (1006)"]) in emitted
    assert json.loads(peer.stats_json())["dropped"]["binary-frame"] == 1
    peer.close()
    assert not fake_browser.pending or all(ms == 0 for ms, _ in fake_browser.pending.values())


async def test_deliveries_and_requests_cross_with_their_tokens_as_text(
    fake_browser: Timers,
) -> None:
    linked = Linked(fake_browser)
    peer, server, emitted, pump = linked.peer, linked.server, linked.emitted, linked.pump
    server_hex = linked.server_id.id.hex()
    pump()

    # deliver: the token (64 bits: more than a JavaScript number holds) comes back as text,
    # and so does the event that ends it. 2**60 from JavaScript was a double: it is sent as
    # one, not refused as an integer beyond I-JSON's.
    token = peer.deliver(server_hex, json.dumps({"n": 2**60, "x": [1.5, "é"]}), 5.0)
    assert isinstance(token, str) and int(token) > 0
    out = pump()
    [got] = [e for e in out if isinstance(e, Delivered)]
    assert got.data["x"] == [1.5, "é"] and float(got.data["n"]) == 2.0**60
    assert ("delivery", [token, True, ""]) in emitted

    # request from the page: the server's handler answers through its core.
    token = peer.request(server_hex, '"ping"', 5.0)
    [asked] = [e for e in pump() if isinstance(e, RequestReceived)]
    assert (asked.data, asked.sender) == ("ping", peer.id)
    server.respond(asked.token, {"pong": True}, time.time())
    pump()
    [reply] = [args for name, args in emitted if name == "reply"]
    assert reply[:4] == [token, True, {"pong": True}, ""]

    # requests to the page: answered with a value, an error, and a value that is not I-JSON.
    answers = {}
    for value_json, error in (("[1, 2]", None), ("null", "it broke"), ("NaN", None)):
        ask = server.request(peer.id, {"q": value_json}, time.time(), 5.0)
        pump()
        [(_, (req_token, data, sender, hops))] = [e for e in emitted if e[0] == "request"]
        emitted.clear()
        assert (data, sender, hops) == ({"q": value_json}, server_hex, 1)
        assert isinstance(req_token, str)
        assert peer.respond(req_token, value_json, error) is True
        assert peer.respond(req_token, value_json, error) is False  # answered already
        [reply] = [e for e in pump() if isinstance(e, Reply)]
        assert reply.token == ask
        answers[value_json] = (reply.ok, reply.value, reply.error, reply.remote)
    assert answers["[1, 2]"][:2] == (True, [1, 2])
    assert answers["null"] == (False, None, "it broke", True)
    ok, _value, why, remote = answers["NaN"]
    assert (ok, remote) == (False, True)
    with pytest.raises(ValueError) as core_says:  # the core's own check, word for word
        wire.canonical(float("nan"))
    assert why == f"the handler's reply cannot be sent: {core_says.value}"

    # Bad calls raise at once, as the asyncio API's do; nothing is sent.
    for call, kind in (
        (lambda: peer.deliver("zz", "1", 5.0), ValueError),
        (lambda: peer.deliver(server_hex, "NaN", 5.0), ValueError),
        (lambda: peer.request(server_hex, "1", -1), ValueError),
        (lambda: peer.request(server_hex, "[" * 200 + "]" * 200, 5.0), ValueError),
    ):
        with pytest.raises(kind):
            call()
    assert linked.ws.sent == []

    # A delivery nobody confirms fails with the core's reason when its time is up.
    token = peer.deliver("00" * 20, "1", 0.5)
    for _ in range(3):
        for tid, (_ms, fn) in list(fake_browser.pending.items()):
            fake_browser.pending.pop(tid, None)
            await asyncio.sleep(0.3)
            fn()
        pump()
    [failed] = [e for e in emitted if e[0] == "delivery" and e[1][0] == token]
    assert failed[1][1] is False and "did not answer" in failed[1][2]
    peer.close()
    assert peer.respond(req_token, "1") is False


async def test_malformed_remote_signals_are_counted_and_dropped(fake_browser: Timers) -> None:
    peer = BrowserPeer(emit=lambda name, args: None)
    peer.start()
    link = _RtcLink(peer, 99, initiator=False)
    garbage: list[Any] = [
        None,
        "offer",
        [],
        {},
        {"type": "offer"},
        {"sdp": 5, "type": "offer"},
        {"sdp": "x" * 70_000, "type": "offer"},
        {"sdp": "v=0", "type": "answer"},  # the answerer never takes an answer
        {"sdp": "v=0", "type": "pranswer"},
        {"candidate": "a=candidate"},
        {"candidate": {"candidate": ""}},  # end-of-candidates marker
        {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}},  # no mid/index
        {"candidate": {"candidate": "c", "sdpMid": 0}},
        {"candidate": {"candidate": "c" * 2000, "sdpMid": "0"}},
        {"renegotiate": True},
    ]
    for signal in garbage:
        link.add_signal(signal)
    assert sum(link.dropped.values()) == len(garbage)
    # The very checks, and reasons, of the aiortc link (peer_relay.transports.signals).
    assert link.dropped == {
        "not-an-object": 3,
        "unknown-signal": 2,
        "bad-sdp": 1,
        "sdp-too-long": 1,
        "unexpected-answer": 1,
        "bad-description-type": 1,
        "bad-candidate": 2,
        "empty-candidate": 1,
        "bad-candidate-mid": 2,
        "renegotiate": 1,
    }
    # Valid ones: candidates before the offer are held until the description is set.
    candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMLineIndex": 0}
    link.add_signal({"type": "candidate", "candidate": candidate})
    link.add_signal({"type": "offer", "sdp": "v=0 remote offer"})
    for _ in range(50):
        await asyncio.sleep(0)
    pc = FakePeerConnection.instances[-1]
    assert pc.remote == [{"type": "offer", "sdp": "v=0 remote offer"}]
    assert pc.candidates == [{"candidate": candidate["candidate"], "sdpMLineIndex": 0}]
    assert pc.localDescription.type == "answer"
    # Unlike aiortc, a browser resolves mDNS names: their candidates are kept.
    mdns = "candidate:2 1 udp 2122 1f0a3c2e-8f5d-4b1e-9c77-0123456789ab.local 5000 typ host"
    link.add_signal({"type": "candidate", "candidate": {"candidate": mdns, "sdpMid": "0"}})
    link.add_signal({"type": "offer", "sdp": "v=0 again"})
    for _ in range(50):
        await asyncio.sleep(0)
    assert pc.candidates[-1] == {"candidate": mdns, "sdpMid": "0"}
    assert link.dropped["duplicate-description"] == 1
    link.close("test")
    assert pc.closed
    link.add_signal({"type": "candidate", "candidate": {"candidate": mdns, "sdpMid": "0"}})
    assert link.dropped["closed"] == 1
    peer.close()


SESSION_IN_THE_BUNDLE = """
import sys
from peer_relay import noise
from peer_relay import wire
from peer_relay.browser import BrowserPeer
from peer_relay.identity import Identity
from peer_relay.sealing import NoiseSuite, x25519_public_from_ed25519

assert noise.backend() == "purecrypto", noise.backend()
a, b = Identity.generate(), Identity.generate()
i = NoiseSuite(a.private_bytes()).initiator(b"p", x25519_public_from_ed25519(b.public_key))
r = NoiseSuite(b.private_bytes()).responder(b"p")
assert r.read(i.write(b"hello")) == b"hello"
assert i.read(r.write(b"back")) == b"back"
(send, _), (_, receive) = i.keys(), r.keys()
assert receive.open(7, b"ad", send.seal(7, b"ad", b"x" * 100)) == b"x" * 100
print(sorted(name for name in sys.modules if name.startswith("peer_relay")))
"""


def test_the_bundle_carries_sessions_without_cryptography(tmp_path: Any) -> None:
    """The web build's zip, alone with the standard library (as in Pyodide: no cryptography,
    orjson, msgspec or websockets), runs a Noise handshake and seals with its pure Python."""
    import subprocess

    from peer_relay.browser.build import _package_zip

    bundle = tmp_path / "peer_relay.zip"
    bundle.write_bytes(_package_zip())
    script = f"import sys; sys.path.insert(0, {str(bundle)!r})\n" + SESSION_IN_THE_BUNDLE
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    for module in ("errors", "sealing", "purecrypto", "noise", "core.sessions", "core.delivery"):
        assert f"peer_relay.{module}" in loaded


def test_what_javascript_marks_is_refused_as_its_python_counterpart() -> None:
    """``peer-relay.js`` marks what JSON cannot carry; Python rebuilds it (stand-ins, cycles),
    and the core refuses it with the words it uses for the Python counterpart."""
    from peer_relay.browser.peer import MARK, _loads, stand_in

    def mark(*kind: Any) -> dict[str, Any]:
        return {MARK: list(kind)}

    def refusal(value: Any) -> str:
        with pytest.raises(ValueError) as info:
            wire.canonical(value)
        return str(info.value)

    value = _loads(json.dumps({"a": [1, mark("cycle", 2)], "u": mark("undefined")}))
    assert value["a"][1] is value and type(value["u"]).__name__ == "undefined"
    cycle: list[Any] = []
    cycle.append(cycle)
    for marked, python in (
        ([1, mark("function")], [1, lambda: 1]),
        ([mark("cycle", 1)], cycle),
        ({"b": mark("bigint")}, {"b": stand_in("bigint")}),
        (mark("Map"), stand_in("Map")),
    ):
        assert refusal(_loads(json.dumps(marked))) == refusal(python), marked
    assert refusal(stand_in("undefined")).endswith("<class 'undefined'>")
    # NaN and the infinities as JavaScript writes them for Python; a user's NUL key is data.
    assert refusal(_loads("[NaN]")) == refusal([float("nan")])
    assert _loads(json.dumps({"\x00js": 1, "b": 2})) == {"\x00js": 1, "b": 2}


def test_errors_of_calls_from_javascript_are_kept_for_the_page() -> None:
    from peer_relay.browser.peer import take_error

    peer = BrowserPeer(emit=lambda name, args: None)
    with pytest.raises(RuntimeError) as info:
        peer.send("00" * 20, "1")  # not started
    assert json.loads(take_error() or "") == ["RuntimeError", str(info.value)]
    assert take_error() is None  # once
    with pytest.raises(ValueError) as bad:
        BrowserPeer(emit=lambda name, args: None, bootstrap=["http://x"])
    assert json.loads(take_error() or "") == ["ValueError", str(bad.value)]
