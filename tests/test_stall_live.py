"""A stalled event loop loses no message (issue 16): live nodes on 127.0.0.1.

The host blocks (``time.sleep``, a long garbage collection) for longer than ``confirm_timeout``
in the middle of a stream: when it wakes, the pongs its peers sent meanwhile still wait in the
sockets while the core's timer, late, finds their pings overdue. Healthy links must not be taken
for dead for it, and every message must arrive exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from helpers import eventually

from peer_relay import PeerRelay

CONFIRM_TIMEOUT = 0.6
MESSAGES = 2_000
BATCH = 100
WINDOW = 500
"""Most messages in flight: the stream waits for the destination before sending more."""


async def test_a_stall_longer_than_confirm_timeout_closes_no_link_and_loses_no_message() -> None:
    # No direct links: the path stays a -> relay -> c for the whole stream.
    options: dict[str, Any] = {"confirm_timeout": CONFIRM_TIMEOUT, "direct_after": 0}
    async with PeerRelay(port=0, host="127.0.0.1", **options) as relay:
        assert relay.url is not None
        a = PeerRelay(bootstrap=[relay.url], **options)
        c = PeerRelay(bootstrap=[relay.url], **options)
        async with a, c:
            await a.wait_for_peers(1)
            await c.wait_for_peers(1)
            closed: list[tuple[str, bytes, str]] = []
            for name, node in (("a", a), ("relay", relay), ("c", c)):
                node.on(
                    "peer-closed",
                    lambda peer, reason, name=name: closed.append((name, peer, reason)),
                )
            got: list[Any] = []
            c.on("message", lambda data, sender: got.append(data))
            a.send(c.id, "warm-up")  # opens the session from a to c
            await eventually(lambda: got == ["warm-up"], what="the warm-up message")
            got.clear()

            for start in range(0, MESSAGES, BATCH):
                stall = start == MESSAGES // 2
                if stall:
                    # Quiet first: every frame of a read, every ping of a answered, so that no
                    # read of the batch below is already queued behind this step of the loop.
                    await eventually(
                        lambda start=start: len(got) == start and a.bounds()["unconfirmed"][0] == 0,
                        what="a quiet link",
                    )
                for n in range(start, start + BATCH):
                    a.send(c.id, n)
                if stall:
                    # Messages and a ping in flight, unread: the host stalls. When it wakes, its
                    # timer fires before the relay's pong has even been written.
                    time.sleep(2 * CONFIRM_TIMEOUT)
                await a.drain()
                sent = start + BATCH
                await eventually(lambda sent=sent: len(got) >= sent - WINDOW, what="the stream")
            await eventually(lambda: len(got) >= MESSAGES, timeout=20.0, what="every message")

            assert closed == []
            assert sorted(got) == list(range(MESSAGES)), "lost or duplicated messages"
            for node in (a, relay, c):
                stats = node.stats
                assert stats["links_closed"] == 0, stats
                assert stats["dropped"].get("unresponsive", 0) == 0, stats
