"""The package in a real browser: Pyodide in Debian's headless Chromium, driven by Playwright.

A page is a full peer: it joins a Python network over WebSocket, links by WebRTC to Python peers
(aiortc) and to other pages, signs its messages, and the demo page shows it all. Everything is
served from 127.0.0.1 (the web build: Pyodide from npm, our package as a zip); no CDN.

Skipped when Chromium, Playwright or the web build (npm ``pyodide``) is unavailable, unless
``PEER_RELAY_REQUIRE_BROWSER=1`` or ``PEER_RELAY_REQUIRE_ORIGINAL=1`` (CI): then it fails.
Timings measured here (page load, WebRTC setup) are printed and written to
``.cache/browser-timings.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from peer_relay import Message, PeerRelay

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PEER_RELAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Quiet and offline (field notes), plus: loopback host candidates for WebRTC, and real addresses
# instead of mDNS names, so that two pages on this machine link without multicast name lookups.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
LOCAL_ICE = ["127.0.0.1"]
# No periodic discovery: peers learn of others only from the peers they link to.
QUIET = {"refresh_interval": 3600.0}
# A relay that answers no discovery request (no tokens): peers linked only to it learn of no
# one, so every link beyond it is one the test asked for.
MUTE = {"refresh_interval": 3600.0, "control_rate": 0.0}
TIMINGS: dict[str, list[float]] = {}

JOIN = """async ({ bootstrap, options }) => {
  const t0 = performance.now()
  const { PeerRelay } = await import('/peer-relay.js')
  const peer = new PeerRelay({ bootstrap, options })
  window.peer = peer
  window.inbox = []
  window.linked = []
  peer.on('message', (data, from, info) => window.inbox.push({ data, from, ...info }))
  peer.on('peer', (id, transport) => window.linked.push({ id, transport }))
  await peer.ready
  window.loadMs = performance.now() - t0
  return peer.id
}"""

CONNECT = """async (id) => {
  const t0 = performance.now()
  await window.peer.connect(id)
  return performance.now() - t0
}"""


def _unavailable(reason: str) -> None:
    required = ("PEER_RELAY_REQUIRE_BROWSER", "PEER_RELAY_REQUIRE_ORIGINAL")  # the latter: CI
    if any(os.environ.get(name) == "1" for name in required):
        pytest.fail(f"the browser tests are required: {reason}")
    pytest.skip(reason)


def record(name: str, value: float) -> None:
    TIMINGS.setdefault(name, []).append(round(value, 1))
    print(f"{name}: {value:.1f} ms")
    out = ROOT / ".cache" / "browser-timings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(TIMINGS, indent=1) + "\n")


@pytest.fixture
async def web(web_build: Path) -> AsyncIterator[Any]:
    from peer_relay.browser.server import WebServer

    server = WebServer(web_build)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed")
        raise
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    """Start Python peers on 127.0.0.1 (port 0); all destroyed at the end."""
    started: list[PeerRelay] = []

    async def start(**kwargs: Any) -> PeerRelay:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("host", "127.0.0.1")
        if kwargs.get("wrtc"):
            kwargs.setdefault("ice_host_addresses", LOCAL_ICE)
        node = PeerRelay(**kwargs)
        started.append(node)
        return await node.start()

    yield start
    await asyncio.gather(*(n.destroy() for n in started), return_exceptions=True)


class Page:
    """A page that runs a peer; ``errors`` collects uncaught page errors."""

    def __init__(self, page: Any, peer_id: str, errors: list[str]) -> None:
        self.page = page
        self.id = peer_id
        self.errors = errors

    async def eval(self, script: str, arg: Any = None, timeout: float = 30.0) -> Any:
        """The value of ``script`` in the page; ``TimeoutError`` rather than hanging."""
        return await asyncio.wait_for(self.page.evaluate(script, arg), timeout)

    async def wait(self, expression: str, arg: Any = None, timeout: float = 15.0) -> None:
        await self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000)

    async def send(self, to: bytes | str, data: Any) -> None:
        target = to.hex() if isinstance(to, bytes) else to
        await self.eval("([to, data]) => window.peer.send(to, data)", [target, data])

    async def inbox(self) -> list[dict[str, Any]]:
        return list(await self.eval("window.inbox"))

    async def peers(self) -> dict[str, str]:
        return {p["id"]: p["transport"] for p in await self.eval("window.peer.peers")}


async def open_peer(
    browser: Any, web: Any, bootstrap: list[str], options: dict[str, Any] | None = None
) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(web.url + "blank.html")
    started = time.perf_counter()
    peer_id = await page.evaluate(JOIN, {"bootstrap": bootstrap, "options": options or QUIET})
    record("page load to ready (Pyodide + peer_relay)", (time.perf_counter() - started) * 1000)
    return Page(page, peer_id, errors)


async def next_message(inbox: AsyncIterator[Message], timeout: float = 15.0) -> Message:
    return await asyncio.wait_for(anext(inbox), timeout)


async def wait_linked(node: PeerRelay, peer_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while node.link_transport(peer_id) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node} not linked to {peer_id}")
        await node.wait_for_peers(
            len(node.peers) + 1, timeout=max(0.01, deadline - time.monotonic())
        )


# ----------------------------------------------------------------------------- the tests


async def test_page_joins_over_websocket_and_exchanges_messages(
    browser: Any, web: Any, nodes: Callable[..., Any]
) -> None:
    a = await nodes()
    b = await nodes(bootstrap=[a.url])
    await b.wait_for_peers(1)
    inbox_a, inbox_b = a.messages(), b.messages()
    page = await open_peer(browser, web, [a.url])
    await page.wait("window.peer.peers.length > 0")
    assert (await page.peers())[a.id.hex()] == "ws"  # (it may find b and link to it too)
    assert a.link_transport(page.id) == "ws"

    # Both ways, with the directly linked peer and with one reached through it.
    a.send(page.id, {"from": "a", "n": 1})
    b.send(page.id, ["from b", 2.5, None, True, "é😀"])
    await page.wait("window.inbox.length >= 2")
    got = {json.dumps(m["data"], ensure_ascii=False): m for m in await page.inbox()}
    assert got['{"from": "a", "n": 1}']["from"] == a.id.hex()
    assert got['["from b", 2.5, null, true, "é😀"]']["from"] == b.id.hex()
    assert all(m["verified"] for m in got.values())

    await page.send(a.id, {"to": "a"})
    await page.send(b.id, {"to": "b", "nested": {"list": [1, 2, 3]}})
    msg_a = await next_message(inbox_a)
    msg_b = await next_message(inbox_b)
    assert (msg_a.data, msg_a.sender.hex()) == ({"to": "a"}, page.id)
    assert (msg_b.data, msg_b.sender.hex()) == ({"to": "b", "nested": {"list": [1, 2, 3]}}, page.id)
    assert msg_b.hops >= 1
    assert page.errors == []


async def test_messages_from_a_page_are_signed_and_verified(
    browser: Any, web: Any, nodes: Callable[..., Any]
) -> None:
    a = await nodes()
    linked: list[Any] = []
    a.on("peer", linked.append)
    b = await nodes(bootstrap=[a.url])
    await b.wait_for_peers(1)
    inbox_b = b.messages()
    page = await open_peer(browser, web, [a.url])
    await page.wait("window.peer.peers.length > 0")
    # The page proved its key on the link, and its messages carry its signature end to end
    # (relayed by a, verified by b against the id it claims).
    assert page.id in [p.hex() for p in linked if p.verified]
    await page.send(b.id, "signed in the browser")
    message = await next_message(inbox_b)
    assert message.data == "signed in the browser"
    assert message.sender.hex() == page.id
    assert message.verified is True and message.sender.verified is True

    # A page that does not sign is refused by peers that require signatures.
    # (Sessions off too: a session authenticates its messages without signatures.)
    unsigned = await open_peer(browser, web, [a.url], {**QUIET, "sign": False, "sessions": False})
    await unsigned.wait("window.peer.peers.length > 0")
    before = b.stats["dropped"].copy()
    await unsigned.send(b.id, "not signed")
    await page.send(b.id, "after")
    assert (await next_message(inbox_b)).data == "after"
    dropped = b.stats["dropped"]
    assert sum(dropped.values()) > sum(before.values()), dropped


async def test_page_and_python_peer_link_by_webrtc_either_side_initiating(
    browser: Any, web: Any, nodes: Callable[..., Any]
) -> None:
    hub = await nodes(**MUTE)
    py1 = await nodes(bootstrap=[hub.url], wrtc=True, **QUIET)
    py2 = await nodes(bootstrap=[hub.url], wrtc=True, **QUIET)
    await py1.wait_for_peers(1)
    await py2.wait_for_peers(1)
    page = await open_peer(browser, web, [hub.url])
    await page.wait("window.peer.peers.length > 0")
    assert await page.peers() == {hub.id.hex(): "ws"}

    # The page takes the initiative (it makes the offer).
    elapsed = await page.eval(CONNECT, py1.id.hex())
    record("WebRTC setup, page -> aiortc (connect() to open)", elapsed)
    assert (await page.peers())[py1.id.hex()] == "webrtc"
    await wait_linked(py1, page.id)
    assert py1.link_transport(page.id) == "webrtc"

    # The Python peer takes it.
    assert py2.link_transport(page.id) is None
    started = time.perf_counter()
    await py2.connect(page.id, timeout=20)
    record(
        "WebRTC setup, aiortc -> page (connect() to open)", (time.perf_counter() - started) * 1000
    )
    assert py2.link_transport(page.id) == "webrtc"
    await page.wait("(id) => window.peer.peers.some(p => p.id === id)", py2.id.hex())
    assert (await page.peers())[py2.id.hex()] == "webrtc"

    # Messages go over the data channels, both ways, one hop.
    inbox1, inbox2 = py1.messages(), py2.messages()
    await page.send(py1.id, "to py1 over webrtc")
    await page.send(py2.id, "to py2 over webrtc")
    m1, m2 = await next_message(inbox1), await next_message(inbox2)
    assert (m1.data, m1.hops, m1.verified) == ("to py1 over webrtc", 1, True)
    assert (m2.data, m2.hops, m2.verified) == ("to py2 over webrtc", 1, True)
    py1.send(page.id, "from py1")
    py2.send(page.id, "from py2")
    await page.wait("window.inbox.length >= 2")
    got = {m["data"]: m for m in await page.inbox()}
    assert got["from py1"]["hops"] == 1 and got["from py2"]["hops"] == 1
    assert got["from py1"]["verified"] and got["from py2"]["verified"]

    # Either side closes its WebRTC link cleanly; both ends see it, and messages take the hub.
    closed: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    py1.on("peer-closed", lambda peer, reason: closed.put_nowait((bytes(peer), reason)))
    assert await page.eval("(id) => window.peer.disconnect(id)", py1.id.hex()) is True
    peer, _reason = await asyncio.wait_for(closed.get(), 10)
    assert peer.hex() == page.id
    assert py1.link_transport(page.id) is None
    assert py1.id.hex() not in await page.peers()
    assert py2.disconnect(page.id) is True
    await page.wait("(id) => !window.peer.peers.some(p => p.id === id)", py2.id.hex())
    await page.send(py1.id, "via the hub")
    via_hub = await next_message(inbox1)
    assert (via_hub.data, via_hub.hops, via_hub.verified) == ("via the hub", 2, True)
    assert page.errors == []


async def test_two_pages_link_by_webrtc_through_python_signalling(
    browser: Any, web: Any, nodes: Callable[..., Any]
) -> None:
    a = await nodes(**MUTE)
    b = await nodes(bootstrap=[a.url], **MUTE)
    await b.wait_for_peers(1)
    # The pages join through different Python peers: their signals cross a and b.
    p1 = await open_peer(browser, web, [a.url])
    p2 = await open_peer(browser, web, [b.url])
    await p1.wait("window.peer.peers.length > 0")
    await p2.wait("window.peer.peers.length > 0")
    assert await p1.peers() == {a.id.hex(): "ws"}
    assert await p2.peers() == {b.id.hex(): "ws"}

    elapsed = await p1.eval(CONNECT, p2.id)
    record("WebRTC setup, page -> page (connect() to open)", elapsed)
    assert (await p1.peers())[p2.id] == "webrtc"
    await p2.wait("(id) => window.peer.peers.some(p => p.id === id)", p1.id)
    assert (await p2.peers())[p1.id] == "webrtc"

    # With every Python peer gone, the pages still talk over their own link.
    await a.destroy()
    await b.destroy()
    await p1.wait("window.peer.peers.length === 1")
    await p2.wait("window.peer.peers.length === 1")
    await p1.send(p2.id, {"hello": "p2"})
    await p2.send(p1.id, {"hello": "p1"})
    await p2.wait("window.inbox.length >= 1")
    await p1.wait("window.inbox.length >= 1")
    [to_p2], [to_p1] = await p2.inbox(), await p1.inbox()
    assert to_p2 == {"data": {"hello": "p2"}, "from": p1.id, "verified": True, "hops": 1}
    assert to_p1 == {"data": {"hello": "p1"}, "from": p2.id, "verified": True, "hops": 1}
    assert p1.errors == [] and p2.errors == []


async def test_demo_page_shows_peers_and_messages(
    browser: Any, web_build: Path, nodes: Callable[..., Any]
) -> None:
    from peer_relay.browser.server import WebServer

    node = await nodes()
    async with WebServer(web_build, {"bootstrap": [node.url]}) as server:
        base = await server.start("127.0.0.1", 0)
        page = await browser.new_page(viewport={"width": 1100, "height": 640})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requests: list[str] = []
        failed: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("requestfailed", lambda request: failed.append(request.url))
        started = time.perf_counter()
        await page.goto(base)
        await page.wait_for_function("window.peerLoadMs !== undefined", timeout=60_000)
        record("demo page: navigation to ready", (time.perf_counter() - started) * 1000)
        page_id = await page.evaluate("window.peer.id")
        assert await page.text_content("#my-id") == page_id
        await page.wait_for_selector(f"#peers >> text={node.id.hex()}", timeout=15_000)
        assert await page.text_content("#peers .tag") == "ws"

        node.send(page_id, "Hello from Python!")
        await page.wait_for_selector("#messages >> text=Hello from Python!", timeout=15_000)
        # A message typed into the page reaches the Python peer.
        inbox = node.messages()
        await page.fill("#to", node.id.hex())
        await page.fill("#text", "typed in the demo page")
        await page.click("button[type=submit]")
        message = await next_message(inbox)
        assert message.data == "typed in the demo page" and message.verified

        shot = ROOT / ".cache" / "demo-page.png"
        shot.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        text = await page.text_content("body") or ""
        assert "signed, 1 hop(s)" in text
        assert errors == [] and failed == []
        # Everything came from our server: no CDN, no package index.
        assert requests and all(url.startswith(base) for url in requests), requests
        assert any(url.endswith("pyodide.asm.wasm") for url in requests)


async def test_serve_web_serves_the_build_and_config(web_build: Path, tmp_path: Path) -> None:
    from peer_relay.browser.build import cache_dir

    env = {**os.environ, "PEER_RELAY_CACHE": str(web_build.parent / "cache")}
    env["PYTHONPATH"] = str(ROOT / "src")
    # The build the command makes is the one the session fixture made: point it there (the
    # npm package, and what was compressed before).
    cache = Path(env["PEER_RELAY_CACHE"])
    (cache / "web-npm" / "node_modules").mkdir(parents=True, exist_ok=True)
    npm_pkg = cache / "web-npm" / "node_modules" / "pyodide"
    [pyodide] = (web_build / "pyodide").iterdir()
    if not npm_pkg.exists():
        npm_pkg.symlink_to(pyodide, target_is_directory=True)
    compressed = cache / "web-compressed"
    if not compressed.exists():
        compressed.symlink_to(cache_dir() / "web-compressed", target_is_directory=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_relay.cli",
        "serve",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--web",
        "--web-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines: dict[str, str] = {}
        while "web" not in lines:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "serve exited"
            key, _, value = line.strip().partition(" ")
            lines[key] = value.strip()
        base = lines["web"]
        assert base.startswith("http://127.0.0.1:")
        config = json.loads(await _http_get(base + "config.json"))
        assert config["bootstrap"] == [lines["url"]]
        page = (await _http_get(base)).decode()
        assert "peer-relay in the browser" in page
        assert len(await _http_get(f"{base}pyodide/{pyodide.name}/pyodide.asm.wasm")) > 1_000_000
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


async def _http_get(url: str) -> bytes:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body
