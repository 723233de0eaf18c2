"""Golden digests: the exact outcome of fixed simulations, pinned.

They hold the core's behaviour still through structural changes: every frame's bytes, the order
of every event of every core, every counter. A change that moves code without changing what it
does keeps them. A change of behaviour must update them in its own commit, saying why.

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
        "96f635450edf7ebf20a2d95a0f9c91be40c15208c956633f465f59c84b0e3f9f",
    ),
    "churn-with-loss": (
        SimParams(nodes=120, messages=250, seed=22, churn=0.15, loss=0.02),
        "5d2e791fd51b8f961a99235bf29c467ce126558dc14347fb330c4f258198b5f9",
    ),
    "original-strategy": (
        SimParams(nodes=80, messages=150, seed=23, strategy="original"),
        "c1c8da5774a45773253471a8726a8b28421a6f32ed5cc18cc497ec0896ed29a9",
    ),
    "real-crypto": (
        SimParams(nodes=30, messages=40, seed=24, real_crypto=True),
        "a949c259048231b1bf656e75fd3e11968602c975d0e5500c0504057742ef99c0",
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


TRACES = {
    False: "623977a53d32c2bdfdbaedbff218a01f180ef97263c665fc8dbfa214d16b0119",
    True: "480cd09540e1be2c95808f9c0c39edde4c89f73801999ea52d34a8bf9f62e637",
}


@pytest.mark.parametrize("real_crypto", [False, True])
def test_event_trace_is_pinned(real_crypto: bool) -> None:
    assert _trace(real_crypto) == TRACES[real_crypto]
