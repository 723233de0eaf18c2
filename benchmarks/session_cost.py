"""What sessions cost in CPU, in the core alone (no sockets): a new pair's handshake, both sides
counted, and one message through a relay, plain and sealed, side by side.

Cores are wired by hand (frames handed from one to the next in one process), so the figures are
the core's own work: what the WebSocket layer adds is the same for every mode (see
``relay_throughput.py`` for the live ratio).

- handshake: alice and bob are linked (each has the other's key from the link's proof); the CPU
  time of alice's first ``send()`` to bob until every frame it causes is handled (OPEN with the
  data in it, ACCEPT): both sides, with a fresh pair of cores for each sample.
- per message: alice -> relay -> bob, alice and bob not linked: the CPU time per message of a
  batch, from ``send()`` to bob's delivery, for plain unsigned, plain signed and sealed messages.

    python benchmarks/session_cost.py [--runs 30] [--batch 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay import noise, sealing
from peer_relay.core import Config, Core
from peer_relay.events import Delivered, DialWebSocket, SendFrame
from peer_relay.identity import Identity

T0 = 1_800_000_000.0


class Wired:
    """Cores linked in memory; :meth:`drain` hands every frame on until all are quiet."""

    def __init__(self) -> None:
        self.cores: dict[str, Core] = {}
        self.ends: dict[tuple[str, int], tuple[str, int]] = {}
        self.delivered = 0

    def add(self, name: str, listen: bool, **config: Any) -> Core:
        url = f"ws://{name}" if listen else None
        core = Core(
            Identity.generate(),
            Config(url=url, **config),
            rng=random.Random(os.urandom(8)),
            now=T0,
        )
        self.cores[name] = core
        return core

    def link(self, dialer: str, server: str) -> None:
        self.cores[dialer].bootstrap([f"ws://{server}"], T0)
        self.drain()

    def drain(self) -> None:
        busy = True
        while busy:
            busy = False
            for name, core in self.cores.items():
                for event in core.events():
                    busy = True
                    if type(event) is SendFrame:
                        other, handle = self.ends[(name, event.handle)]
                        self.cores[other].frame_received(handle, event.frame, T0)
                    elif type(event) is Delivered:
                        self.delivered += 1
                    elif type(event) is DialWebSocket:
                        server = event.url.removeprefix("ws://")
                        handle = self.cores[server].link_accepted(T0, "ws", name)
                        self.ends[(name, event.handle)] = (server, handle)
                        self.ends[(server, handle)] = (name, event.handle)
                        core.link_connected(event.handle, T0)


MODES: dict[str, dict[str, Any]] = {
    "unsigned": {"sign": False, "require_auth": False, "sessions": False},
    "signed": {"sessions": False},
    "sealed": {},
}


def handshake_us() -> float:
    """CPU microseconds of one new pair's first message, both sides."""
    net = Wired()
    net.add("bob", True)
    alice = net.add("alice", False)
    net.link("alice", "bob")
    bob_id = net.cores["bob"].id
    start = time.process_time_ns()
    alice.send(bob_id, {"hello": 1}, T0)
    net.drain()
    elapsed = time.process_time_ns() - start
    assert net.delivered == 1
    return elapsed / 1000


def noise_ik_us() -> float:
    """CPU microseconds of a bare Noise IK handshake, both sides (for scale: the floor)."""
    protocol = noise.Protocol.parse(sealing.PROTOCOL)
    alice, bob = noise.KeyPair.generate(), noise.KeyPair.generate()
    start = time.process_time_ns()
    for _ in range(10):
        init = noise.HandshakeState(protocol, True, s=alice, rs=bob.public)
        resp = noise.HandshakeState(protocol, False, s=bob)
        resp.read_message(init.write_message(b"x" * 60))
        init.read_message(resp.write_message(b""))
        init.split()
        resp.split()
    return (time.process_time_ns() - start) / 10 / 1000


def sealed_message_us() -> float:
    """CPU microseconds of one sealed message on an open session between linked peers."""
    net = Wired()
    net.add("bob", True)
    alice = net.add("alice", False)
    net.link("alice", "bob")
    bob_id = net.cores["bob"].id
    alice.send(bob_id, {"hello": 1}, T0)
    net.drain()
    start = time.process_time_ns()
    for i in range(20):
        alice.send(bob_id, {"hello": i}, T0)
        net.drain()
    return (time.process_time_ns() - start) / 20 / 1000


def per_message_us(mode: str, batch: int) -> float:
    """CPU microseconds per message alice -> relay -> bob in ``mode``."""
    opts = MODES[mode]
    net = Wired()
    net.add("relay", True, **opts)
    alice = net.add("alice", False, **opts)
    net.add("bob", False, **opts)
    net.link("alice", "relay")
    net.link("bob", "relay")
    bob_id = net.cores["bob"].id
    alice.send(bob_id, {"warm": 0}, T0)  # the session, in sealed mode
    net.drain()
    net.delivered = 0
    payload = {"seq": 0, "body": "x" * 32}
    start = time.process_time_ns()
    for i in range(batch):
        payload = {"seq": i, "body": "x" * 32}
        alice.send(bob_id, payload, T0)
        net.drain()
    elapsed = time.process_time_ns() - start
    assert net.delivered == batch, (mode, net.delivered)
    return elapsed / batch / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    handshakes, plain_after, bare = [], [], []
    per: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):
        handshakes.append(handshake_us())
        plain_after.append(sealed_message_us())
        bare.append(noise_ik_us())
        for mode in MODES:
            per[mode].append(per_message_us(mode, args.batch))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{datetime.now():%Y-%m-%d}, {os.cpu_count()} cores, load {load}; medians of "
        f"{args.runs} alternating runs (CPU time)"
    )
    hs, one = statistics.median(handshakes), statistics.median(plain_after)
    print(
        f"  a new pair's first message, both sides: {hs:,.0f} us; a message on the open "
        f"session: {one:,.0f} us; so the handshake: {hs - one:,.0f} us (a bare Noise IK "
        f"handshake, both sides: {statistics.median(bare):,.0f} us)"
    )
    base = statistics.median(per["unsigned"])
    for mode, samples in per.items():
        cost = statistics.median(samples)
        print(
            f"  {mode:9} {cost:6.1f} us per message through a relay "
            f"({base / cost:.2f}x the unsigned rate)"
        )


if __name__ == "__main__":
    main()
