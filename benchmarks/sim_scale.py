"""How the simulator and our routing hold up at scale: 10,000 peers (and optionally 100,000).

Runs, each in its own process so that its peak memory is its own:

- ``spread`` at 1,000 and 10,000 peers, static: delivery, hops, frames, links, settle time,
  wall time and peak memory (the goal: 10,000 peers and 10,000 messages within 2 minutes and
  4 GiB);
- ``spread`` at 10,000 peers with 10% of the peers replaced while messages flow, with the
  websockets keepalive (20-40 s to notice a silent peer) and a faster one (5-10 s);
- ``original`` (0.0.2's policy) at 1,000 peers, static and churning, for comparison (and at
  10,000 with ``--original-10k``);
- ``spread`` at 1,000 peers churning with hop-by-hop confirmation off, to show what it is worth;
- ``spread`` at 1,000 peers, static, with a tenth of the peers swallowing the messages they relay
  while they answer pings (what receipts and sending again over other first hops are for);
- with ``--huge``, ``spread`` at 100,000 peers (long: it shows that it runs).

Messages go by ``deliver()`` (receipts; the rows "by receipt" and "receipt p50/p99"), or as
``--send`` says: ``sealed`` (``send()`` through sessions) or ``plain`` (``send()`` without
sessions: the figures from before sessions). Frames per delivered message count every frame of a
message, the sessions' key exchanges, handshakes and receipts included.

Usage: ``python benchmarks/sim_scale.py [--quick] [--huge] [--original-10k] [--compiled]
[--send MODE] [--json FILE]``. ``--compiled`` runs the core compiled by mypyc (see
``peer_relay.sim.compiled``; the same runs, the same digests, faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace

from peer_relay.sim import compiled
from peer_relay.sim.cli import run_isolated
from peer_relay.sim.runner import SENDING, SimParams, SimReport

ROWS = (
    "strategy",
    "peers",
    "churn",
    "keepalive",
    "confirm",
    "swallow",
    "sending",
    "delivery",
    "by receipt",
    "receipt p50/p99",
    "hops mean/p50/p99/max",
    "frames/deliv",
    "links/peer",
    "settle",
    "wall",
    "peak RSS",
)


def scenarios(
    quick: bool, huge: bool, original_10k: bool, sending: str = "deliver"
) -> list[SimParams]:
    """The runs, smallest first.

    Static runs send 10,000 messages at 1,000/s; churn runs at 100/s, so that 10% of the peers
    are replaced over 100 virtual seconds (half of them crash silently and are noticed after a
    20-40 s keepalive, or 5-10 s in the "fast keepalive" run).
    """
    static = SimParams(
        nodes=1000, messages=10_000, message_rate=1000.0, settle_max=30.0, sending=sending
    )
    churn = replace(static, message_rate=100.0, churn=0.1)
    runs = [
        static,
        replace(static, strategy="original"),
        churn,
        replace(churn, config={"max_unconfirmed": 0}),
        replace(churn, strategy="original"),
        replace(static, swallowers=0.1),
    ]
    if not quick:
        runs += [
            replace(static, nodes=10_000),
            replace(churn, nodes=10_000),
            replace(churn, nodes=10_000, keepalive=(5.0, 10.0)),
        ]
        if original_10k:
            runs.append(replace(static, nodes=10_000, strategy="original"))
    if huge:
        runs.append(
            replace(static, nodes=100_000, messages=2000, settle_max=10.0, join_max_rate=200.0)
        )
    return runs


def row(r: SimReport) -> list[str]:
    """One line of the table."""
    p = r.params
    confirm = p["config"].get("confirm_timeout", 3.0)
    off = p["config"].get("max_unconfirmed") == 0
    deliver = p["sending"] == "deliver"
    return [
        p["strategy"],
        str(p["nodes"]),
        f"{p['churn']:.0%}",
        "{:.0f}-{:.0f} s".format(*p["keepalive"]),
        "off" if off else f"{confirm:g} s",
        f"{p['swallowers']:.0%}",
        p["sending"],
        f"{r.delivery_ratio:.2%}",
        f"{r.receipt_ratio:.2%}" if deliver else "-",
        f"{r.receipt_p50:.3f}/{r.receipt_p99:.3f} s" if deliver else "-",
        f"{r.hops_mean:.2f}/{r.hops_p50}/{r.hops_p99}/{r.hops_max}",
        f"{r.frames_per_delivered:.2f}",
        f"{r.links_mean:.1f}",
        f"{r.settle_time:.0f} s",
        f"{r.wall_time:.0f} s",
        f"{r.max_rss_mib:.0f} MiB",
    ]


def progress(phase: str, done: float, total: float, virtual: float) -> None:
    """A status line on stderr."""
    what = f"settling {done:.0f}s" if phase == "settle" else f"{phase} {done:.0f}/{total:.0f}"
    sys.stderr.write(f"\r  {what} | virtual {virtual:.0f}s".ljust(60))
    sys.stderr.flush()


def main() -> int:
    """Run the scenarios and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 peers only")
    parser.add_argument("--huge", action="store_true", help="also 100,000 peers (long)")
    parser.add_argument(
        "--original-10k", action="store_true", help="also 0.0.2's policy at 10,000 peers"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every report as JSON")
    parser.add_argument("--compiled", action="store_true", help="run the core compiled by mypyc")
    parser.add_argument(
        "--send",
        choices=SENDING,
        default="deliver",
        help="how messages are sent (default deliver; plain: as before sessions)",
    )
    args = parser.parse_args()
    if args.compiled and not compiled.is_compiled():
        target = compiled.build()
        command = [sys.executable, *sys.argv]
        return subprocess.run(command, env=compiled.environ(target), check=False).returncode
    print(f"core: {'compiled by mypyc' if compiled.is_compiled() else 'pure Python'}", flush=True)
    reports: list[SimReport] = []
    widths = [len(name) for name in ROWS]
    print("  ".join(name.ljust(w) for name, w in zip(ROWS, widths, strict=True)), flush=True)
    for params in scenarios(args.quick, args.huge, args.original_10k, args.send):
        sys.stderr.write(f"{params.strategy} {params.nodes} peers, churn {params.churn:.0%}\n")
        start = time.perf_counter()
        report = run_isolated(params, progress)
        sys.stderr.write(f"\r  done in {time.perf_counter() - start:.0f} s".ljust(60) + "\n")
        reports.append(report)
        cells = row(report)
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)), flush=True)
        if report.receipt_failures:
            print(f"    failed deliveries: {report.receipt_failures}", flush=True)
        print(f"    message frames: {report.message_frames}", flush=True)
        if report.drops:
            print(f"    drops: {report.drops}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.as_dict() for r in reports], out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
