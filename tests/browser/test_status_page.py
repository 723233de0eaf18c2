"""The status page of ``--metrics`` in headless Chromium: it shows the node, its links, rates
computed from successive snapshots and drops by reason, loads nothing from elsewhere, and says
so when the node goes away. A screenshot is saved in the test's tmp_path (printed)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually
from websockets.asyncio.client import connect

from peer_relay import PeerRelay
from peer_relay.metrics import start_metrics

pytestmark = pytest.mark.browser

LOCAL: dict[str, Any] = {"port": 0, "host": "127.0.0.1"}
T = 15_000
"""Milliseconds allowed for any single wait in the page."""


async def malformed_frame(url: str) -> None:
    """A raw WebSocket that answers the node's hello with a frame that is not JSON."""
    async with connect(url, open_timeout=5, compression=None) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("this is not json {")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.recv(), 5)  # the node closes the link


async def traffic(sender: PeerRelay, to: bytes, stop: asyncio.Event) -> None:
    """Messages through the hub at a steady pace until ``stop``."""
    n = 0
    while not stop.is_set():
        await sender.deliver(to, {"n": n})
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def test_status_page_in_chromium(chromium_browser: Any, tmp_path: Path) -> None:
    async with (
        PeerRelay(**LOCAL) as hub,
        PeerRelay(bootstrap=[hub.url or ""]) as c1,
        PeerRelay(bootstrap=[hub.url or ""]) as c3,
    ):
        server = await start_metrics(hub, "127.0.0.1:0")
        try:
            await c1.wait_for_peers(1)
            await c3.wait_for_peers(1)
            await eventually(lambda: len(hub.peers) == 2, what="the hub's two links")
            base = server.url or ""
            page = await chromium_browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda request: requests.append(request.url))
            await page.goto(base)

            await page.wait_for_function(
                "id => document.getElementById('node-id').textContent === id",
                arg=hub.id.hex(),
                timeout=T,
            )
            assert await page.text_content("#node-url") == hub.url
            for peer in (c1, c3):
                row = page.locator(f'#links tr[data-peer="{peer.id.hex()}"]')
                await row.wait_for(timeout=T)
                cells = await row.locator("td").all_text_contents()
                assert cells[1:5] == ["ws", "open", "in", "yes"], cells
            assert (await page.text_content("#link-count") or "").startswith("2 open (ws 2")

            stop = asyncio.Event()
            sending = asyncio.ensure_future(traffic(c1, c3.id, stop))
            try:
                # Rates come from two successive snapshots (a second apart).
                await page.wait_for_function(
                    """() => {
                        const td = document.querySelector(
                            '#rates tr[data-name="messages relayed"] td.rate');
                        return td && parseFloat(td.textContent) > 0;
                    }""",
                    timeout=T,
                )
            finally:
                stop.set()
                await sending
            relayed = page.locator('#rates tr[data-name="messages relayed"] td')
            total = int((await relayed.all_text_contents())[2])
            assert 0 < total <= hub.stats["relayed"]

            assert await page.locator('#drops tr[data-reason="malformed-json"]').count() == 0
            await malformed_frame(hub.url or "")
            drop = page.locator('#drops tr[data-reason="malformed-json"]')
            await drop.wait_for(timeout=T)
            assert (await drop.locator("td").all_text_contents())[2] == "1"

            shot = tmp_path / "status-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"status page screenshot: {shot}")
            assert shot.stat().st_size > 10_000

            assert errors == [], errors
            # Self-contained: the page and its JSON, nothing from anywhere else.
            assert requests and all(url.startswith(base) for url in requests), requests
            assert {url.removeprefix(base) for url in requests} <= {"", "status.json"}

            # The node goes away: the page says it cannot reach it.
            await server.close()
            await page.wait_for_selector("#error", state="visible", timeout=T)
            assert "cannot reach the node" in (await page.text_content("#error") or "")
            await page.close()
        finally:
            await server.close()
