"""How the simulator and our routing hold up at scale, side by side with what came before.

Runs, each in its own process so that its peak memory is its own (the seeds of one comparison
two at a time, one per core):

- 300 peers, static, ``--seeds`` seeds (default 5): ``spread`` (ours, at most 20 links) against
  ``original`` (0.0.2's policy, links unbounded): hops as mean and spread over the seeds;
- 1,000 peers, static and with 10% of the peers replaced while messages flow: ``spread``, and
  ``spread`` routing on its own links alone (``share_links`` off, detours unbounded: the routing
  before our peers told each other their links);
- 10,000 peers, static and with 10% replaced (``--quick`` leaves them out); with ``--full``
  also the 10,000-peer static run routing on its own links alone;
- with ``--huge``, 100,000 peers, static (long; it stops early, and says so, if the run would
  not fit in memory).

Static runs send 10,000 messages at 1,000/s (2,000 at 300 peers and at 100,000 peers); churn runs
10,000 at 100/s, so that the 10% are replaced over 100 virtual seconds (half of them crash
silently and are noticed after a 20-40 s keepalive). Messages go by ``deliver()``. Control
frames per peer count every frame that is not a message (links, discovery, handshakes, lists).

Usage: ``python benchmarks/sim_scale.py [--quick] [--full] [--huge] [--seeds K] [--compiled]
[--json FILE]``. ``--compiled`` runs the core compiled by mypyc (the same runs, faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from peer_relay.sim import compiled
from peer_relay.sim.cli import run_isolated
from peer_relay.sim.runner import SimParams, SimReport, SimulationTooLarge
from peer_relay.sim.sweep import run_local, seeded
from peer_relay.wire import MAX_HOPS

ALONE = {"share_links": False, "max_detours": MAX_HOPS}
"""Routing on our own links alone, as before the lists of links (and detours unbounded)."""

ROWS = (
    "run",
    "peers",
    "churn",
    "delivery",
    "by receipt",
    "hops mean/p50/p99/max",
    "frames/deliv",
    "ctrl frames/peer",
    "links mean/max",
    "settle",
    "join",
    "wall",
    "peak RSS",
    "RSS/peer",
)


def label(strategy: str, config: dict[str, object]) -> str:
    """What a run is called in the table."""
    if strategy == "original":
        return "original"
    return "spread, own links only" if config.get("share_links") is False else "spread"


def row(r: SimReport) -> list[str]:
    """One line of the table."""
    p = r.params
    return [
        label(p["strategy"], p["config"]),
        f"{p['nodes']:,}",
        f"{p['churn']:.0%}",
        f"{r.delivery_ratio:.2%}",
        f"{r.receipt_ratio:.2%}",
        f"{r.hops_mean:.2f}/{r.hops_p50}/{r.hops_p99}/{r.hops_max}",
        f"{r.frames_per_delivered:.2f}",
        f"{r.control_frames / r.joined:.0f}",
        f"{r.links_mean:.1f}/{r.links_max}",
        f"{r.settle_time:.0f} s",
        f"{r.wall_phases.get('join', 0.0):.1f} s",
        f"{r.wall_time:.0f} s",
        f"{r.max_rss_mib:.0f} MiB",
        f"{r.max_rss_mib * 1024 / r.joined:.0f} KiB",
    ]


class Table:
    """Prints rows as they come, columns widened to fit."""

    def __init__(self) -> None:
        self.widths = [len(name) for name in ROWS]
        print(self._line(list(ROWS)), flush=True)

    def _line(self, cells: list[str]) -> str:
        self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True))

    def add(self, report: SimReport) -> None:
        print(self._line(row(report)), flush=True)
        if report.receipt_failures:
            print(f"    failed deliveries: {report.receipt_failures}", flush=True)
        if report.drops:
            print(f"    drops: {report.drops}", flush=True)


def compare_300(seeds: int, table: Table) -> list[SimReport]:
    """300 peers, ours against the original's policy over ``seeds`` seeds, two at a time."""
    base = SimParams(nodes=300, messages=2000, message_rate=1000.0, settle_max=30.0)
    reports: list[SimReport] = []
    hops: dict[str, list[float]] = {}
    for strategy in ("spread", "original"):
        runs = run_local(seeded(replace(base, strategy=strategy), seeds), jobs=2)
        for report in runs:
            table.add(report)
        hops[strategy] = [r.hops_mean for r in runs]
        reports += runs
        sd = statistics.stdev(hops[strategy]) if seeds > 1 else 0.0
        print(
            f"    {strategy} over {seeds} seeds: hops mean {statistics.mean(hops[strategy]):.3f} "
            f"(sd {sd:.3f}), frames per delivered "
            f"{statistics.mean(r.frames_per_delivered for r in runs):.2f}, links mean "
            f"{statistics.mean(r.links_mean for r in runs):.1f} (max "
            f"{max(r.links_max for r in runs)}), delivery "
            f"{min(r.delivery_ratio for r in runs):.2%}-{max(r.delivery_ratio for r in runs):.2%}",
            flush=True,
        )
    ours, theirs = hops["spread"], hops["original"]
    lower = sum(a < b for a, b in zip(ours, theirs, strict=True))
    print(f"    ours fewer hops in {lower} of {seeds} seeds", flush=True)
    return reports


def scenarios(quick: bool, full: bool, huge: bool) -> list[SimParams]:
    """The single runs, smallest first."""
    static = SimParams(nodes=1000, messages=10_000, message_rate=1000.0, settle_max=30.0)
    churn = replace(static, message_rate=100.0, churn=0.1)
    runs = [static, replace(static, config=ALONE), churn, replace(churn, config=ALONE)]
    if not quick:
        runs += [replace(static, nodes=10_000), replace(churn, nodes=10_000)]
        if full:
            runs.append(replace(static, nodes=10_000, config=ALONE))
    if huge:
        runs.append(replace(static, nodes=100_000, messages=2000, settle_max=10.0))
    return runs


def main() -> int:
    """Run the comparisons and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no 10,000-peer runs")
    parser.add_argument("--full", action="store_true", help="also 10,000 peers on own links")
    parser.add_argument("--huge", action="store_true", help="also 100,000 peers (long)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the 300-peer comparison")
    parser.add_argument("--json", metavar="FILE", help="also write every report as JSON")
    parser.add_argument("--compiled", action="store_true", help="run the core compiled by mypyc")
    args = parser.parse_args()
    if args.compiled and not compiled.is_compiled():
        target = compiled.build()
        command = [sys.executable, *sys.argv]
        return subprocess.run(command, env=compiled.environ(target), check=False).returncode
    core = "compiled by mypyc" if compiled.is_compiled() else "pure Python"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, core {core}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    table = Table()
    reports = compare_300(args.seeds, table)
    for params in scenarios(args.quick, args.full, args.huge):
        name = label(params.strategy, params.config)
        sys.stderr.write(f"{name}: {params.nodes:,} peers, churn {params.churn:.0%}\n")
        start = time.perf_counter()
        try:
            report = run_isolated(params)
        except SimulationTooLarge as exc:
            print(f"{name}, {params.nodes:,} peers: stopped early: {exc}", flush=True)
            continue
        sys.stderr.write(f"  done in {time.perf_counter() - start:.0f} s\n")
        reports.append(report)
        table.add(report)
    print(f"load at the end {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.as_dict() for r in reports], out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
