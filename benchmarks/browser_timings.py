"""Page load, WebRTC setup and session costs of the browser peer (Pyodide in headless Chromium).

    .venv/bin/python benchmarks/browser_timings.py [--rounds 5] [--loads 5] [--only-loads]

Builds the web folder, serves it on 127.0.0.1, starts Python peers (aiortc for WebRTC) and one
Chromium (Debian's, through Playwright), then measures:

- the first load, compressed or not, side by side in one run: bytes transferred (bodies and
  headers, the Performance API's ``transferSize``), files, and the time from a blank page to
  ``ready``, each load in a new browser context (an empty HTTP cache), from three servers of
  the same build: brotli (what Chromium gets), gzip only, and uncompressed; on loopback, and
  through Chromium's network emulation of a ``--throttle`` Mbit/s link with 20 ms latency;
  then a second visit in the same context (versioned files from the cache, the rest
  revalidated). ``--loads`` loads of each, interleaved; medians, and ratios to uncompressed;

and, each of ``--rounds`` rounds on fresh pages:

- load: from ``new PeerRelay(...)`` in a blank page to ``ready`` (Pyodide, our package, a key),
  the browser's first page apart (it compiles the WebAssembly; later pages reuse its cache);
- sessions, in the page's Python (the pure-Python X25519 and ChaCha20-Poly1305 of
  ``peer_relay.purecrypto``: Pyodide has no ``cryptography``), wall time of one operation:
  each side of a Noise IK handshake (``peer_relay.sealing.NoiseSuite``, static keys made
  beforehand: the initiator writes message 1 and reads message 2, the responder the other way
  round, each then splits; medians of ``--runs``), and seal plus open of a 100-byte message
  under the keys it gives (medians of ``--runs`` batches of 50);
- sessions end to end, ``await peer.deliver(id, 100 characters)`` until its receipt is back,
  from the page, through a mute Python hub, to a Python peer and to another page: the first
  (the key exchange and the handshake ride along) and the median of the next ``--delivers``;
- WebRTC setup, from ``connect()`` to the open data channel: page -> aiortc, aiortc -> page,
  page -> page (signals relayed by the Python peers).

The handshake and seal+open figures are also measured here in CPython, pure Python and with
``cryptography``, for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from peer_relay import PeerRelay, noise
from peer_relay.browser.build import build
from peer_relay.browser.server import WebServer

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
QUIET = {"refresh_interval": 3600.0}
MUTE = {"refresh_interval": 3600.0, "control_rate": 0.0}
JOIN = """async ({ bootstrap, options }) => {
  const t0 = performance.now()
  const { PeerRelay } = await import('/peer-relay.js')
  window.peer = new PeerRelay({ bootstrap, options })
  await window.peer.ready
  return [window.peer.id, performance.now() - t0]
}"""
CONNECT = """async (id) => {
  const t0 = performance.now()
  await window.peer.connect(id)
  return performance.now() - t0
}"""


# Run in the page's Pyodide, and in CPython for scale; ``_session_cost(runs)`` gives medians in ms.
SESSION_COST = """
import statistics as _statistics
import time as _time

from peer_relay.identity import Identity as _Identity
from peer_relay.sealing import NoiseSuite as _Suite, x25519_public_from_ed25519 as _x25519


def _session_cost(runs):
    a, b = _Identity.generate(), _Identity.generate()
    initiator_suite, responder_suite = _Suite(a.private_bytes()), _Suite(b.private_bytes())
    remote = _x25519(b.public_key)
    clock = _time.perf_counter_ns
    sides = {"initiator": [], "responder": []}
    for _ in range(runs):
        i, r = initiator_suite.initiator(b"bench", remote), responder_suite.responder(b"bench")
        t0 = clock()
        m1 = i.write(bytes(40))
        t1 = clock()
        r.read(m1)
        m2 = r.write(b"")
        r_keys = r.keys()
        t2 = clock()
        i.read(m2)
        i_keys = i.keys()
        t3 = clock()
        sides["initiator"].append((t1 - t0 + t3 - t2) / 1e6)
        sides["responder"].append((t2 - t1) / 1e6)
    # Timed in batches: a page's clock ticks in steps of 0.1 ms.
    seal, opener = i_keys[0], r_keys[1]
    message, ad = bytes(100), bytes(13)
    both = []
    for batch in range(runs):
        t0 = clock()
        for n in range(batch * 50, batch * 50 + 50):
            opener.open(n, ad, seal.seal(n, ad, message))
        both.append((clock() - t0) / 50 / 1e6)
    return {
        "IK handshake, initiator": _statistics.median(sides["initiator"]),
        "IK handshake, responder": _statistics.median(sides["responder"]),
        "seal + open, 100 B": _statistics.median(both),
    }
"""

DELIVERS = """async ({ to, n }) => {
  const times = []
  for (let i = 0; i <= n; i++) {
    const t0 = performance.now()
    await window.peer.deliver(to, 'x'.repeat(100), { timeout: 10 })
    times.push(performance.now() - t0)
  }
  return times
}"""


async def session_cost_in_page(page: Any, runs: int) -> dict[str, float]:
    script = f"""async () => {{
      const {{ loadRuntime }} = await import('/peer-relay.js')
      const pyodide = await loadRuntime()
      pyodide.runPython({json.dumps(SESSION_COST)})
      return JSON.parse(pyodide.runPython('import json; json.dumps(_session_cost({runs}))'))
    }}"""
    result: dict[str, float] = await page.evaluate(script)
    return result


def session_cost_here(runs: int, pure: bool) -> dict[str, float]:
    """The same figures in this CPython, with the pure-Python backend or ``cryptography``."""
    names: dict[str, Any] = {}
    previous = noise.use_pure_python(pure)
    try:
        exec(SESSION_COST, names)
        result: dict[str, float] = names["_session_cost"](runs)
        return result
    finally:
        noise.use_pure_python(previous)


LOAD = """async () => {
  const t0 = performance.now()
  const { PeerRelay } = await import('/peer-relay.js')
  const peer = new PeerRelay({ options: { refresh_interval: 3600 } })
  await peer.ready
  const ms = performance.now() - t0
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')]
  peer.destroy()
  return { ms, bytes: entries.reduce((sum, e) => sum + e.transferSize, 0),
           files: entries.filter((e) => e.transferSize > 0).length }
}"""
SERVED = {"brotli": ("br", "gzip"), "gzip": ("gzip",), "uncompressed": ()}
"""The servers of the load comparison: name -> the content codings it answers with."""


async def load(browser: Any, base: str, throttle: float) -> dict[str, dict[str, float]]:
    """A first load from ``base`` in a new context (an empty cache), then a second visit;
    ``throttle``: Mbit/s of the emulated link (0: none)."""
    context = await browser.new_context()
    results: dict[str, dict[str, float]] = {}
    try:
        for visit in ("first load", "second visit"):
            page = await context.new_page()
            if throttle:
                cdp = await context.new_cdp_session(page)
                await cdp.send("Network.enable")
                await cdp.send(
                    "Network.emulateNetworkConditions",
                    {
                        "offline": False,
                        "latency": 20,
                        "downloadThroughput": throttle * 1e6 / 8,
                        "uploadThroughput": throttle * 1e6 / 8,
                    },
                )
            started = time.perf_counter()
            await page.goto(base + "blank.html")
            result = await asyncio.wait_for(page.evaluate(LOAD), 180)
            result["wall"] = (time.perf_counter() - started) * 1000
            results[visit] = result
            await page.close()
    finally:
        await context.close()
    return results


async def compare_loads(browser: Any, root: Path, args: argparse.Namespace) -> None:
    """The first load and a second visit, from each of :data:`SERVED`, side by side."""
    networks = {"loopback": 0.0}
    if args.throttle:
        networks[f"{args.throttle:g} Mbit/s, 20 ms"] = args.throttle
    servers = {name: WebServer(root, encodings=codings) for name, codings in SERVED.items()}
    bases = {name: await server.start("127.0.0.1", 0) for name, server in servers.items()}
    rows: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    load_before = os.getloadavg()
    try:
        await load(browser, bases["brotli"], 0)  # warm-up: the browser's own first start
        for _ in range(args.loads):
            for network, throttle in networks.items():
                for name, base in bases.items():
                    for visit, result in (await load(browser, base, throttle)).items():
                        rows.setdefault((network, visit, name), []).append(result)
    finally:
        for server in servers.values():
            await server.close()
    load_after = os.getloadavg()
    print(
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, {platform.node()}, "
        f"{os.cpu_count()} cores, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; Chromium {browser.version}"
    )
    print(f"Load to ready from a blank page, medians of {args.loads} (min-max of the time):")
    header = f"  {'':<48}{'files':>6}{'bytes':>12}{'x':>7}{'ready ms':>10}{'x':>7}   range ms"
    print(header)
    for network in networks:
        for visit in ("first load", "second visit"):
            plain = rows[(network, visit, "uncompressed")]
            plain_bytes = statistics.median(r["bytes"] for r in plain)
            plain_ms = statistics.median(r["ms"] for r in plain)
            for name in SERVED:
                results = rows[(network, visit, name)]
                files = statistics.median(r["files"] for r in results)
                size = statistics.median(r["bytes"] for r in results)
                ms = [r["ms"] for r in results]
                ready = statistics.median(ms)
                print(
                    f"  {network + ', ' + visit + ', ' + name:<48}{files:>6.0f}{size:>12,.0f}"
                    f"{size / plain_bytes if plain_bytes else 0:>7.2f}{ready:>10.0f}"
                    f"{ready / plain_ms:>7.2f}   {min(ms):.0f}-{max(ms):.0f}"
                )


async def open_page(browser: Any, base: str, hub: str) -> tuple[Any, str, float]:
    page = await browser.new_page()
    await page.goto(base + "blank.html")
    peer_id, load_ms = await page.evaluate(JOIN, {"bootstrap": [hub], "options": QUIET})
    await page.wait_for_function("window.peer.peers.length > 0", timeout=15_000)
    return page, peer_id, load_ms


async def round_(
    browser: Any, base: str, results: dict[str, list[float]], args: argparse.Namespace
) -> None:
    started: list[PeerRelay] = []

    async def node(**kwargs: Any) -> PeerRelay:
        peer = PeerRelay(port=0, host="127.0.0.1", **kwargs)
        started.append(peer)
        return await peer.start()

    try:
        hub = await node(**MUTE)
        assert hub.url is not None
        local = {"wrtc": True, "ice_host_addresses": ["127.0.0.1"], **QUIET}
        py1 = await node(bootstrap=[hub.url], **local)
        py2 = await node(bootstrap=[hub.url], **local)
        await py1.wait_for_peers(1)
        await py2.wait_for_peers(1)
        p1, id1, load1 = await open_page(browser, base, hub.url)
        p2, id2, load2 = await open_page(browser, base, hub.url)
        first = "page load, first in browser" if not results["page load, first in browser"] else ""
        results[first or "page load to ready"].append(load1)
        results["page load to ready"].append(load2)
        for name, ms in (await session_cost_in_page(p1, args.runs)).items():
            results.setdefault(f"page: {name}", []).append(ms)
        # Deliveries through the hub (p1 and p2 link to nothing else yet).
        for name, to in (("page -> Python", py1.id.hex()), ("page -> page", id2)):
            first, *then = await p1.evaluate(DELIVERS, {"to": to, "n": args.delivers})
            results.setdefault(f"deliver {name}, first", []).append(first)
            results.setdefault(f"deliver {name}, then", []).append(statistics.median(then))
        results["WebRTC page -> aiortc"].append(await p1.evaluate(CONNECT, py1.id.hex()))
        t = time.perf_counter()
        await py2.connect(id1, timeout=20)
        results["WebRTC aiortc -> page"].append((time.perf_counter() - t) * 1000)
        results["WebRTC page -> page"].append(await p1.evaluate(CONNECT, id2))
        await p1.close()
        await p2.close()
    finally:
        await asyncio.gather(*(p.destroy() for p in started), return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--runs", type=int, default=20, help="handshakes per page (and batches of 50 seals)"
    )
    parser.add_argument("--delivers", type=int, default=20, help="deliveries after the first")
    parser.add_argument("--loads", type=int, default=5, help="loads of each server compared")
    parser.add_argument(
        "--throttle", type=float, default=50, help="Mbit/s of the emulated link (0: loopback only)"
    )
    parser.add_argument("--only-loads", action="store_true", help="only the load comparison")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.async_api import async_playwright

    root = await asyncio.to_thread(build, None)
    results: dict[str, list[float]] = {
        "page load, first in browser": [],
        "page load to ready": [],
        "WebRTC page -> aiortc": [],
        "WebRTC aiortc -> page": [],
        "WebRTC page -> page": [],
    }
    async with WebServer(Path(root)) as web, async_playwright() as pw:
        base = await web.start("127.0.0.1", 0)
        browser = await pw.chromium.launch(executable_path=args.chromium, args=FLAGS)
        try:
            if args.loads:
                await compare_loads(browser, Path(root), args)
            if args.only_loads:
                return
            for _ in range(args.rounds):
                await round_(browser, base, results, args)
        finally:
            await browser.close()
    print(f"{args.rounds} rounds, headless Chromium, everything on 127.0.0.1 (ms):")
    for name, values in results.items():
        print(
            f"  {name:<40} median {statistics.median(values):8.2f}   "
            f"min {min(values):8.2f}   max {max(values):8.2f}   (n={len(values)})"
        )
    print("The same session figures in this CPython (ms, median of one run):")
    for pure in (True, False):
        if not pure and not noise.HAVE_CRYPTOGRAPHY:
            continue
        backend = "pure Python" if pure else "cryptography"
        for name, ms in session_cost_here(args.runs, pure).items():
            print(f"  {backend + ': ' + name:<40} {ms:8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
