"""Golden digests: the exact outcome of fixed simulations, pinned.

They hold the core's behaviour still through structural changes: every frame's bytes, the order
of every event of every core, every counter. A change that moves code without changing what it
does keeps them. A change of behaviour must update them in its own commit, saying why.

History of the run digests (the event traces kept theirs, until sessions):
- the report's ``bounds`` gained the structures the simulator did not read before (WebRTC links,
  unconfirmed messages and bytes, introducers, lookup questions): the runs are the same, the
  report holds more.
- the report's ``pending_links`` counts inbound handshakes only, and it gained ``opening`` (our
  own dials) and ``budgets`` (per-source budgets, issue 13): the runs are the same (with the old
  read-out in place of the new, the old digests come out), the report holds more.
- sessions (``core/sessions.py``, ``core/delivery.py``): every simulated core has a suite (the
  stand-in, or Noise with ``real_crypto``), and the message phase sends with ``deliver()``
  (``SimParams.sending``): key exchanges, handshakes carrying the data, receipts, sending again.
  The report gained the receipts (``receipted``, ``receipt_ratio``, ``receipt_failures``,
  ``sender_left``, ``receipt_p50``/``p99``), the frames of messages by kind
  (``message_frames``, ``message_origins``) and the misbehaving relays (``swallowers``,
  ``frames_swallowed``); its ``bounds`` gained ``sessions``, ``session_queue``, ``peer_keys``,
  ``deliveries``, ``requests_in`` and ``delivered_ids``. With ``sending="plain"`` the runs are
  the old ones: the digest computed as before (the new fields left out) is the one the code
  before sessions gives, bounds apart.
- issue 15 (a live network started at once disagreed with the simulation): a ``spread`` peer
  refreshes every ``refresh_interval / 8`` while its near links change and twice as late each
  time they stay the same (the core's refresh clock asks the population), a lookup round asks
  the nearest link and one beyond our neighbourhood, a peer with a small link budget is on an
  island below ``near_count + 1`` links, and the simulator closes links as WebSockets do (the
  close follows the frames sent before it; the closing side learns it once the remote's answer,
  behind the remote's own frames, arrives; frames are no longer lost at a forgotten handle).
  Every report's ``bounds`` also reads ``direct`` (the peers counted for direct links, see
  ``core/direct.py``; no pair of these runs is busy enough for one, and without that read-out
  the runs give the digests of before that change): that alone changed the ``original``
  strategy's run, which none of the above touches (it never closes a link, and refreshes every
  ``refresh_interval``).
- issue 16 (confirmation cost a ping and a pong per message and hop): pings are coalesced, one
  ``confirm_delay`` (0.05 s) after the first message it covers, or at once when half of
  ``max_unconfirmed`` waits. With ``confirm_delay=0`` every digest here is the one of before.
- issue 18 (routes two hops ahead): our peers tell each other the ids of their links
  (``core/neighbours.py``: a ``links`` frame, and the key proof carries one) and a next hop is
  the linked peer that is, or is linked to, the peer closest to the target; a message is dropped
  after ``max_detours`` hops in a row that bring it no closer; a ``spread`` peer keeps the asker
  of a findPeers as a candidate when it is nearer than one of its nearest links. The report's
  ``bounds`` gained ``listed``: that alone changed the ``original`` strategy's run (without that
  read-out its digest is the one of before).

History of the event traces:
- sessions: ``send()`` goes through a session (``Config.sessions``) now that the simulated cores
  have a suite, so the sends of both traces are key exchanges, handshakes and sealed frames.
  Real Noise draws its ephemeral keys from the operating system: in the real-crypto trace, a
  session message's bytes count by their length (every other byte, and the order and time of
  every event, as before).
- issue 15: the refreshes and the simulator's closes above.
- issue 16: the coalesced pings above.
- issue 18: the lists of links and the routes two hops ahead above.

History of the partition trace:
- the bootstrap redials run on one clock (``cut-off``, ``rejoin``, ``island``; see
  ``core/bootstrap.py``): a failed first dial is retried after ``bootstrap_retry`` doubling (was
  ``refresh_interval`` doubling, and only with the ``spread`` strategy), redials skip the
  bootstrap peers we are linked to, and rejoin and island dials fire on their own deadline
  instead of at the next refresh.
- issue 15: the refreshes, lookups and closes above (see the run digests).
- issue 16: the coalesced pings (see the run digests).
- issue 18: the lists of links and the routes two hops ahead (see the run digests).

Digests are independent of the machine, of ``PYTHONHASHSEED`` and of compiled or pure Python
(``test_simulator.py`` and ``test_compiled.py`` check that).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

import pytest

from peer_relay.events import SendFrame
from peer_relay.sim import SimNetwork, SimNode
from peer_relay.sim.runner import SimParams, run_simulation

RUNS: dict[str, tuple[SimParams, str]] = {
    "static": (
        SimParams(nodes=150, messages=300, seed=21),
        "e7e0fac0fdb971916dcdac6313394bbbc9b6475c1c10a860a95a1047e45181c5",
    ),
    "churn-with-loss": (
        SimParams(nodes=120, messages=250, seed=22, churn=0.15, loss=0.02),
        "bf066138a0e318ca457ce80bb2c93b1267b21779742dfbb1cb953dd52a8e73d4",
    ),
    "original-strategy": (
        SimParams(nodes=80, messages=150, seed=23, strategy="original"),
        "6924597f65fbb8a55798cd3853cf51d4ef8af1adb366e9ab60fd8b4047b3e965",
    ),
    "real-crypto": (
        SimParams(nodes=30, messages=40, seed=24, real_crypto=True),
        "6f37e546ccc2b5403c23d38d6e6ec1ddb4e985ce8f23beac3e3b7288d5196706",
    ),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_simulation_digest_is_pinned(name: str) -> None:
    params, expected = RUNS[name]
    assert run_simulation(params).digest == expected


_SESSION_BYTES = re.compile(rb'\{"data":"([A-Za-z0-9+/=]*)","type":"sealed"\}')


def _sizes_of_session_bytes(event: object) -> object:
    """``event``, with the base64 of any session message it sends written as its length."""
    if type(event) is not SendFrame:
        return event
    frame = _SESSION_BYTES.sub(lambda m: b'{"data":%d}' % len(m[1]), event.frame)
    return SendFrame(event.handle, frame)


def _trace(real_crypto: bool) -> str:
    """Hash every event of every core, in order, over a small network with loss, sends,
    a clean leave and a crash (with real Noise, whose keys the operating system draws, the
    bytes of session messages by their length)."""
    net = SimNetwork(seed=5, loss=0.02, real_crypto=real_crypto)
    h = hashlib.sha256()

    def on_trace(node: SimNode, event: object) -> None:
        if real_crypto:
            event = _sizes_of_session_bytes(event)
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
    False: "63d65981dbbba0c03f8aa34c015345439b0e0234d433828aea6e63247e547b2f",
    True: "615a7d053a65b5d32c69314cecce42f3c3cb258874e4badac851db54a320cd67",
}


@pytest.mark.parametrize("real_crypto", [False, True])
def test_event_trace_is_pinned(real_crypto: bool) -> None:
    assert _trace(real_crypto) == TRACES[real_crypto]


PARTITION_TRACE = "ec9ca69733326fcf3ce3dd1e85778ed3a539277fcf643095348c987784715ce3"


def test_partition_and_redial_trace_is_pinned() -> None:
    assert _partition_trace() == PARTITION_TRACE
