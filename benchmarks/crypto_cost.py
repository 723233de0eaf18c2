"""What authentication costs per message: canonicalisation, signing, verification.

Measures, in microseconds per message on one core, the pieces an origin pays (canonical form,
signed bytes, Ed25519 sign) and a destination pays (canonical form again, key-to-id check,
Ed25519 verify), then the whole origin and destination paths of the core (``Core.send`` and
``Core.frame_received`` on two cores linked in memory) signed and unsigned. Relays pay nothing:
they do not verify. End-to-end throughput through one relay is ``relay_throughput.py [--signed]``.

    python benchmarks/crypto_cost.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import DialWebSocket, SendFrame
from peer_relay.identity import Identity, id_for_key, verify_ed25519

SMALL = {"seq": 12345, "body": "x" * 32}  # the payload of relay_throughput.py
LARGE = {
    "items": [
        {"id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["a", "b"]} for i in range(20)
    ],
    "text": "é✓😀 " * 40,
}  # about 1.5 kB of canonical JSON


def per_call_us(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of one call, in microseconds."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


class Pair:
    """Two cores linked in memory; ``send`` + ``receive`` is one message through the core."""

    def __init__(self, signed: bool) -> None:
        cfg = Config(sign=signed, require_auth=signed, max_seen=1 << 22)
        now = time.time()
        self.a = Core(Identity.generate(), cfg, rng=random.Random(1), now=now)
        self.b = Core(Identity.generate(), cfg, rng=random.Random(2), now=now)
        hb = self.b.link_accepted(now)
        self.a.bootstrap(["ws://b"], now)
        ha = next(e for e in self.a.events() if isinstance(e, DialWebSocket)).handle
        self.a.link_connected(ha, now)
        for _ in range(10):
            for src, dst, handle in ((self.a, self.b, hb), (self.b, self.a, ha)):
                for event in src.events():
                    if isinstance(event, SendFrame):
                        dst.frame_received(handle, event.frame, now)
        assert self.a.peers == [self.b.id]
        self.handle_b = hb
        self.frames: list[bytes] = []

    def send(self, payload: Any) -> None:
        self.a.send(self.b.id, payload, time.time())
        self.frames.extend(e.frame for e in self.a.events() if isinstance(e, SendFrame))

    def receive_all(self) -> None:
        now = time.time()
        for frame in self.frames:
            self.b.frame_received(self.handle_b, frame, now)
        self.b.events()
        self.frames.clear()


def core_paths(n: int, repeat: int, payload: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for signed in (False, True):
        send_runs, recv_runs = [], []
        for _ in range(repeat):
            pair = Pair(signed)
            start = time.perf_counter()
            for _ in range(n):
                pair.send(payload)
            send_runs.append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            pair.receive_all()
            recv_runs.append((time.perf_counter() - start) / n * 1e6)
            delivered = pair.b.stats.delivered
            assert delivered == n, (delivered, dict(pair.b.stats.dropped))
        mode = "signed" if signed else "unsigned"
        out[f"origin {mode}"] = statistics.median(send_runs)
        out[f"destination {mode}"] = statistics.median(recv_runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs (the median is reported)")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat

    def time_us(fn: Callable[..., Any], *args: Any) -> float:
        return per_call_us(functools.partial(fn, *args), n, repeat)

    me = Identity.generate()
    to, sender = Identity.generate().id.hex(), me.id.hex()
    rows: list[tuple[str, float]] = []
    for name, payload in (("small", SMALL), ("1.5 kB", LARGE)):
        body = {"type": "user", "data": payload}
        data = wire.canonical(body)
        signed = wire.signed_bytes(to, sender, "1234567890", 1_760_000_000_000, data)
        sig = me.sign(signed)
        key = me.public_key
        frame = wire.origin_frame(to, sender, "1234567890", data, {"k": 1})
        parsed = wire.loads(frame, 1 << 20)
        received = parsed["data"]
        rows += [
            (f"canonicalise ({name}, {len(data)} B)", time_us(wire.canonical, body)),
            (f"canonicalise received ({name})", time_us(wire.canonical_received, received)),
            (f"signed bytes ({name})", time_us(wire.signed_bytes, to, sender, "1", 1, data)),
            (f"sign ({name})", time_us(me.sign, signed)),
            (f"verify ({name})", time_us(verify_ed25519, key, sig, signed)),
        ]
    rows.append(("key -> id check (sha256)", time_us(id_for_key, me.public_key)))
    auth = {"key": wire.b64encode(me.public_key), "sig": wire.b64encode(sig), "ts": 1}
    rows.append(("parse auth member", time_us(wire.parse_auth, auth)))

    print(f"per message, median of {repeat} runs of {n:,} (one core, {sys.version.split()[0]})")
    width = max(len(name) for name, _ in rows) + 2
    for name, us in rows:
        print(f"  {name:<{width}}{us:8.2f} us")
    print("core paths, small payload (everything the core does for one message):")
    paths = core_paths(min(n, 20_000), repeat, SMALL)
    for name, us in paths.items():
        print(f"  {name:<{width}}{us:8.2f} us   ({1e6 / us:,.0f} msg/s)")
    for side in ("origin", "destination"):
        extra = paths[f"{side} signed"] - paths[f"{side} unsigned"]
        print(f"  {side} cost of authentication: +{extra:.2f} us per message")


if __name__ == "__main__":
    main()
