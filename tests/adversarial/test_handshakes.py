"""Handshake exhaustion: thousands of WebSocket connections that upgrade and never send a
hello, from one loopback address or several, kept open and reopened by an attacker process.

A node budgets inbound handshakes per source address (``max_pending_per_source``), in all
(``max_pending_links``, a newcomer taking the slot of the oldest connection of the source holding
most) and in time (``hello_timeout``): a newcomer from another address still links.
"""

from __future__ import annotations

import asyncio

import pytest

from peer_relay import PeerRelay

from .conftest import Honest
from .harness import Attacker, BoundsWatch, LinkWatch, attacking, drops, probing, wait_until

IDLE = 2000
"""Idle connections the attacker keeps open."""
FLOOD = ("--source", "127.0.0.3", "--reconnect", "--rate", "2500")
"""Half a control flood, from its own address, linking again (same key) when its link is
closed."""
LINK_TIMEOUT = 15.0
"""Generous: the newcomer's time to link is measured by benchmarks/hostile.py."""


async def at_full_strength(attacker: Attacker, count: int = IDLE) -> None:
    """Wait until the attacker has made all its connections (it reopens those the victim closes
    from then on)."""
    await attacker.event("ready")

    def made() -> bool:
        progress = attacker.latest("progress") or {}
        return progress.get("connected", 0) + progress.get("failed", 0) >= count

    await wait_until(made, 30.0, f"{count} idle connections")


async def newcomer_links(honest: Honest) -> None:
    """A newcomer (from 127.0.0.1) bootstraps to the victim and links within LINK_TIMEOUT."""
    async with PeerRelay(bootstrap=[honest.url]) as newcomer:
        await newcomer.wait_for_peers(1, timeout=LINK_TIMEOUT)
        await wait_until(lambda: newcomer.id in honest.victim.peers, 5.0, "the victim's side")


@pytest.mark.parametrize("sources", [1, 16], ids=["one-source", "16-sources"])
async def test_newcomer_links_while_idle_sockets_hold_the_handshakes(
    honest: Honest, sources: int
) -> None:
    """2,000 idle connections from 127.0.0.2 (or from 127.0.0.2-17: 64 connections' worth of
    slots, twice ``max_pending_links``) do not keep a newcomer out, cost no honest link, and
    leave every bound of the victim within its limit."""
    victim = honest.victim
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch({"victim": victim}) as bounds,
            attacking("idle", honest.url, "--count", str(IDLE), "--sources", str(sources)) as idle,
        ):
            await at_full_strength(idle)
            await newcomer_links(honest)
            await honest.flows()
            report = await idle.finish()
    assert report["connected"] >= IDLE, report
    assert drops(victim, "too-many-pending-source", "too-many-pending") > 0
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_idle_sockets_and_control_flood_at_once(honest: Honest) -> None:
    """Both attacks together, each from its own process: 2,000 idle connections, and 5,000
    findPeers a second (half in the flood's own name, half in the names of 200 keys of its
    own). The newcomer links, the honest prober's requests are answered (19 of 20 at least), no
    honest link is lost, and the bounds hold."""
    victim, target = honest.victim, honest.victim.id.hex()
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch({"victim": victim}) as bounds,
            attacking("idle", honest.url, "--count", str(IDLE)) as idle,
            attacking("flood", honest.url, "--target", target, *FLOOD) as flood,
            attacking("flood", honest.url, "--target", target, *FLOOD, "--senders", "200") as names,
            probing(honest.url, target) as probe,
        ):
            for attacker in (flood, names, probe):
                await attacker.event("ready")
            await wait_until(
                lambda: drops(victim, "rate-limited-peer", "rate-limited-link") > 200,
                15.0,
                "the floods",
            )
            probe.command("go")  # its 4 s of asking cover the rest of the attack
            await at_full_strength(idle)
            await newcomer_links(honest)
            answered = await probe.event("done")
            await honest.flows()
            await asyncio.gather(*(a.finish() for a in (flood, names, idle)))
    assert answered["answers"] >= 19, answered
    assert answered["closed"] is None, answered
    # Both budgets engaged (their shares depend on how long the attack lasts: a link's budget
    # passes 25 requests a second, of which a sender's own passes 5).
    assert drops(victim, "rate-limited-peer") > 20 and drops(victim, "rate-limited-link") > 100
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"
