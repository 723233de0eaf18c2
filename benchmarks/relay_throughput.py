"""Throughput and latency through one relay, in one process, on 127.0.0.1: plain unsigned,
plain signed and sealed (end-to-end encrypted and authenticated sessions) side by side.

c1 -> c2 -> c3 where c1 and c3 cannot link directly (neither listens): c1 sends N small messages
to c3 as fast as flow control allows; then c1 and c3 play ping-pong through c2. The modes run in
alternating rounds (``--rounds``), and the medians are compared to the unsigned rate of the same
run (the machine is shared: ratios, not absolute rates, are what hold).

    python benchmarks/relay_throughput.py [--messages 20000] [--pings 2000] [--rounds 3]
                                          [--modes unsigned,signed,sealed] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import contextlib

from peer_relay import PeerRelay

MODES = {
    "unsigned": {"sign": False, "allow_unsigned": True},
    "signed": {"sessions": False},
    "sealed": {},
}
"""Options of the three peers in each mode: plain messages (as 0.0.2 peers send them), plain
messages signed by their origin, and messages sealed in sessions (the default)."""


async def run(messages: int, pings: int, mode: str) -> dict[str, float]:
    opts = MODES[mode]
    # The inner peers need c2.url, so the blocks cannot be merged.
    async with PeerRelay(port=0, host="127.0.0.1", **opts) as c2:  # type: ignore[arg-type]  # noqa: SIM117
        async with (
            PeerRelay(bootstrap=[c2.url or ""], **opts) as c1,  # type: ignore[arg-type]
            PeerRelay(bootstrap=[c2.url or ""], **opts) as c3,  # type: ignore[arg-type]
        ):
            await c1.wait_for_peers(1)
            await c3.wait_for_peers(1)
            await asyncio.sleep(0.5)  # let discovery traffic settle before measuring
            assert c3.id not in c1.peers

            received = 0
            done = asyncio.Event()

            def on_message(data: object, sender: bytes) -> None:
                nonlocal received
                received += 1
                if received == messages:
                    done.set()

            c3.on("message", on_message)
            payload = {"seq": 0, "body": "x" * 32}
            start = time.perf_counter()
            for i in range(messages):
                payload = {"seq": i, "body": "x" * 32}
                c1.send(c3.id, payload)
                if i % 200 == 199:
                    await c1.drain(256 << 10)
                    await asyncio.sleep(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 60)
            elapsed = time.perf_counter() - start
            c3.off("message", on_message)

            rtts: list[float] = []
            pong: asyncio.Future[None] | None = None

            def echo(data: object, sender: bytes) -> None:
                c3.send(sender, data)

            def on_pong(data: object, sender: bytes) -> None:
                if pong is not None and not pong.done():
                    pong.set_result(None)

            c3.on("message", echo)
            c1.on("message", on_pong)
            loop = asyncio.get_running_loop()
            for i in range(pings):
                pong = loop.create_future()
                t0 = time.perf_counter()
                c1.send(c3.id, {"ping": i})
                await asyncio.wait_for(pong, 5)
                rtts.append(time.perf_counter() - t0)
            rtts.sort()
            return {
                "messages": messages,
                "received": received,
                "delivery": received / messages,
                "msg_per_s": received / elapsed,
                "rtt_p50_us": statistics.median(rtts) * 1e6,
                "rtt_p99_us": rtts[int(len(rtts) * 0.99) - 1] * 1e6,
                "relay_dropped": sum(c2.stats["dropped"].values()),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pings", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="unsigned,signed,sealed")
    parser.add_argument("--profile", help="write a cProfile of the run and print the top")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; modes are {', '.join(MODES)}")
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            results[mode].append(asyncio.run(run(args.messages, args.pings, mode)))
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{datetime.now():%Y-%m-%d}, {os.cpu_count()} cores, load {load}; {args.rounds} "
        f"alternating rounds of {args.messages} messages and {args.pings} pings; medians"
    )
    base = statistics.median(r["msg_per_s"] for r in results[modes[0]])
    for mode in modes:
        runs = results[mode]
        rate = statistics.median(r["msg_per_s"] for r in runs)
        delivered = min(r["delivery"] for r in runs)
        p50 = statistics.median(r["rtt_p50_us"] for r in runs)
        p99 = statistics.median(r["rtt_p99_us"] for r in runs)
        print(
            f"  {mode:9} {rate:9,.0f} msg/s ({rate / base:.2f}x {modes[0]}), delivered >= "
            f"{delivered:.2%}; ping-pong RTT p50 {p50:,.0f} us, p99 {p99:,.0f} us"
        )


if __name__ == "__main__":
    main()
