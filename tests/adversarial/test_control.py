"""Control floods: a peer linked to the victim sends thousands of signed ``findPeers`` a second
(from its own loopback address, 127.0.0.3), while an honest prober (another process, another
link) asks 20 times at an honest pace.

A node answers control requests within budgets per proven sender id (``peer_control_rate``),
per arrival link (``link_control_rate``) and in all (``control_rate``); a sender or a link past
its budget is refused before its signature is checked, and only requests whose signature holds
spend a budget. The prober's requests, within its own budget, are answered: 19 of 20 at least.
"""

from __future__ import annotations

from typing import Any

from .conftest import Honest
from .harness import Attacker, BoundsWatch, LinkWatch, attacking, drops, probing, wait_until

REQUESTS = 20
RATE_LIMITED = ("rate-limited-peer", "rate-limited-link", "rate-limited", "check-budget")
ATTACKER = ("--source", "127.0.0.3", "--reconnect")
"""The flood comes from its own address, and links again whenever the victim closes its link."""


async def probe_during(honest: Honest, prober: Attacker, *floods: Attacker) -> dict[str, Any]:
    """Once every flood is on and being refused, run the prober; its ``done`` report."""
    for flood in floods:
        await flood.event("ready")
    await wait_until(
        lambda: drops(honest.victim, *RATE_LIMITED, "bad-signature") > 200, 15.0, "the flood"
    )
    prober.command("go")
    answered = await prober.event("done")
    await honest.flows()
    return answered


async def test_honest_requests_are_answered_during_a_flood_in_the_floods_own_name(
    honest: Honest,
) -> None:
    """~5,000 signed findPeers a second from one peer in its own name (linking again with the
    same key when closed): the prober gets 19 of its 20 answers or more, no honest link is
    lost, the bounds hold and honest messages flow."""
    target = honest.victim.id.hex()
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch({"victim": honest.victim}) as bounds,
            probing(honest.url, target, REQUESTS) as prober,
            attacking("flood", honest.url, "--target", target, *ATTACKER) as flood,
        ):
            await prober.event("ready")
            answered = await probe_during(honest, prober, flood)
            await flood.finish()
    assert answered["answers"] >= REQUESTS - 1, answered
    assert answered["closed"] is None, answered
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_honest_requests_are_answered_during_a_flood_in_the_probers_name(
    honest: Honest,
) -> None:
    """~5,000 findPeers a second in the prober's own name, with its key and a bad signature:
    forgeries spend no budget of the prober's, which gets 19 of 20 answers or more."""
    target = honest.victim.id.hex()
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch({"victim": honest.victim}) as bounds,
            probing(honest.url, target, REQUESTS) as prober,
        ):
            ready = await prober.event("ready")
            async with attacking(
                "flood",
                honest.url,
                *("--target", target, *ATTACKER),
                *("--as-id", ready["id"], f"--as-key={ready['key']}"),
            ) as flood:
                answered = await probe_during(honest, prober, flood)
                await flood.finish()
    assert answered["answers"] >= REQUESTS - 1, answered
    assert drops(honest.victim, "bad-signature", "check-budget") > 200
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_honest_requests_are_answered_during_a_sybil_flood(honest: Honest) -> None:
    """~5,000 findPeers a second in the flood's own name, on a link that links again with a
    fresh key (from the same address) whenever the victim closes it: no per-sender or per-link
    budget lasts, and still the prober gets 19 of 20 answers or more."""
    target = honest.victim.id.hex()
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch({"victim": honest.victim}) as bounds,
            probing(honest.url, target, REQUESTS) as prober,
            attacking("flood", honest.url, "--target", target, *ATTACKER, "--fresh") as flood,
        ):
            await prober.event("ready")
            answered = await probe_during(honest, prober, flood)
            await flood.finish()
    assert answered["answers"] >= REQUESTS - 1, answered
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"
