"""Page load and WebRTC setup times of the browser peer (Pyodide in headless Chromium).

    .venv/bin/python benchmarks/browser_timings.py [--rounds 5]

Builds the web folder, serves it on 127.0.0.1, starts Python peers (aiortc for WebRTC) and one
Chromium (Debian's, through Playwright), then measures, each round on fresh pages:

- load: from ``new PeerRelay(...)`` in a blank page to ``ready`` (Pyodide, our package, a key),
  the browser's first page apart (it compiles the WebAssembly; later pages reuse its cache);
- WebRTC setup, from ``connect()`` to the open data channel: page -> aiortc, aiortc -> page,
  page -> page (signals relayed by the Python peers).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from peer_relay import PeerRelay
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


async def open_page(browser: Any, base: str, hub: str) -> tuple[Any, str, float]:
    page = await browser.new_page()
    await page.goto(base + "blank.html")
    peer_id, load_ms = await page.evaluate(JOIN, {"bootstrap": [hub], "options": QUIET})
    await page.wait_for_function("window.peer.peers.length > 0", timeout=15_000)
    return page, peer_id, load_ms


async def round_(browser: Any, base: str, results: dict[str, list[float]]) -> None:
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
            for _ in range(args.rounds):
                await round_(browser, base, results)
        finally:
            await browser.close()
    print(f"{args.rounds} rounds, headless Chromium, everything on 127.0.0.1 (ms):")
    for name, values in results.items():
        print(
            f"  {name:<24} median {statistics.median(values):7.1f}   "
            f"min {min(values):7.1f}   max {max(values):7.1f}   (n={len(values)})"
        )


if __name__ == "__main__":
    asyncio.run(main())
