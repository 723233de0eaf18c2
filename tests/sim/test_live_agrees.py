"""A live network and a simulation of the same size agree on delivery and hop counts.

30 real nodes (:class:`peer_relay.PeerRelay` over WebSockets on 127.0.0.1) and 30 simulated
cores, with the same settings: a small link budget (6) so that messages take a few hops, and a
short refresh interval so that the live network settles within seconds. Both must deliver every
message, and their mean hop counts must differ by at most ``HOPS_TOLERANCE`` (the simulation's
mean over three seeds spreads by about 0.3 hops at this size).

Both send the same way: ``send()``, which goes end to end through sessions by default (the live
nodes' Noise, the simulation's stand-in suite of the same messages), so the simulation runs with
``sending="sealed"``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

from helpers import settled

from peer_relay import PeerRelay
from peer_relay.sim.runner import SimParams, run_simulation

NODES = 30
MESSAGES = 300
SETTINGS: dict[str, Any] = {"max_links": 6, "refresh_interval": 3.0}
HOPS_TOLERANCE = 0.5


async def _live_run(seed: int) -> tuple[float, float]:
    """Delivery ratio and mean hops of a live network."""
    rng = random.Random(seed)
    nodes: list[PeerRelay] = []
    readers: list[asyncio.Future[None]] = []
    hops: dict[int, int] = {}
    try:
        for _ in range(NODES):
            boot = [rng.choice(nodes).url or ""] if nodes else []
            node = PeerRelay(port=0, host="127.0.0.1", bootstrap=boot, **SETTINGS)
            await node.start()
            nodes.append(node)
            await asyncio.sleep(0.05)
        await settled(nodes, timeout=60.0)

        async def read(node: PeerRelay) -> None:
            async for message in node.messages():
                if isinstance(message.data, dict) and "i" in message.data:
                    hops.setdefault(message.data["i"], message.hops)

        readers = [asyncio.ensure_future(read(node)) for node in nodes]
        await asyncio.sleep(0)
        for i in range(MESSAGES):
            source, target = rng.sample(nodes, 2)
            source.send(target.id, {"i": i})
            if i % 20 == 19:
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(hops) < MESSAGES and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(n.destroy() for n in nodes))
    return len(hops) / MESSAGES, statistics.mean(hops.values()) if hops else 0.0


async def test_live_network_and_simulation_agree() -> None:
    live_delivery, live_hops = await _live_run(seed=30)
    sims = [
        run_simulation(
            SimParams(
                nodes=NODES,
                messages=MESSAGES,
                seed=seed,
                links=SETTINGS["max_links"],
                join_rate=5.0,
                sending="sealed",
                config={"refresh_interval": SETTINGS["refresh_interval"]},
            )
        )
        for seed in (1, 2, 3)
    ]
    sim_delivery = statistics.mean(r.delivery_ratio for r in sims)
    sim_hops = statistics.mean(r.hops_mean for r in sims)
    print(
        f"\n{NODES} peers, {MESSAGES} messages: live delivery {live_delivery:.1%}, hops "
        f"{live_hops:.2f}; simulated delivery {sim_delivery:.1%}, hops {sim_hops:.2f}"
    )
    assert live_delivery >= 0.99
    assert sim_delivery >= 0.99
    assert abs(live_hops - sim_hops) <= HOPS_TOLERANCE
