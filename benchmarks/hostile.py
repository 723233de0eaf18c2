"""How a node holds up under attack: idle sockets holding its handshakes with a control flood
at the same time, then junk that costs it CPU to refuse.

The victim listens on 127.0.0.1 in this process, with two honest client-only peers linked to it;
each attacker is a process of its own (tests/adversarial/attacker.py): ``--idle`` connections
from 127.0.0.2 that upgrade and never say hello (reopened when closed), and ``--rate`` signed
findPeers a second from a peer at 127.0.0.3 (linking again with its key when closed). While
both run, an honest prober asks the victim 20 findPeers (5 a second), then a newcomer
bootstraps to the victim ``--runs`` times. Once they stop, an authenticated attacker sends
``--junk-mib`` MiB of each junk shape (bad signatures) to the victim.

    python benchmarks/hostile.py [--runs 5] [--idle 2000] [--rate 5000] [--junk-mib 20]

Prints JSON:

- ``newcomer_link_s``: seconds from a newcomer's start() to its first link, each run (goal:
  under 2 s);
- ``honest_answered``: the prober's answers / requests (goal: 95% or more);
- ``victim_cpu``: this process's CPU seconds per wall second while the prober ran (1.0 is one
  core busy; the victim is nearly all of it), and the frames it read a second;
- ``junk_ms_per_mib``: per shape, this process's CPU milliseconds per MiB of junk the victim
  read, less its idle CPU (goal: 50 or less), with the MiB read and the attacker's links that
  the victim closed;
- ``date`` and ``loadavg`` (``os.getloadavg()`` before and after): CPU figures move with the
  machine's load (the attackers share its cores); compare runs made at a like load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from adversarial.forge import JUNK  # noqa: E402
from adversarial.harness import (  # noqa: E402
    LOCAL,
    attacking,
    more_open_files,
    probing,
    quiet,
    wait_until,
)

from peer_relay import PeerRelay  # noqa: E402


def cpu() -> float:
    """This process's CPU seconds (user and system)."""
    return time.process_time()


async def idle_cpu(seconds: float) -> float:
    """CPU seconds a wall second while nothing is sent, polling as the measurements do."""
    start_cpu, start = cpu(), time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(0.005)
    return (cpu() - start_cpu) / (time.monotonic() - start)


async def under_attack(victim: PeerRelay, args: argparse.Namespace) -> dict[str, Any]:
    """Idle sockets and a control flood at once: the prober, the CPU, the newcomers."""
    url, target = victim.url or "", victim.id.hex()
    flood_options = ("--source", "127.0.0.3", "--reconnect", "--rate", str(args.rate))
    async with (
        attacking("idle", url, "--count", str(args.idle)) as idle,
        attacking("flood", url, "--target", target, *flood_options) as flood,
        probing(url, target) as prober,
    ):
        for attacker in (idle, flood, prober):
            await attacker.event("ready")

        def full_strength() -> bool:
            progress = idle.latest("progress") or {}
            return progress.get("connected", 0) + progress.get("failed", 0) >= args.idle

        await wait_until(full_strength, 60.0, "the idle connections")
        frames, start_cpu, start = victim.stats["frames_in"], cpu(), time.monotonic()
        prober.command("go")
        answered = await prober.event("done", 60.0)
        wall = time.monotonic() - start
        busy = (cpu() - start_cpu) / wall
        frames_per_s = (victim.stats["frames_in"] - frames) / wall
        link_s: list[float | None] = []
        for _ in range(args.runs):
            start = time.monotonic()
            async with PeerRelay(bootstrap=[url]) as newcomer:
                try:
                    await newcomer.wait_for_peers(1, timeout=30.0)
                    link_s.append(round(time.monotonic() - start, 3))
                except TimeoutError:
                    link_s.append(None)
        reports = await asyncio.gather(idle.finish(), flood.finish())
    return {
        "newcomer_link_s": link_s,
        "honest_answered": f"{answered['answers']}/{answered['requests']}",
        "victim_cpu": {"cpu_per_s": round(busy, 3), "frames_in_per_s": round(frames_per_s)},
        "attackers": {
            "idle": {k: v for k, v in reports[0].items() if k != "event"},
            "flood": {"sent": reports[1]["sent"], "links": reports[1]["links"]},
        },
        "victim_dropped": dict(victim.stats["dropped"]),
    }


async def junk_cost(victim: PeerRelay, args: argparse.Namespace) -> dict[str, Any]:
    """CPU ms per MiB of each junk shape the victim reads, less its idle CPU."""
    baseline = await idle_cpu(2.0)
    out: dict[str, Any] = {}
    options = ("--mib", str(args.junk_mib), "--frame-kib", str(args.frame_kib), "--reconnect")
    async with attacking(
        "junk", victim.url or "", "--target", victim.id.hex(), "--wait", *options
    ) as junk:
        await junk.event("ready")
        for shape in JUNK:
            await junk.event("shape-ready")
            stats = victim.stats
            read, start_cpu, start = stats["bytes_in"], cpu(), time.monotonic()
            junk.command("go")
            done = await junk.event("shape-done", 300.0)
            last = await quiet(victim, 0.3)
            mib = (victim.stats["bytes_in"] - read) / (1 << 20)
            spent = last[1] - start_cpu - baseline * (last[2] - start)
            out[shape] = {
                "ms_per_mib": round(1000 * spent / mib, 1) if mib else None,
                "mib_read": round(mib, 2),
                "links_closed": len(done["closes"]),
            }
        await junk.finish()
    return {"idle_cpu_per_s": round(baseline, 4), "junk_ms_per_mib": out}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    more_open_files()
    load_before = os.getloadavg()
    async with (
        PeerRelay(**LOCAL) as victim,
        PeerRelay(bootstrap=[victim.url or ""]) as alice,
        PeerRelay(bootstrap=[victim.url or ""]) as bob,
    ):
        await alice.wait_for_peers(1)
        await bob.wait_for_peers(1)
        attack = await under_attack(victim, args)
        junk = await junk_cost(victim, args)
        honest_links = sorted(p.hex()[:8] for p in victim.peers)
    return {
        "date": date.today().isoformat(),
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "cpus": os.cpu_count(),
        "options": vars(args),
        **attack,
        **junk,
        "victim_links_at_end": honest_links,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="newcomers, one after the other")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections")
    parser.add_argument("--rate", type=int, default=5000, help="findPeers a second")
    parser.add_argument("--junk-mib", type=int, default=20, help="MiB of each junk shape")
    parser.add_argument("--frame-kib", type=int, default=64, help="size of a junk frame")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
