"""The simulator's experiment on real nodes: a live network on 127.0.0.1, measured alike.

:func:`run_live` starts ``nodes`` :class:`~peer_relay.PeerRelay` peers one after the other, as
``peer-relay demo`` does (each bootstraps to a random peer already there; by default with no
pause between them), waits until the network is formed as the demo does (every peer has as
many links as it keeps to its nearest neighbours, and no link opened or closed anywhere for
``quiet`` seconds; or ``settle_max`` passed), then sends
``messages`` with ``send()`` between random pairs at ``message_rate`` a second, and measures
what arrived, and over how many hops, as :func:`~peer_relay.sim.run_simulation` does with
``sending="sealed"``. Its :class:`~peer_relay.sim.SimParams` twin is :func:`sim_twin`.

Real time and real sockets: results depend on the machine and its load.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..node import PeerRelay
from .runner import SimParams, percentile


@dataclass(frozen=True)
class LiveParams:
    """Everything that defines a live run (the pairs and bootstrap choices follow ``seed``)."""

    nodes: int = 50
    messages: int = 300
    links: int = 6
    seed: int = 1
    message_rate: float = 100.0
    """Messages sent per second."""
    start_gap: float = 0.0
    """Seconds between one peer's start and the next (0: at once, as the demo)."""
    settle_max: float = 15.0
    """Messages start once the network is formed, or after this many seconds."""
    quiet: float = 2.0
    """Seconds without a link opening or closing that count as formed."""
    drain: float = 5.0
    """Seconds the last messages have to arrive."""
    config: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`~peer_relay.core.Config` settings of every peer."""


@dataclass
class LiveReport:
    """What a live run measured."""

    sent: int
    delivered: int
    delivery_ratio: float
    hops: list[int]
    """Hops of each delivered message, ascending."""
    hops_mean: float
    hops_p99: int
    hops_max: int
    settle_time: float
    """Seconds from the last peer's start until the network was formed (or ``settle_max``)."""
    settled: bool
    links_min: int
    links_mean: float
    components: list[int]
    """Sizes of the groups of peers linked to each other when the messages started, largest
    first: one group unless the network split."""
    near_missing: float
    """Share of the links to each peer's two nearest peers (by XOR distance, among all peers)
    that were missing when the messages started: what greedy routing relies on most."""
    drops: dict[str, int]
    """Frames the peers dropped while the messages flowed, by reason."""


def sim_twin(params: LiveParams, seed: int | None = None, **overrides: Any) -> SimParams:
    """The simulation of the same network and workload: ``send()`` through sessions."""
    return SimParams(
        nodes=params.nodes,
        messages=params.messages,
        links=params.links,
        seed=params.seed if seed is None else seed,
        message_rate=params.message_rate,
        sending="sealed",
        config=dict(params.config),
        **overrides,
    )


async def run_live(params: LiveParams) -> LiveReport:
    """Run the experiment ``params`` describes on real nodes. See the module docstring."""
    if params.nodes < 2:
        raise ValueError("a live run needs at least 2 nodes")
    rng = random.Random(params.seed)
    nodes: list[PeerRelay] = []
    readers: list[asyncio.Future[None]] = []
    hops: dict[int, int] = {}
    options = {"max_links": params.links, **params.config}
    try:
        for _ in range(params.nodes):
            boot = [rng.choice(nodes).url or ""] if nodes else []
            node = PeerRelay(port=0, host="127.0.0.1", bootstrap=boot, **options)
            await node.start()
            nodes.append(node)
            await asyncio.sleep(params.start_gap)
        settled, settle_time = await _settle(nodes, params)
        links = [len(node.peers) for node in nodes]
        components = _components(nodes)
        near_missing = _near_missing(nodes)
        before = _drops(nodes)

        async def read(node: PeerRelay) -> None:
            async for message in node.messages():
                data = message.data
                number = data.get("live") if type(data) is dict else None
                if type(number) is int:
                    hops.setdefault(number, message.hops)

        readers = [asyncio.ensure_future(read(node)) for node in nodes]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for number in range(params.messages):
            source, target = rng.sample(nodes, 2)
            source.send(target.id, {"live": number})
            await asyncio.sleep(max(0.0, start + (number + 1) / params.message_rate - loop.time()))
        deadline = loop.time() + params.drain
        while len(hops) < params.messages and loop.time() < deadline:
            await asyncio.sleep(0.05)
        drops = _drops(nodes)
        drops.subtract(before)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(node.destroy() for node in nodes), return_exceptions=True)
    arrived = sorted(hops.values())
    count = len(arrived)
    return LiveReport(
        sent=params.messages,
        delivered=count,
        delivery_ratio=count / params.messages if params.messages else 0.0,
        hops=arrived,
        hops_mean=sum(arrived) / count if count else 0.0,
        hops_p99=percentile(arrived, 99),
        hops_max=arrived[-1] if arrived else 0,
        settle_time=settle_time,
        settled=settled,
        links_min=min(links),
        links_mean=sum(links) / len(links),
        components=components,
        near_missing=near_missing,
        drops={reason: n for reason, n in sorted(drops.items()) if n > 0},
    )


async def _settle(nodes: list[PeerRelay], params: LiveParams) -> tuple[bool, float]:
    """Wait until the network is formed (see the module docstring); (formed, seconds)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    # Each peer's nearest neighbours (Config.near_count) at least.
    target = min(len(nodes) - 1, max(2, min(4, params.links // 2)))
    last, quiet_since = -1, start
    while loop.time() - start < params.settle_max:
        churn = sum(n.stats["links_opened"] + n.stats["links_closed"] for n in nodes)
        if churn != last:
            last, quiet_since = churn, loop.time()
        if min(len(n.peers) for n in nodes) >= target and loop.time() - quiet_since >= params.quiet:
            return True, loop.time() - start
        await asyncio.sleep(0.1)
    return False, loop.time() - start


def _components(nodes: list[PeerRelay]) -> list[int]:
    """Sizes of the groups of peers linked to each other, largest first."""
    links = {node.id: set(node.peers) for node in nodes}
    seen: set[bytes] = set()
    sizes: list[int] = []
    for start in links:
        if start in seen:
            continue
        seen.add(start)
        todo, size = [start], 0
        while todo:
            size += 1
            for peer in links[todo.pop()]:
                if peer in links and peer not in seen:
                    seen.add(peer)
                    todo.append(peer)
        sizes.append(size)
    return sorted(sizes, reverse=True)


def _near_missing(nodes: list[PeerRelay]) -> float:
    """Share of the links to each peer's two nearest peers that are missing."""
    ids = [int.from_bytes(node.id, "big") for node in nodes]
    missing = wanted = 0
    for node, me in zip(nodes, ids, strict=True):
        linked = {int.from_bytes(peer, "big") for peer in node.peers}
        for nearest in sorted((other for other in ids if other != me), key=me.__xor__)[:2]:
            wanted += 1
            missing += nearest not in linked
    return missing / wanted if wanted else 0.0


def _drops(nodes: list[PeerRelay]) -> Counter[str]:
    total: Counter[str] = Counter()
    for node in nodes:
        total.update(node.stats.get("dropped", {}))
    return total
