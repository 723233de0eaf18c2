"""A live network and the simulation of the same size agree on delivery and hop counts.

50 real nodes (:class:`peer_relay.PeerRelay` over WebSockets on 127.0.0.1) started one after
the other without a pause, as ``peer-relay demo`` starts them, and the simulation of the same
network as ``peer-relay simulate`` runs it (peers joining over half a minute, a long settle),
with 6 links per peer (where messages take a few hops and the tables must be right) and 20.
Both send with ``send()`` (end to end through sessions; the simulation with
``sending="sealed"``).

A network started at once used to take far longer than the demo waits (15 s) to link up: peers
missed their nearest neighbours (a third of those links missing at 15 s), refreshed only every
15 s, and messages sent meanwhile wandered until max_hops or a dead end (``too-many-hops``,
``no-route``) and were lost (up to 4% in this test). Messages start once the network is formed
or after the demo's 15 s; by then the live network must have (nearly) every peer linked to its
nearest peers, deliver 99% and match the simulation: mean hops within ``HOPS_TOLERANCE``, max
hops at most twice. (The 99.9% of issue 15 needs more messages than a test can afford:
``benchmarks/live_vs_sim.py`` sends 1,500 per link budget.)
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest

from peer_relay.sim import run_simulation
from peer_relay.sim.live import LiveParams, run_live, sim_twin

HOPS_TOLERANCE = 0.5
NEAR_MISSING = 0.2
"""Most of the links to each peer's two nearest peers that may be missing when messages start
(a settled simulation misses about 6%; the live network used to miss 30-45% then)."""
ATTEMPTS = 2
"""Live runs at most: a network started at once can still split (a few newcomers that their
bootstrap peer let go as they joined, linked only to each other: about one burst in forty in
the simulator, ``benchmarks/live_vs_sim.py`` prints the groups). Such a run is run again; a
split is not what this test is about, routing in one network is."""


@pytest.mark.parametrize(("links", "messages"), [(6, 300), (20, 200)])
async def test_live_network_and_simulation_agree(links: int, messages: int) -> None:
    params = LiveParams(nodes=50, messages=messages, links=links, seed=links, settle_max=15.0)
    for attempt in range(ATTEMPTS):
        live = await run_live(replace(params, seed=params.seed + 100 * attempt))
        if len(live.components) == 1:
            break
        print(f"\nthe live network split into groups of {live.components}: once more")
    sims = [run_simulation(sim_twin(params, seed=seed)) for seed in (1, 2)]
    sim_delivery = statistics.mean(r.delivery_ratio for r in sims)
    sim_hops = statistics.mean(r.hops_mean for r in sims)
    sim_max = max(r.hops_max for r in sims)
    print(
        f"\n50 peers, {links} links, {messages} messages: live formed "
        f"{'in' if live.settled else 'NOT in'} {live.settle_time:.1f}s, groups "
        f"{live.components}, near links missing {live.near_missing:.0%}, delivery "
        f"{live.delivery_ratio:.1%}, hops mean {live.hops_mean:.2f} max {live.hops_max}, "
        f"drops {live.drops}; simulated delivery {sim_delivery:.1%}, hops mean "
        f"{sim_hops:.2f} max {sim_max}"
    )
    assert live.near_missing <= NEAR_MISSING
    assert live.delivery_ratio >= 0.99
    assert sim_delivery >= 0.99
    assert abs(live.hops_mean - sim_hops) <= HOPS_TOLERANCE
    assert live.hops_max <= 2 * sim_max
