"""WebRTC links between two Python peers through the node API, next to WebSocket links.

    .venv/bin/python benchmarks/webrtc_node.py [--runs 15] [--messages 5000] [--size 100]
                                               [--pings 300] [--mode signed|unsigned|both]

Everything runs in one process on 127.0.0.1: a relay (Python, WebSocket server) and two peers
bootstrapped to it. For WebRTC both peers are client-only (no server, ``wrtc=True``, ICE host
candidates on 127.0.0.1, no ICE server), so the link can only be WebRTC; for WebSocket the
answering peer listens and neither has WebRTC. For each transport it measures:

* setup: ``await a.connect(b.id)`` (handshake through the relay, then the link: signalling,
  ICE, DTLS, SCTP and the first frames for WebRTC; dial, hello and proof for WebSocket) until
  it returns, and until b reports the link too; median and 90th percentile of ``--runs``;
* throughput: a sends ``--messages`` messages of ``--size`` payload bytes to b as fast as flow
  control (``a.drain``) allows, over the direct link; messages/s and MB/s of payload at b;
* round trip: ``--pings`` ping-pongs, one at a time; median.

Signed (the default for peers) and unsigned messages are measured apart: with signing, the
Ed25519 signature and check cost as much as the transport. The relay's frame counter is checked
to show that none of the measured traffic passed through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay import PeerRelay

LOOPBACK = ["127.0.0.1"]


@contextlib.asynccontextmanager
async def trio(
    transport: str, signed: bool
) -> AsyncIterator[tuple[PeerRelay, PeerRelay, PeerRelay]]:
    """A relay and two peers a, b bootstrapped to it (not linked to each other)."""
    common: dict[str, Any] = {"refresh_interval": 3600.0}
    if not signed:
        common.update(sign=False, allow_unsigned=True)
    if transport == "webrtc":
        a_opts = {"wrtc": True, "ice_host_addresses": LOOPBACK, **common}
        b_opts = dict(a_opts)
    else:
        a_opts = dict(common)
        b_opts = {"port": 0, "host": "127.0.0.1", **common}
    # control_rate=0: the relay answers no findPeers, so a and b link only when asked to.
    async with PeerRelay(port=0, host="127.0.0.1", control_rate=0, **common) as relay:
        assert relay.url is not None
        async with (
            PeerRelay(bootstrap=[relay.url], **a_opts) as a,
            PeerRelay(bootstrap=[relay.url], **b_opts) as b,
        ):
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            while not (a.id in relay.peers and b.id in relay.peers):
                await asyncio.sleep(0.01)
            yield relay, a, b


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.0005)


async def measure_setup(a: PeerRelay, b: PeerRelay, transport: str, runs: int) -> dict[str, float]:
    asker_ms: list[float] = []
    both_ms: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await a.connect(b.id, timeout=15)
        asker_ms.append((time.perf_counter() - started) * 1000)
        await wait_until(lambda: a.id in b.peers)
        both_ms.append((time.perf_counter() - started) * 1000)
        assert a.link_transport(b.id) == transport, a.link_transport(b.id)
        a.disconnect(b.id)
        await wait_until(lambda: a.id not in b.peers and b.id not in a.peers)
        # let the closed link's resources go before the next run
        await wait_until(lambda: all(n._rtc is None or not n._rtc.links for n in (a, b)))
    return {
        "setup_ms": statistics.median(asker_ms),
        "setup_p90_ms": _p90(asker_ms),
        "setup_both_ms": statistics.median(both_ms),
    }


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


async def measure_throughput(
    relay: PeerRelay, a: PeerRelay, b: PeerRelay, messages: int, size: int
) -> dict[str, float]:
    received = 0
    done = asyncio.Event()

    def on_message(data: Any, sender: bytes) -> None:
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    b.on("message", on_message)
    body = "x" * size
    relay_frames = relay.stats["frames_in"]
    started = time.perf_counter()
    for i in range(messages):
        a.send(b.id, {"seq": i, "body": body})
        if i % 100 == 99:
            await a.drain(128 << 10)
            await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    b.off("message", on_message)
    return {
        "msg_per_s": messages / elapsed,
        "mb_per_s": messages * size / elapsed / 1e6,
        "relay_frames": relay.stats["frames_in"] - relay_frames,
    }


async def measure_rtt(a: PeerRelay, b: PeerRelay, pings: int) -> dict[str, float]:
    pong: asyncio.Future[None] | None = None

    def on_b(data: Any, sender: bytes) -> None:
        if isinstance(data, dict) and "ping" in data:
            b.send(sender, {"pong": data["ping"]})

    def on_a(data: Any, sender: bytes) -> None:
        if isinstance(data, dict) and "pong" in data and pong is not None and not pong.done():
            pong.set_result(None)

    b.on("message", on_b)
    a.on("message", on_a)
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    for i in range(pings):
        pong = loop.create_future()
        started = time.perf_counter()
        a.send(b.id, {"ping": i})
        await asyncio.wait_for(pong, 10)
        rtts.append((time.perf_counter() - started) * 1000)
    b.off("message", on_b)
    a.off("message", on_a)
    return {"rtt_ms": statistics.median(rtts)}


async def run(transport: str, signed: bool, args: argparse.Namespace) -> dict[str, float]:
    async with trio(transport, signed) as (relay, a, b):
        result = await measure_setup(a, b, transport, args.runs)
        await a.connect(b.id, timeout=15)
        await wait_until(lambda: a.id in b.peers)
        await asyncio.sleep(0.2)  # the new link's findPeers exchange, out of the way
        result.update(await measure_throughput(relay, a, b, args.messages, args.size))
        result.update(await measure_rtt(a, b, args.pings))
        assert a.link_transport(b.id) == transport
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="link setups to time")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes per message")
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--mode", choices=["signed", "unsigned", "both"], default="both")
    args = parser.parse_args()
    modes = [True, False] if args.mode == "both" else [args.mode == "signed"]

    rows = []
    for signed in modes:
        for transport in ("webrtc", "ws"):
            result = asyncio.run(run(transport, signed, args))
            rows.append((transport, "signed" if signed else "unsigned", result))

    print(
        f"\n{args.messages} messages of {args.size} payload bytes, {args.runs} setups, "
        f"{args.pings} pings; one process, 127.0.0.1"
    )
    header = (
        f"{'transport':<9} {'messages':<9} {'setup ms':>9} {'p90 ms':>7} {'both ms':>8} "
        f"{'msg/s':>8} {'MB/s':>6} {'rtt ms':>7} {'via relay':>9}"
    )
    print(header)
    print("-" * len(header))
    for transport, mode, r in rows:
        print(
            f"{transport:<9} {mode:<9} {r['setup_ms']:>9.1f} {r['setup_p90_ms']:>7.1f} "
            f"{r['setup_both_ms']:>8.1f} {r['msg_per_s']:>8.0f} {r['mb_per_s']:>6.2f} "
            f"{r['rtt_ms']:>7.2f} {int(r['relay_frames']):>9}"
        )
    print(
        "\nsetup ms: connect() until it returns (median); both ms: until the answerer has the "
        "link too.\nvia relay: frames the relay received during the throughput run (0: all "
        "direct)."
    )


if __name__ == "__main__":
    main()
