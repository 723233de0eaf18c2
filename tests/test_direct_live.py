"""Direct paths by themselves: a pair that exchanges many messages through a relay forms a
direct link in the background, and no message is lost or repeated while it does.

Live nodes on 127.0.0.1: two client-only WebRTC peers behind a relay that answers no discovery
request (``control_rate=0``), so they never learn of each other and link only because of the
traffic (``direct_after``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import eventually
from test_webrtc import CLEAN, T, network, rtc, rtc_leftovers

pytest.importorskip("aiortc")

pytestmark = pytest.mark.webrtc


async def test_a_busy_pair_links_directly_and_loses_nothing_meanwhile() -> None:
    async with network(rtc(direct_after=16), rtc(direct_after=16)) as (hub, (a, c)):
        assert c.id not in a.peers
        inbox = c.messages()
        got: list[Any] = []
        for i in range(200):
            a.send(c.id, {"i": i})
            if i % 20 == 19:
                # Paced a little, so that some go before, some during, some after the upgrade.
                await asyncio.sleep(0.05)
        while len(got) < 200:
            message = await asyncio.wait_for(anext(inbox), T)
            got.append((message.data["i"], message.hops))
        assert sorted(i for i, _ in got) == list(range(200)), "lost or repeated"
        assert got[0][1] == 2, "the first ones went through the relay"
        await eventually(lambda: c.id in a.peers and a.id in c.peers, T, "the direct link")
        assert a.link_transport(c.id) == "webrtc"
        assert a.inspect()["direct"]["upgrades"] == 1
        relayed_before = hub.stats["relayed"]
        for i in range(20):
            a.send(c.id, {"after": i})
        after = [await asyncio.wait_for(anext(inbox), T) for _ in range(20)]
        assert [m.data["after"] for m in after] == list(range(20))
        assert all(m.hops == 1 for m in after)
        assert hub.stats["relayed"] == relayed_before
        assert rtc_leftovers(a) == CLEAN and rtc_leftovers(c) == CLEAN


async def test_deliveries_during_the_upgrade_all_end_with_a_receipt() -> None:
    async with network(rtc(direct_after=8), rtc(direct_after=8)) as (_hub, (a, c)):
        results = await asyncio.gather(*(a.deliver(c.id, {"n": i}, timeout=T) for i in range(60)))
        assert len(results) == 60
        await eventually(lambda: c.id in a.peers, T, "the direct link")
        assert a.link_transport(c.id) == "webrtc"
        # And back the other way, now over the direct link.
        await asyncio.gather(*(c.deliver(a.id, {"m": i}, timeout=T) for i in range(20)))


async def test_no_upgrade_when_turned_off_or_below_the_threshold() -> None:
    async with network(rtc(direct_after=0), rtc(direct_after=101)) as (_hub, (a, c)):
        inbox_c, inbox_a = c.messages(), a.messages()
        for i in range(50):
            a.send(c.id, i)
            c.send(a.id, i)
        assert [(await asyncio.wait_for(anext(inbox_c), T)).data for _ in range(50)] == list(
            range(50)
        )
        assert [(await asyncio.wait_for(anext(inbox_a), T)).data for _ in range(50)] == list(
            range(50)
        )
        # a never counts (off); c counted 100 (50 each way), one short of its threshold.
        assert a.inspect()["direct"]["upgrades"] == 0 and a.inspect()["attempts"] == []
        assert c.inspect()["direct"]["upgrades"] == 0 and c.inspect()["attempts"] == []
        assert c.id not in a.peers
        c.send(a.id, "one more")
        assert (await asyncio.wait_for(anext(inbox_a), T)).data == "one more"
        assert c.inspect()["direct"]["upgrades"] == 1
        await eventually(lambda: c.id in a.peers, T, "the direct link c asked for")
