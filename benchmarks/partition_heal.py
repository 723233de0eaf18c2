"""How fast a split network links up again, at two revisions side by side in one run.

100 peers join, settle, split into two halves for 60 virtual seconds, heal; the script records
the virtual seconds until the first link crosses the halves again, the links across after
120 s, the delivery of 200 messages across, and the frames sent over the whole run, for each
seed at each revision (the revisions' sources exported as ``sim_revisions.py`` does).

    python benchmarks/partition_heal.py --base a05468c [--head REV] [--seeds 5]

Virtual time: the results do not depend on the machine or its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from sim_revisions import ROOT, environment, export

RUN = """
import json, random
from peer_relay.sim import SimNetwork
out = []
for seed in range(1, {seeds} + 1):
    net = SimNetwork(seed=seed)
    rng = random.Random(seed)
    nodes = [net.add_node()]
    for i in range(1, 100):
        net.run(0.2)
        nodes.append(net.add_node(bootstrap=[rng.choice(nodes[:i])]))
    net.run(30)
    a, b = nodes[:50], nodes[50:]
    net.partition([a, b])
    net.run(60)
    net.heal()
    start, first, cross = net.now, None, 0
    while net.now < start + 120:
        net.run(1.0)
        cross = sum(1 for n in a for p in n.core.peers if net.by_id[p] in b)
        if cross and first is None:
            first = net.now - start
    got = []
    net.on_deliver = lambda node, event: got.append(1)
    for _ in range(200):
        net.send(rng.choice(a), rng.choice(b).id, 1)
        net.run(0.02)
    net.run(10)
    out.append({{"seed": seed, "first_cross_s": first, "cross_links": cross,
                "delivery": len(got) / 200, "frames": net.frames_sent}})
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--head", default=None, help="default: the working tree")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"base": export(args.base, Path(tmp) / "base")}
        sources["head"] = ROOT / "src" if args.head is None else export(args.head, Path(tmp) / "h")
        for name, src in sources.items():
            out = subprocess.run(
                [sys.executable, "-c", RUN.format(seeds=args.seeds)],
                env=environment(src, False),
                check=True,
                capture_output=True,
                text=True,
            )
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    frames = {name: sum(r["frames"] for r in runs) for name, runs in results.items()}
    print(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "base": args.base,
                "head": args.head or "working tree",
                "runs": results,
                "first_cross_s": {n: [r["first_cross_s"] for r in v] for n, v in results.items()},
                "frames_head_over_base": round(frames["head"] / frames["base"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
