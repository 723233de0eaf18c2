"""The testbed's done-when figures (issue 15): real peer-relay processes on emulated hosts.

    sudo .venv/bin/python benchmarks/testbed.py [--only NAME ...] [--messages 1000] [--json FILE]

Scenarios, each 4 hosts x 10 peers, 30 ms one way, 1% loss:

- ``send``: every host public, ``send()``: target >= 99.9% delivered;
- ``deliver``: the same with ``deliver()``: target 100% confirmed by receipt;
- ``cone``: half the hosts behind a cone NAT, coturn for STUN only, 10 busy NATed pairs:
  target >= 90% of the busy pairs on a direct WebRTC link, no message lost meanwhile;
- ``symmetric``: half behind a symmetric NAT, coturn for STUN and TURN, 10 busy pairs:
  they use TURN or stay on the overlay; no message lost;
- ``churn`` (no target yet): one host behind a cone NAT, 5 peers SIGKILLed and restarted, then
  a partition into h1,h3 | h2,h4 for 5 s and its heal: delivery in each phase.

Prints each report with the date and the machine's load (wall-clock figures depend on it).
Needs root, iproute2, nftables and coturn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay.testbed import Shape, TestbedError
from peer_relay.testbed.scenario import Scenario, run_scenario

SHAPE = Shape(delay=0.030, loss=0.01)
PARTITION = (("h1", "h3"), ("h2", "h4"))


def scenarios(messages: int) -> dict[str, Scenario]:
    """The done-when scenarios by name."""
    base = Scenario(hosts=4, peers=10, shape=SHAPE, messages=messages, rate=50.0, seed=1)
    cone = replace(base, nated=2, busy_pairs=10, busy_messages=80, upgrade_wait=30.0, turn=True)
    return {
        "send": base,
        "deliver": replace(base, mode="deliver"),
        "cone": replace(cone, nat="cone", stun_only=True),
        "symmetric": replace(cone, nat="symmetric"),
        "churn": replace(base, nat="cone", nated=1, churn=5, partition=PARTITION),
    }


def load() -> str:
    """The load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=("send", "deliver", "cone", "symmetric", "churn")
    )
    parser.add_argument("--messages", type=int, default=1000, help="per traffic phase")
    parser.add_argument("--json", metavar="FILE", help="also write every report as JSON")
    args = parser.parse_args()
    out: dict[str, object] = {}
    print(f"peer-relay testbed, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load()}")
    for name, scenario in scenarios(args.messages).items():
        if args.only and name not in args.only:
            continue
        print(f"\n== {name} (load before: {load()})", flush=True)
        started = time.monotonic()
        try:
            report = run_scenario(scenario, progress=lambda text: print(f"   {text}", flush=True))
        except TestbedError as exc:
            print(f"   failed: {exc}")
            out[name] = {"error": str(exc)}
            continue
        print(report.format())
        print(f"wall {time.monotonic() - started:.1f} s, load after: {load()}", flush=True)
        out[name] = {**report.to_dict(), "load_after": load()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
