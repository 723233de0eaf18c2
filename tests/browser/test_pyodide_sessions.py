"""End-to-end encrypted sessions from a page: send, deliver, request, in Chromium under Pyodide.

One network for the whole module (a mute Python hub that relays everything, a Python peer and
two pages, none of them linked but to the hub), so every message below crosses the hub; a tap
in front of it keeps all it sends on the wire, where the payloads must not appear. The pages
run the pure-Python Noise of :mod:`peer_relay.purecrypto` (Pyodide has no ``cryptography``),
the Python peers ``cryptography``'s: the two implementations also meet here.

Skipped like ``test_pyodide_browser.py`` when Chromium, Playwright or the web build is missing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from peer_relay import DeliveryError, PeerRelay, RemoteError, wire
from peer_relay.browser.peer import stand_in

from .test_pyodide_browser import (
    CHROMIUM,
    FLAGS,
    MUTE,
    QUIET,
    Page,
    _unavailable,
    next_message,
    open_peer,
    record,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.asyncio(loop_scope="module"),
]

NOBODY = "00" * 20
"""An id nobody holds."""

SETUP = """() => {
  // The page's request handler: echoes, fails on demand, or answers on a later turn.
  window.handler = async (data, from, info) => {
    if (data && data.fail) throw new Error(data.fail)
    if (data && data.later) await new Promise((resolve) => setTimeout(resolve, 20))
    return { echo: data, by: window.peer.id, from, hops: info.hops }
  }
  window.peer.on('request', window.handler)
  // The outcome of a promise as plain values, the error's name and message included.
  window.outcome = async (promise) => {
    const t0 = performance.now()
    try {
      return { ok: true, value: await promise, ms: performance.now() - t0 }
    } catch (err) {
      return { ok: false, name: err.name, message: err.message, reason: err.reason,
               isError: err instanceof Error, ms: performance.now() - t0 }
    }
  }
  // Whether a call throws synchronously, and what.
  window.thrown = (fn) => {
    try {
      const result = fn()
      if (result instanceof Promise) result.catch(() => {})
      return null
    } catch (err) {
      return [err.name, err.message]
    }
  }
}"""

DELIVER = "([to, data, t]) => outcome(window.peer.deliver(to, data, { timeout: t }))"
REQUEST = "([to, data, t]) => outcome(window.peer.request(to, data, { timeout: t }))"


class Tap:
    """A TCP relay in front of the hub that keeps all the hub sends. A server's WebSocket
    frames are not masked, and our links use no compression: their text is there to read."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def text(self) -> str:
        return "\n".join(stream.decode("utf-8", "replace") for stream in self.streams)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            hub_reader, hub_writer = await asyncio.open_connection("127.0.0.1", self.port)
            kept = bytearray()
            self.streams.append(kept)
            await asyncio.gather(_pipe(reader, hub_writer, None), _pipe(hub_reader, writer, kept))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, kept: bytearray | None
) -> None:
    try:
        while data := await source.read(1 << 16):
            if kept is not None:
                kept += data
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


@dataclass
class Net:
    hub: PeerRelay
    py: PeerRelay
    p1: Page
    p2: Page
    tap: Tap

    def relayed_text(self) -> str:
        """Every byte the hub sent, from the start."""
        return self.tap.text()


def _handler(data: Any, sender: bytes) -> Any:
    if isinstance(data, dict) and "fail" in data:
        raise ValueError(data["fail"])
    return {"echo": data, "by": "py", "from": sender.hex()}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(web_build: Path) -> AsyncIterator[Net]:
    from peer_relay.browser.server import WebServer

    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed")
        raise
    hub = await PeerRelay(port=0, host="127.0.0.1", **MUTE).start()
    assert hub.url is not None
    tap = Tap(int(hub.url.rsplit(":", 1)[1]))
    hub_url = await tap.start()  # every peer reaches the hub through the tap
    py = await PeerRelay(port=0, host="127.0.0.1", bootstrap=[hub_url], **QUIET).start()
    py.on("request", _handler)
    try:
        await py.wait_for_peers(1)
        async with WebServer(web_build) as web, async_playwright() as pw:
            await web.start("127.0.0.1", 0)
            chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                p1, p2 = [await open_peer(chromium, web, [hub_url]) for _ in range(2)]
                for page in (p1, p2):
                    await page.wait("window.peer.peers.length > 0")
                    assert await page.peers() == {hub.id.hex(): "ws"}
                    await page.eval(SETUP)
                assert set(py.peers) == {hub.id}
                yield Net(hub, py, p1, p2, tap)
                assert p1.errors == [] and p2.errors == []
            finally:
                await chromium.close()
    finally:
        await py.destroy()
        await hub.destroy()
        await tap.close()


async def test_send_is_encrypted_end_to_end(net: Net) -> None:
    inbox = net.py.messages()
    first = "secret-from-page-to-py"
    started = time.perf_counter()
    await net.p1.send(net.py.id, {"text": first})
    message = await next_message(inbox)
    record("page -> Python send, first (key exchange, handshake)", _ms(started))
    assert (message.data, message.sender.hex()) == ({"text": first}, net.p1.id)
    assert message.verified and message.hops == 2  # through the hub
    net.py.send(net.p1.id, "secret-from-py-to-page")
    await net.p2.send(net.p1.id, ["secret-from-page-to-page", 1.5, None])
    await net.p1.wait("window.inbox.length >= 2")
    got = {m["from"]: m for m in await net.p1.inbox()}
    assert got[net.py.id.hex()]["data"] == "secret-from-py-to-page"
    assert got[net.p2.id]["data"] == ["secret-from-page-to-page", 1.5, None]
    assert all(m["verified"] and m["hops"] == 2 for m in got.values())

    # The hub relayed all of it, sealed: no payload in its frames.
    text = net.relayed_text()
    assert text.count('"sealed"') >= 6, text[:2000]
    for secret in (first, "secret-from-py-to-page", "secret-from-page-to-page"):
        assert secret not in text


async def test_deliver_resolves_once_received(net: Net) -> None:
    inbox = net.py.messages()
    done = await net.p1.eval(DELIVER, [net.py.id.hex(), {"deliver": "to py"}, 5])
    assert done["ok"] and done["value"] is None, done
    assert (await next_message(inbox, 0.1)).data == {"deliver": "to py"}

    # Page to page: received, so in the other page's inbox, by the time the promise resolves.
    before = len(await net.p2.inbox())
    done = await net.p1.eval(DELIVER, [net.p2.id, {"deliver": "to p2"}, 5])
    assert done["ok"], done
    record("page -> page deliver (session open)", done["ms"])
    arrived = (await net.p2.inbox())[before:]
    assert [(m["data"], m["from"]) for m in arrived] == [({"deliver": "to p2"}, net.p1.id)]

    # Python to page, and a page to its own id (the outcome comes before the token).
    before = len(await net.p1.inbox())
    await net.py.deliver(net.p1.id, "to p1", timeout=5)
    assert (await net.p1.inbox())[before]["data"] == "to p1"
    done = await net.p1.eval(DELIVER, [net.p1.id, "to myself", 5])
    assert done["ok"], done
    assert (await net.p1.inbox())[-1] == {
        "data": "to myself",
        "from": net.p1.id,
        "verified": True,
        "hops": 0,
    }
    assert "to p2" not in net.relayed_text() and "to myself" not in net.relayed_text()


async def test_requests_get_replies_both_ways(net: Net) -> None:
    # Page -> Python.
    done = await net.p1.eval(REQUEST, [net.py.id.hex(), {"q": 1}, 5])
    assert done == {**done, "ok": True}
    assert done["value"] == {"echo": {"q": 1}, "by": "py", "from": net.p1.id}
    # Python -> page: the page's handler gets the sender and the hops.
    reply = await net.py.request(net.p1.id, ["question", 2], timeout=5)
    assert reply == {"echo": ["question", 2], "by": net.p1.id, "from": net.py.id.hex(), "hops": 2}
    # Page -> page, either way, with a handler that answers on a later turn.
    done = await net.p1.eval(REQUEST, [net.p2.id, {"later": True, "n": "é😀"}, 5])
    assert done["ok"] and done["value"]["echo"] == {"later": True, "n": "é😀"}, done
    assert done["value"]["by"] == net.p2.id and done["value"]["from"] == net.p1.id
    record("page -> page request (session open)", done["ms"])
    done = await net.p2.eval(REQUEST, [net.p1.id, "back", 5])
    assert done["ok"] and done["value"]["by"] == net.p1.id, done
    assert '"q"' not in net.relayed_text() and "question" not in net.relayed_text()


async def test_a_request_to_itself_goes_to_its_own_handler(net: Net) -> None:
    done = await net.p1.eval(REQUEST, [net.p1.id, "self", 5])
    assert done["ok"], done
    assert done["value"] == {"echo": "self", "by": net.p1.id, "from": net.p1.id, "hops": 0}


async def test_a_failing_handler_is_the_callers_remote_error(net: Net) -> None:
    done = await net.p1.eval(REQUEST, [net.py.id.hex(), {"fail": "py says no"}, 5])
    assert (done["ok"], done["name"], done["message"]) == (False, "RemoteError", "py says no")
    assert done["isError"]
    with pytest.raises(RemoteError, match=r"^page says no$"):
        await net.py.request(net.p1.id, {"fail": "page says no"}, timeout=5)
    done = await net.p2.eval(REQUEST, [net.p1.id, {"fail": "p1 says no"}, 5])
    assert (done["ok"], done["name"], done["message"]) == (False, "RemoteError", "p1 says no")
    # A page without a handler, and a reply JSON cannot carry, as the Python peer's say.
    await net.p2.eval("() => window.peer.off('request', window.handler)")
    try:
        with pytest.raises(RemoteError, match=f"^no request handler at {net.p2.id[:8]}$"):
            await net.py.request(net.p2.id, "anyone?", timeout=5)
        await net.p2.eval("() => window.peer.on('request', window.nan = () => [1, NaN])")
        with pytest.raises(RemoteError) as info:
            await net.py.request(net.p2.id, "NaN?", timeout=5)
        with pytest.raises(ValueError) as core_says:  # the core's own check of a reply
            wire.canonical([1, float("nan")])
        assert str(info.value) == f"the handler's reply cannot be sent: {core_says.value}"
    finally:
        await net.p2.eval(
            "() => window.peer.off('request', window.nan).on('request', window.handler)"
        )


async def test_deliver_to_nobody_rejects_within_its_timeout(net: Net) -> None:
    deliver, request = await asyncio.gather(
        net.p1.eval(DELIVER, [NOBODY, "anyone?", 1]),
        net.p1.eval(REQUEST, [NOBODY, "anyone?", 1.5]),
    )
    assert (deliver["ok"], deliver["name"]) == (False, "DeliveryError"), deliver
    assert deliver["message"] == f"not delivered: {deliver['reason']}"
    assert "00000000" in deliver["reason"]
    assert 900 <= deliver["ms"] < 3000, deliver
    assert (request["ok"], request["name"]) == (False, "DeliveryError"), request
    assert request["message"].startswith("no reply: ")
    assert 1400 <= request["ms"] < 3500, request
    # The Python API says the same of the same.
    with pytest.raises(DeliveryError) as info:
        await net.py.deliver(NOBODY, "anyone?", timeout=1)
    assert str(info.value).startswith("not delivered: 00000000 ")
    assert deliver["message"].startswith("not delivered: 00000000 ")


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


def _self_object() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = {"up": value}
    return value


Call = tuple[str, tuple[Any, ...], dict[str, Any]]
NAN, INF = float("nan"), float("inf")
UNDEFINED = stand_in("undefined")

BAD_CALLS: list[tuple[str, Callable[[str], Call]]] = [
    # (the page's call, with PY the Python peer's id; the same call to the Python API)
    # Ids: wrong length, not hex, wrong type, in every call that takes one.
    ("peer.send('zz', 1)", lambda py: ("send", ("zz", 1), {})),
    ("peer.send(PY.slice(2), 1)", lambda py: ("send", (py[2:], 1), {})),
    (
        "peer.send(PY.toUpperCase().slice(1) + 'G', 1)",
        lambda py: ("send", (py.upper()[1:] + "G", 1), {}),
    ),
    ("peer.deliver('g'.repeat(40), 1)", lambda py: ("deliver", ("g" * 40, 1), {})),
    ("peer.request(PY + '0', 1)", lambda py: ("request", (py + "0", 1), {})),
    ("peer.send(42, 1)", lambda py: ("send", (42, 1), {})),
    ("peer.send(1.5, 1)", lambda py: ("send", (1.5, 1), {})),
    ("peer.send(null, 1)", lambda py: ("send", (None, 1), {})),
    ("peer.deliver(undefined, 1)", lambda py: ("deliver", (None, 1), {})),
    ("peer.send(true, 1)", lambda py: ("send", (True, 1), {})),
    ("peer.send([1, 2], 1)", lambda py: ("send", ([1, 2], 1), {})),
    ("peer.send(new Uint8Array(5), 1)", lambda py: ("send", (bytes(5), 1), {})),
    (
        "peer.send({ type: 'Buffer', data: [1, 2] }, 1)",
        lambda py: ("send", ({"type": "Buffer", "data": [1, 2]}, 1), {}),
    ),
    ("peer.send(() => 1, 1)", lambda py: ("send", (lambda: 1, 1), {})),
    ("peer.send(Symbol('x'), 1)", lambda py: ("send", (stand_in("symbol"), 1), {})),
    ("peer.send(new Map(), 1)", lambda py: ("send", (stand_in("Map"), 1), {})),
    ("peer.connect('zz')", lambda py: ("connect", ("zz",), {})),
    ("peer.connect(7)", lambda py: ("connect", (7,), {})),
    ("peer.disconnect(PY.slice(1))", lambda py: ("disconnect", (py[1:],), {})),
    ("peer.disconnect(null)", lambda py: ("disconnect", (None,), {})),
    # Data JSON cannot carry unchanged.
    ("peer.send(PY, NaN)", lambda py: ("send", (py, NAN), {})),
    ("peer.send(PY, [Infinity])", lambda py: ("send", (py, [INF]), {})),
    ("peer.request(PY, { a: [1, -Infinity] })", lambda py: ("request", (py, {"a": [1, -INF]}), {})),
    ("peer.deliver(PY, undefined)", lambda py: ("deliver", (py, UNDEFINED), {})),
    ("peer.request(PY, [1, undefined])", lambda py: ("request", (py, [1, UNDEFINED]), {})),
    ("peer.send(PY, { f: 1n })", lambda py: ("send", (py, {"f": stand_in("bigint")}), {})),
    ("peer.send(PY, 2n ** 70n)", lambda py: ("send", (py, stand_in("bigint")), {})),
    ("peer.send(PY, () => 1)", lambda py: ("send", (py, lambda: 1), {})),
    ("peer.deliver(PY, [Symbol('s')])", lambda py: ("deliver", (py, [stand_in("symbol")]), {})),
    ("peer.send(PY, new Map([[1, 2]]))", lambda py: ("send", (py, stand_in("Map")), {})),
    ("peer.send(PY, { s: new Set([1]) })", lambda py: ("send", (py, {"s": stand_in("Set")}), {})),
    ("peer.send(PY, new Uint8Array(3))", lambda py: ("send", (py, stand_in("Uint8Array")), {})),
    (
        "peer.send(PY, (() => { const a = []; a.push(a); return a })())",
        lambda py: ("send", (py, _cycle()), {}),
    ),
    (
        "peer.deliver(PY, (() => { const o = { a: 1 }; o.self = { up: o }; return o })())",
        lambda py: ("deliver", (py, _self_object()), {}),
    ),
    ("peer.deliver(PY, 'a\\ud800b')", lambda py: ("deliver", (py, "a\ud800b"), {})),
    ("peer.deliver(PY, 'x'.repeat(800000))", lambda py: ("deliver", (py, "x" * 800_000), {})),
    (
        "peer.request(PY, JSON.parse('['.repeat(130) + ']'.repeat(130)))",
        lambda py: ("request", (py, _deep(130)), {}),
    ),
    (
        "peer.send(PY, JSON.parse('['.repeat(5000) + ']'.repeat(5000)))",
        lambda py: ("send", (py, _deep(5000)), {}),
    ),
    # Timeouts.
    ("peer.deliver(PY, 1, { timeout: -1 })", lambda py: ("deliver", (py, 1), {"timeout": -1})),
    ("peer.request(PY, 1, { timeout: 0 })", lambda py: ("request", (py, 1), {"timeout": 0})),
    ("peer.deliver(PY, 1, { timeout: '5' })", lambda py: ("deliver", (py, 1), {"timeout": "5"})),
    ("peer.deliver(PY, 1, { timeout: NaN })", lambda py: ("deliver", (py, 1), {"timeout": NAN})),
    ("peer.request(PY, 1, { timeout: [5] })", lambda py: ("request", (py, 1), {"timeout": [5]})),
    ("peer.deliver(PY, 1, { timeout: {} })", lambda py: ("deliver", (py, 1), {"timeout": {}})),
]

FAILURE = """async ([PY, call]) => {
  // How a call fails: at once (a throw) or later (a rejection), with what error.
  const peer = window.peer
  let when = 'at once'
  try {
    const result = eval(call)
    when = 'later'
    await result
    return null
  } catch (err) {
    return { when, name: err.name, message: err.message, isError: err instanceof Error,
             constructor: err.constructor.name }
  }
}"""


async def python_error(node: PeerRelay, call: Call) -> list[str]:
    """``[type name, message]`` of what the Python API raises for ``call``."""
    method, args, kwargs = call
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        result = getattr(node, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            await result
    return [type(info.value).__name__, str(info.value)]


async def test_bad_calls_fail_as_in_python(net: Net) -> None:
    py_hex = net.py.id.hex()
    for js, python in BAD_CALLS:
        failure = await net.p1.eval(FAILURE, [py_hex, js])
        assert failure is not None, f"{js} did not fail"
        expected = await python_error(net.py, python(py_hex))
        assert [failure["name"], failure["message"]] == expected, js
        # The same kind of error (a TypeError is JavaScript's own), thrown by every call but
        # connect(), which is async as in Python.
        assert failure["isError"] and failure["constructor"] == failure["name"], (js, failure)
        assert failure["when"] == ("later" if js.startswith("peer.connect(") else "at once"), (
            js,
            failure,
        )
    # The page's API shape, which Python does not share: options are an object.
    failure = await net.p1.eval(FAILURE, [py_hex, "peer.request(PY, 1, 5)"])
    assert failure == {
        "when": "at once",
        "name": "TypeError",
        "message": "the options are an object such as { timeout: 10 }, not 5",
        "isError": True,
        "constructor": "TypeError",
    }

    # Members that are undefined are left out, as JSON.stringify does; toJSON is honoured;
    # send(id) sends null.
    inbox = net.py.messages()
    await net.p1.eval(
        "(to) => window.peer.send(to, { a: undefined, f () {}, d: new Date(0), big: 2 ** 60 })",
        py_hex,
    )
    message = await next_message(inbox)
    assert message.data["d"] == "1970-01-01T00:00:00.000Z" and set(message.data) == {"d", "big"}
    assert float(message.data["big"]) == 2.0**60
    await net.p1.eval("(to) => window.peer.send(to)", py_hex)
    assert (await next_message(inbox)).data is None
    # Ids in every form the Python API takes: upper-case hex, bytes, Buffer JSON.
    await net.p1.eval(
        """(to) => {
          const bytes = Uint8Array.from(to.match(/../g), (h) => parseInt(h, 16))
          window.peer.send(to.toUpperCase(), 'upper')
          window.peer.send(bytes, 'bytes')
          window.peer.send({ type: 'Buffer', data: [...bytes] }, 'buffer')
        }""",
        py_hex,
    )
    got = [(await next_message(inbox)).data for _ in range(3)]
    assert sorted(got) == ["buffer", "bytes", "upper"]

    # Before ready, the same errors reject deliver() and come as send()'s 'error' event; once
    # destroyed, calls throw RuntimeError, and what was waiting rejects.
    outcome = await net.p1.eval(
        """async (to) => {
          const { PeerRelay } = await import('/peer-relay.js')
          const early = new PeerRelay({ options: { refresh_interval: 3600 } })
          const errors = []
          early.on('error', (err) => errors.push([err.name, err.message]))
          const rejected = outcome(early.deliver('zz', 1))
          early.send(to, NaN)
          await early.ready
          early.destroy()
          const peer = new PeerRelay({ options: { refresh_interval: 3600 } })
          await peer.ready
          const waiting = outcome(peer.deliver(to, 'never', { timeout: 30 }))
          peer.destroy()
          return [await rejected, errors, await waiting, thrown(() => peer.deliver(to, 1)),
                  thrown(() => peer.send(to, 1))]
        }""",
        py_hex,
    )
    rejected, errors, waited, *destroyed = outcome
    assert [rejected["name"], rejected["message"]] == await python_error(
        net.py, ("deliver", ("zz", 1), {})
    )
    assert errors == [await python_error(net.py, ("send", (py_hex, NAN), {}))]
    assert (waited["ok"], waited["name"]) == (False, "DeliveryError")
    assert waited["message"].endswith("this peer was destroyed before an answer came")
    gone = PeerRelay()
    await gone.destroy()
    assert destroyed[0] == await python_error(gone, ("deliver", (py_hex, 1), {}))
    assert destroyed[1] == await python_error(gone, ("send", (py_hex, 1), {}))

    # Bad ICE settings: the page's peer fails to start with Python's error, word for word.
    turn = "turn:10.0.0.1:3478"
    for options, python_kwargs in (
        ("{ iceServers: ['TURN'] }", {"ice_servers": [turn]}),
        ("{ iceServers: ['http://x'] }", {"ice_servers": ["http://x"]}),
        (
            "{ iceServers: ['stun:10.0.0.1'], iceUsername: 'u', iceCredential: 'p' }",
            {"ice_servers": ["stun:10.0.0.1"], "ice_username": "u", "ice_credential": "p"},
        ),
    ):
        failed = await net.p1.eval(
            """async (options) => {
              const { PeerRelay } = await import('/peer-relay.js')
              const peer = new PeerRelay(eval('(' + options + ')'))
              peer.on('error', () => {})
              return await peer.ready.then(() => null, (err) => [err.name, err.message])
            }""",
            options.replace("TURN", turn),
        )
        with pytest.raises(ValueError) as info:
            PeerRelay(**python_kwargs)
        assert failed == ["ValueError", str(info.value)], options


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
