"""The original's browser build (``bundle.js`` of peer-relay@0.0.2) in headless Chromium, as a
peer of a Python network.

The page joins over WebSocket through a Python relay (a browser cannot listen). The Python peers
have no WebSocket server either, so every message between them and the page is relayed:
Python -> relay -> page and page -> relay -> Python.

The browser build cannot link by WebRTC in current Chromium (its simple-peer 6 calls
``getStats`` with a callback, which Chromium rejects), so a Python peer that asks the page for a
WebRTC link must give up cleanly, free its slot and keep talking through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import eventually

from peer_relay import PeerRelay

from .conftest import StaticSite

pytestmark = pytest.mark.browser

T = 10.0
"""Seconds allowed for any single wait."""

PAYLOADS: list[Any] = [
    {"n": 1, "s": "héllo ✓ 🚀", "l": [None, True, False, 1.5, -7]},
    "plain",
    [1, [2, [3]]],
    0,
]


class Page:
    """The 0.0.2 client running in a browser tab."""

    def __init__(self, page: Any, peer_id: bytes) -> None:
        self.page = page
        self.id = peer_id

    async def received(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate("window.received")
        return result

    async def send(self, to: bytes, data: Any) -> None:
        await self.page.evaluate("([to, data]) => window.sendTo(to, data)", [to.hex(), data])

    async def connect_to(self, peer: bytes) -> None:
        await self.page.evaluate("(to) => window.connectTo(to)", peer.hex())

    async def direct_peers(self) -> list[bytes]:
        peers: list[str] = await self.page.evaluate("window.directPeers()")
        return [bytes.fromhex(p) for p in peers]

    async def errors(self) -> list[str]:
        errors: list[str] = await self.page.evaluate("window.pageErrors")
        return errors

    async def wait_received(self, count: int, timeout: float = T) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = await self.received()
            if len(got) >= count:
                return got
            if loop.time() > deadline:
                pytest.fail(f"the page received {len(got)} of {count} messages: {got}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def open_page(browser: Any, site: StaticSite, bootstrap: str) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    try:
        await page.goto(site.url + "/", wait_until="load", timeout=T * 1000)
        peer_hex: str = await page.evaluate("(url) => window.startPeer([url])", bootstrap)
        yield Page(page, bytes.fromhex(peer_hex))
    except BaseException:
        print("--- browser console ---\n" + "\n".join(console[-40:]))
        raise
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def python_network(
    relay_options: dict[str, Any] | None = None, **peer_options: Any
) -> AsyncIterator[tuple[PeerRelay, list[PeerRelay]]]:
    """A Python relay (admits 0.0.2 peers) and two client-only Python peers bootstrapped to it."""
    options = {"allow_unsigned": True, "refresh_interval": 300.0, **peer_options}
    relay_opts = {"port": 0, "host": "127.0.0.1", "allow_unsigned": True, **(relay_options or {})}
    async with PeerRelay(**relay_opts) as relay:
        assert relay.url is not None
        async with (
            PeerRelay(bootstrap=[relay.url], **options) as p1,
            PeerRelay(bootstrap=[relay.url], **options) as p2,
        ):
            await p1.wait_for_peers(1, timeout=T)
            await p2.wait_for_peers(1, timeout=T)
            yield relay, [p1, p2]


async def test_browser_peer_exchanges_relayed_messages_with_python_peers(
    chromium_browser: Any, static_site: StaticSite
) -> None:
    async with python_network() as (relay, (p1, p2)):
        assert relay.url is not None
        async with open_page(chromium_browser, static_site, relay.url) as page:
            await eventually(lambda: page.id in relay.peers, T, "the page linked to the relay")
            assert relay.link_transport(page.id) == "ws"
            # The relay's link to the page is a 0.0.2 link: no key, so not verified.
            assert await page.direct_peers() == [relay.id]

            # Python -> relay -> page
            for i, payload in enumerate(PAYLOADS):
                p1.send(page.id, {"i": i, "p": payload})
            got = await page.wait_received(len(PAYLOADS))
            assert [m["data"] for m in got] == [{"i": i, "p": p} for i, p in enumerate(PAYLOADS)]
            assert {m["from"] for m in got} == {p1.id.hex()}

            # page -> relay -> Python, to two different peers
            inbox1, inbox2 = p1.messages(), p2.messages()
            for i, payload in enumerate(PAYLOADS):
                await page.send(p1.id, {"to": "p1", "i": i, "p": payload})
                await page.send(p2.id, ["to p2", i])
            got1 = [await asyncio.wait_for(anext(inbox1), T) for _ in PAYLOADS]
            got2 = [await asyncio.wait_for(anext(inbox2), T) for _ in PAYLOADS]
            assert [m.data for m in got1] == [
                {"to": "p1", "i": i, "p": p} for i, p in enumerate(PAYLOADS)
            ]
            assert [m.data for m in got2] == [["to p2", i] for i in range(len(PAYLOADS))]
            for message in got1 + got2:
                assert message.sender == page.id and not message.verified
                assert message.hops == 2  # the page, then the relay

            # ... and a reply back to the page from the second Python peer
            p2.send(page.id, "reply from p2")
            got = await page.wait_received(len(PAYLOADS) + 1)
            assert got[-1] == {"data": "reply from p2", "from": p2.id.hex()}
            assert relay.stats["relayed"] >= 3 * len(PAYLOADS) + 1
            assert p1.id not in await page.direct_peers()
            assert await page.errors() == []


@pytest.mark.parametrize("initiator", ["python", "browser"])
async def test_webrtc_attempt_with_the_browser_build_fails_cleanly(
    chromium_browser: Any, static_site: StaticSite, initiator: str
) -> None:
    """The page says it can do WebRTC, and tries, but Chromium rejects its simple-peer 6: the
    data channel opens on the Python side, yet the page never takes the link. The Python peer
    must not count it as a link (messages on it would be lost): the attempt ends within its
    timeout, leaves nothing behind, and messages still go through the relay both ways."""
    timeout = 3.0
    # A relay that answers no findPeers: only the test asks for links.
    async with python_network(
        relay_options={"control_rate": 0},
        wrtc=True,
        ice_host_addresses=["127.0.0.1"],
        connect_timeout=timeout,
        link_timeout=timeout,
    ) as (relay, (p1, _p2)):
        assert relay.url is not None
        linked: list[bytes] = []
        p1.on("peer", linked.append)
        async with open_page(chromium_browser, static_site, relay.url) as page:
            await eventually(lambda: page.id in relay.peers, T, "the page linked to the relay")
            started_links = p1.stats["links_opened"]
            if initiator == "python":
                with pytest.raises((ConnectionError, TimeoutError)):
                    await p1.connect(page.id, timeout=timeout + 3)
            else:
                await page.connect_to(p1.id)
                # the page's attempt reaches the Python side: a WebRTC link is set up there
                await eventually(
                    lambda: p1.bounds()["rtc_links"][0] > 0, T, "the page's attempt at p1"
                )
            await eventually(
                lambda: (
                    not p1.inspect()["attempts"]
                    and not p1.inspect()["webrtc"]
                    and p1.bounds()["rtc_links"][0] == 0
                    and p1.bounds()["pending_links"][0] == 0
                ),
                timeout + 5,
                "the failed attempt's slot freed",
            )
            assert linked == [] and p1.stats["links_opened"] == started_links
            assert page.id not in p1.peers and p1.link_transport(page.id) is None
            assert await page.direct_peers() == [relay.id]

            inbox = p1.messages()
            await page.send(p1.id, "still reachable")
            message = await asyncio.wait_for(anext(inbox), T)
            assert (message.data, message.sender, message.hops) == ("still reachable", page.id, 2)
            p1.send(page.id, "and back")
            got = await page.wait_received(1)
            assert got[-1] == {"data": "and back", "from": p1.id.hex()}
