"""A live network and the simulator, side by side: delivery and hops of the same workload.

For each link budget (``--links``, default 6 and 20) and each round (a seed), the script runs

- **live**: ``--nodes`` real peers on 127.0.0.1 started one after the other, as
  ``peer-relay demo`` does, then ``--messages`` sent with ``send()`` between random pairs once
  the network is formed (see :mod:`peer_relay.sim.live`);
- **sim**: the simulation of the same size and workload as ``peer-relay simulate`` runs it
  (peers join over half a minute, the network settles until quiet);
- **sim-burst**: the same simulation with the peers joining as fast as the live ones do.

and prints delivery, mean/p99/max hops of each, and live over sim. Live results depend on the
machine and its load: the load average is printed with them.

    python benchmarks/live_vs_sim.py [--nodes 50] [--messages 500] [--rounds 3] [--links 6 20]

Run it against another source tree with ``PYTHONPATH=that/src`` (it prints which it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import peer_relay
from peer_relay.sim import SimReport, run_simulation
from peer_relay.sim.live import LiveParams, LiveReport, run_live, sim_twin


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(delivered: int, sent: int, hops: list[int]) -> dict[str, float]:
    """Delivery and hop figures over the messages of every round."""
    hops = sorted(hops)
    return {
        "delivery": delivered / sent if sent else 0.0,
        "lost": sent - delivered,
        "sent": sent,
        "mean": statistics.mean(hops) if hops else 0.0,
        "p99": hops[max(0, -(-99 * len(hops) // 100) - 1)] if hops else 0,
        "max": hops[-1] if hops else 0,
    }


def sim_hops(report: SimReport) -> list[int]:
    """The hops of every delivered message of a simulation (its histogram, unrolled)."""
    return [hops for hops, count in report.hop_histogram.items() for _ in range(count)]


def row(name: str, s: dict[str, float]) -> str:
    return (
        f"  {name:<10} {s['delivery']:>9.3%} ({s['sent'] - s['lost']:.0f}/{s['sent']:.0f})"
        f" {s['mean']:>6.2f} {s['p99']:>4.0f} {s['max']:>4.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--messages", type=int, default=500, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (seeds 1..N)")
    parser.add_argument("--links", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--settle", type=float, default=15.0, help="most seconds to form")
    args = parser.parse_args()
    print(f"live vs simulated, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    source = os.path.dirname(peer_relay.__file__)
    print(f"peer_relay from {source}, Python {sys.version.split()[0]}")
    print(f"{args.nodes} peers, {args.messages} messages x {args.rounds} rounds, send()")
    print(f"load average at start: {load()}")
    for links in args.links:
        base = LiveParams(
            nodes=args.nodes, messages=args.messages, links=links, settle_max=args.settle
        )
        live: list[LiveReport] = []
        sim: list[SimReport] = []
        burst: list[SimReport] = []
        loads: list[str] = []
        started = time.perf_counter()
        for seed in range(1, args.rounds + 1):
            params = replace(base, seed=seed)
            report = asyncio.run(run_live(params))
            loads.append(load())
            live.append(report)
            print(
                f"  [{links} links, seed {seed}] live {report.delivered}/{report.sent}, formed "
                f"{'in' if report.settled else 'NOT in'} {report.settle_time:.1f}s, groups "
                f"{report.components}, near links missing {report.near_missing:.0%}, links "
                f"min {report.links_min} mean {report.links_mean:.1f}, drops {report.drops}, "
                f"load {loads[-1]}",
                flush=True,
            )
            sim.append(run_simulation(sim_twin(params)))
            # One peer every ~22 ms, as the live ones start on this machine.
            burst.append(run_simulation(sim_twin(params, join_rate=45.0, join_max_rate=45.0)))
        results = {
            "live": summary(
                sum(r.delivered for r in live),
                sum(r.sent for r in live),
                [h for r in live for h in r.hops],
            ),
            "sim": summary(
                sum(r.delivered for r in sim),
                sum(r.sent for r in sim),
                [h for r in sim for h in sim_hops(r)],
            ),
            "sim-burst": summary(
                sum(r.delivered for r in burst),
                sum(r.sent for r in burst),
                [h for r in burst for h in sim_hops(r)],
            ),
        }
        print(f"\n{args.nodes} peers, {links} links ({time.perf_counter() - started:.0f} s):")
        print(f"  {'':<10} {'delivered':>9} {'':>11} {'mean':>6} {'p99':>4} {'max':>4} hops")
        for name, s in results.items():
            print(row(name, s))
        lv, sm = results["live"], results["sim"]
        print(
            f"  live/sim   delivery {lv['delivery'] / sm['delivery']:.4f}, mean hops "
            f"{lv['mean'] - sm['mean']:+.2f} ({lv['mean'] / sm['mean']:.2f}x), max hops "
            f"{lv['max'] / sm['max']:.2f}x; load during live runs: {'; '.join(loads)}\n"
        )


if __name__ == "__main__":
    main()
