"""The simulator's speed at two revisions of the code, side by side in one run.

Each revision's sources are exported (``git archive``) into a temporary folder; the same
simulation then runs in a fresh process for each, alternating, ``--rounds`` times, and the
medians and their ratio are printed with the machine's load. ``--compiled`` runs each
revision's core compiled by mypyc (built once per revision into the usual cache).

    python benchmarks/sim_revisions.py --base a05468c            # base vs the working tree
    python benchmarks/sim_revisions.py --base a05468c --head HEAD --compiled

Only wall time of :func:`run_simulation` is measured (inside the process, not its start-up).
``--send`` chooses how the messages are sent (``SimParams.sending``) in a revision that has the
choice; one from before it sends as ``plain`` does. The JSON says how each revision sent.
``--instructions`` also counts the instructions of one run of each revision under valgrind's
cachegrind (the whole process, start-up included): a count that the machine's load does not
change, for a shared machine whose timings swing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import dataclasses, json, sys
from peer_relay.sim.runner import SimParams, run_simulation
from peer_relay.sim import compiled
has = "sending" in {{f.name for f in dataclasses.fields(SimParams)}}
extra = {{"sending": {sending!r}}} if has and {sending!r} else {{}}
r = run_simulation(SimParams(nodes={nodes}, messages={messages}, seed={seed}, **extra))
print(json.dumps({{"wall": r.wall_time, "digest": r.digest, "compiled": compiled.is_compiled(),
                  "delivery": r.delivery_ratio,
                  "sending": r.params.get("sending", "plain")}}))
"""

BUILD = """
from peer_relay.sim import compiled
print(compiled.build())
"""


def export(rev: str, into: Path) -> Path:
    """The sources of ``rev`` in a folder of their own (``into``/src)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def environment(src: Path, compiled: bool) -> dict[str, str]:
    """The environment that imports ``peer_relay`` from ``src`` (its compiled copy if asked)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    if compiled:
        out = subprocess.run(
            [sys.executable, "-c", BUILD], env=env, check=True, capture_output=True, text=True
        )
        target = out.stdout.strip().splitlines()[-1]
        env["PYTHONPATH"] = target + os.pathsep + str(src)
    return env


def one_run(env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    code = RUN.format(nodes=args.nodes, messages=args.messages, seed=args.seed, sending=args.send)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def instructions(env: dict[str, str], args: argparse.Namespace) -> int:
    """Instructions one run takes, counted by cachegrind."""
    code = RUN.format(nodes=args.nodes, messages=args.messages, seed=args.seed, sending=args.send)
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-c",
            code,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    for line in out.stderr.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.split(":")[1].replace(",", "").strip())
    raise RuntimeError("cachegrind printed no instruction count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument(
        "--head", default=None, help="the revision to measure (default: the working tree)"
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each (0: none)")
    parser.add_argument(
        "--send",
        default="",
        metavar="MODE",
        help="deliver, sealed or plain (default: each revision's own default)",
    )
    parser.add_argument("--compiled", action="store_true", help="run the mypyc-compiled core")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_src = export(args.base, Path(tmp) / "base")
        head_src = ROOT / "src" if args.head is None else export(args.head, Path(tmp) / "head")
        envs = {"base": environment(base_src, args.compiled)}
        envs["head"] = environment(head_src, args.compiled)
        walls: dict[str, list[float]] = {"base": [], "head": []}
        seen: dict[str, dict[str, object]] = {}
        for round_ in range(args.rounds):
            order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
            for name in order:
                result = one_run(envs[name], args)
                walls[name].append(float(result["wall"]))  # type: ignore[arg-type]
                seen[name] = result
                print(f"round {round_ + 1} {name}: {result['wall']:.2f} s", file=sys.stderr)
        counts = (
            {name: instructions(envs[name], args) for name in ("base", "head")}
            if args.instructions
            else None
        )
    base = statistics.median(walls["base"]) if walls["base"] else None
    head = statistics.median(walls["head"]) if walls["head"] else None
    print(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "base": args.base,
                "head": args.head or "working tree",
                "compiled": args.compiled,
                "nodes": args.nodes,
                "messages": args.messages,
                "rounds": args.rounds,
                "median_s": {"base": base, "head": head},
                "head_over_base": round(head / base, 3) if base and head else None,
                "instructions": counts,
                "instructions_head_over_base": (
                    round(counts["head"] / counts["base"], 4) if counts else None
                ),
                "digests_equal": (
                    seen["base"]["digest"] == seen["head"]["digest"] if seen else None
                ),
                "delivery": [seen[name]["delivery"] for name in seen],
                "sending": {name: seen[name]["sending"] for name in seen},
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
