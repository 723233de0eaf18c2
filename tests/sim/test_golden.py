"""Golden digests: the exact outcome of fixed simulations, pinned.

They hold the core's behaviour still through structural changes: every frame's bytes, the order
of every event of every core, every counter. A change that moves code without changing what it
does keeps them. A change of behaviour must update them in its own commit, saying why.

History of the run digests (the event traces kept theirs):
- the report's ``bounds`` gained the structures the simulator did not read before (WebRTC links,
  unconfirmed messages and bytes, introducers, lookup questions): the runs are the same, the
  report holds more.
- the report's ``pending_links`` counts inbound handshakes only, and it gained ``opening`` (our
  own dials) and ``budgets`` (per-source budgets, issue 13): the runs are the same (with the old
  read-out in place of the new, the old digests come out), the report holds more.

History of the partition trace:
- the bootstrap redials run on one clock (``cut-off``, ``rejoin``, ``island``; see
  ``core/bootstrap.py``): a failed first dial is retried after ``bootstrap_retry`` doubling (was
  ``refresh_interval`` doubling, and only with the ``spread`` strategy), redials skip the
  bootstrap peers we are linked to, and rejoin and island dials fire on their own deadline
  instead of at the next refresh.

Digests are independent of the machine, of ``PYTHONHASHSEED`` and of compiled or pure Python
(``test_simulator.py`` and ``test_compiled.py`` check that).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from peer_relay.sim import SimNetwork, SimNode
from peer_relay.sim.runner import SimParams, run_simulation

RUNS: dict[str, tuple[SimParams, str]] = {
    "static": (
        SimParams(nodes=150, messages=300, seed=21),
        "e1b74ed6784239e3e406576184bffd382d59b444cc506e4fc35767165c6e063a",
    ),
    "churn-with-loss": (
        SimParams(nodes=120, messages=250, seed=22, churn=0.15, loss=0.02),
        "0c083304259f739e1971923bd94f64f0636604ba6be2a71cde67a7e28797f3ef",
    ),
    "original-strategy": (
        SimParams(nodes=80, messages=150, seed=23, strategy="original"),
        "fc9a18394913da5903f37e025662a51ac7e03a148747c0c378d8875b2965b473",
    ),
    "real-crypto": (
        SimParams(nodes=30, messages=40, seed=24, real_crypto=True),
        "d207ac42b18c1911ad8ad3153f5e6fce75c471eb1ed173944f11b20e9fdf4a2e",
    ),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_simulation_digest_is_pinned(name: str) -> None:
    params, expected = RUNS[name]
    assert run_simulation(params).digest == expected


def _trace(real_crypto: bool) -> str:
    """Hash every event of every core, in order, over a small network with loss, sends,
    a clean leave and a crash."""
    net = SimNetwork(seed=5, loss=0.02, real_crypto=real_crypto)
    h = hashlib.sha256()

    def on_trace(node: SimNode, event: object) -> None:
        h.update(f"{node.index} {net.now:.6f} {event!r}\n".encode())

    net.on_trace = on_trace
    rng = random.Random(9)
    nodes: list[SimNode] = [net.add_node()]
    for i in range(1, 24):
        net.run(0.5)
        nodes.append(net.add_node(listen=i % 4 != 0, bootstrap=[rng.choice(nodes[:i])]))
    net.run(30.0)
    payloads: list[Any] = [1, "two", [3.5, None], {"k": True}]
    for i in range(40):
        a, b = rng.sample(net.alive(), 2)
        net.send(a, b.id, payloads[i % len(payloads)])
        net.run(0.05)
        if i == 15:
            net.leave(nodes[3])
        if i == 25:
            net.crash(nodes[7])
    net.run(45.0)
    return h.hexdigest()


def _partition_trace() -> str:
    """Hash every event over a partition that heals and a newcomer whose bootstrap dial fails:
    the bootstrap peers' redials."""
    net = SimNetwork(seed=8)
    h = hashlib.sha256()
    net.on_trace = lambda node, event: h.update(f"{node.index} {net.now:.6f} {event!r}\n".encode())
    rng = random.Random(3)
    nodes: list[SimNode] = [net.add_node()]
    for i in range(1, 40):
        net.run(0.3)
        nodes.append(net.add_node(bootstrap=[rng.choice(nodes[:i])]))
    net.run(20.0)
    a, b = nodes[:20], nodes[20:]
    net.partition([a, b])
    newcomer = net.add_node(bootstrap=[b[0]])  # in no group: its dial fails
    net.run(60.0)
    net.heal()
    net.run(90.0)
    for _ in range(30):
        net.send(rng.choice(a), rng.choice([*b, newcomer]).id, "x")
        net.run(0.1)
    net.run(10.0)
    return h.hexdigest()


TRACES = {
    False: "623977a53d32c2bdfdbaedbff218a01f180ef97263c665fc8dbfa214d16b0119",
    True: "480cd09540e1be2c95808f9c0c39edde4c89f73801999ea52d34a8bf9f62e637",
}


@pytest.mark.parametrize("real_crypto", [False, True])
def test_event_trace_is_pinned(real_crypto: bool) -> None:
    assert _trace(real_crypto) == TRACES[real_crypto]


PARTITION_TRACE = "5099d28d5b193c3526d21f11ecde2c97ede3dff8e8cca4a9afd20ba11d1e521f"


def test_partition_and_redial_trace_is_pinned() -> None:
    assert _partition_trace() == PARTITION_TRACE
