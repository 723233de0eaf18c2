"""What Noise (``peer_relay.noise``) costs in CPU: whole handshakes and transport messages.

Measures, in CPU microseconds on one core (``time.process_time_ns``), a complete XX and IK
handshake with both sides counted together (fresh ephemeral keys, static keys made beforehand,
empty payloads) for 25519_ChaChaPoly_SHA256 and 25519_ChaChaPoly_BLAKE2s, and encrypt plus
decrypt of one 100-byte and one 1 KiB transport message after ``split()``. Each figure is the
median over ``--runs`` runs of the mean of ``--batch`` operations. One X25519 key generation and
one DH are shown for scale: a handshake is mostly those (XX: 2 key pairs and 6 DHs; IK: 2 and 8).

    python benchmarks/noise_cost.py [--runs 100] [--batch 20]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import cryptography

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay.noise import CipherState, HandshakeState, KeyPair, Protocol


def cpu_us(fn: Callable[[], Any], batch: int, runs: int) -> float:
    """Median over ``runs`` runs of the mean CPU time of one call in a batch, in microseconds."""
    samples = []
    for _ in range(runs):
        start = time.process_time_ns()
        for _ in range(batch):
            fn()
        samples.append((time.process_time_ns() - start) / batch / 1000)
    return statistics.median(samples)


def handshake(protocol: Protocol, alice: KeyPair, bob: KeyPair) -> None:
    """One complete handshake, both sides; IK's initiator knows the responder's key."""
    rs = bob.public if protocol.pattern.responder_pre else None
    init = HandshakeState(protocol, True, s=alice, rs=rs)
    resp = HandshakeState(protocol, False, s=bob)
    sender, receiver = init, resp
    while not init.complete:
        receiver.read_message(sender.write_message(b""))
        sender, receiver = receiver, sender
    assert resp.complete


def transport_pair(protocol: Protocol) -> tuple[CipherState, CipherState]:
    """The initiator's sending and the responder's receiving cipher states after an NN."""
    init = HandshakeState(protocol, True)
    resp = HandshakeState(protocol, False)
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    return init.split()[0], resp.split()[0]


def round_trip(send: CipherState, receive: CipherState, data: bytes) -> None:
    """One transport message, encrypted by one side and decrypted by the other."""
    receive.decrypt(send.encrypt(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs (the median is reported)")
    parser.add_argument("--batch", type=int, default=20, help="handshakes per run")
    args = parser.parse_args()
    runs, batch = args.runs, args.batch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"peer-relay noise cost, {datetime.now().isoformat(timespec='seconds')}")
    print(
        f"  python {sys.version.split()[0]}, cryptography {cryptography.__version__}, "
        f"load average {load}, {os.cpu_count()} cpus"
    )
    print(
        f"  CPU us per operation, median of {runs} runs of {batch} handshakes, "
        f"{batch * 10} key operations or {batch * 50} messages"
    )
    rows: list[tuple[str, float]] = []
    alice, bob = KeyPair.generate(), KeyPair.generate()
    rows.append(("X25519 key generation (for scale)", cpu_us(KeyPair.generate, batch * 10, runs)))
    rows.append(("X25519 DH (for scale)", cpu_us(lambda: alice.dh(bob.public), batch * 10, runs)))
    for suite in ("25519_ChaChaPoly_SHA256", "25519_ChaChaPoly_BLAKE2s"):
        for pattern in ("XX", "IK"):
            protocol = Protocol.parse(f"Noise_{pattern}_{suite}")
            us = cpu_us(functools.partial(handshake, protocol, alice, bob), batch, runs)
            rows.append((f"{pattern} handshake, both sides, {suite}", us))
    for cipher in ("ChaChaPoly", "AESGCM"):
        send, receive = transport_pair(Protocol.parse(f"Noise_NN_25519_{cipher}_SHA256"))
        for size, label in ((100, "100 B"), (1024, "1 KiB")):
            data = os.urandom(size)
            us = cpu_us(functools.partial(round_trip, send, receive, data), batch * 50, runs)
            rows.append((f"transport encrypt + decrypt, {label}, {cipher}", us))

    width = max(len(name) for name, _ in rows) + 2
    for name, us in rows:
        print(f"  {name:<{width}}{us:9.1f} us")


if __name__ == "__main__":
    main()
