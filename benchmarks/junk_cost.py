"""What junk costs a node before it is dropped, at two revisions side by side in one run.

Junk is what an attacker can send a node for nothing: envelopes addressed to it, signed with a
key of the attacker's own but with a spoilt signature, carrying data of a chosen shape (floats
that only RFC 8785 writes right, objects, deep lists, non-ASCII keys, big integers, hex strings),
relayed to it through one link (so that the link, not the attacker, is what a budget can hold
to account). Each shape is fed as ``--mib`` MiB of frames of ``--frame-kib`` KiB to a real core
(real Ed25519) in a fresh process per revision, and the CPU time of
``Core.frame_received`` over all of them is divided by the MiB fed. ``small`` is the same with
300-byte frames: the cost per frame, not per byte.

    python benchmarks/junk_cost.py --base 14fd654          # base vs the working tree

Read ``ms_per_mib``: CPU milliseconds per MiB of junk, per shape and revision; the target of
issue 13 is at most 50. The ratio head/base is what the change did; absolute numbers move with
the machine's load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from sim_revisions import ROOT, export  # this folder is on the path of a script run here

RUN = r"""
import json, random, time, orjson
from peer_relay import wire
from peer_relay.core import Core, Config
from peer_relay.identity import Identity

SHAPES = {
    "floats": lambda n: "[" + ",".join(["1e300"] * (n // 6)) + "]",
    "whole-floats": lambda n: "[" + ",".join(["1.0"] * (n // 4)) + "]",
    "objects": lambda n: "[" + ",".join(['{"a":1,"bb":"xyz"}'] * (n // 19)) + "]",
    "deep-lists": lambda n: "[" + ",".join(["[[[[1]]]]"] * (n // 10)) + "]",
    "non-ascii-keys": lambda n: "{" + ",".join(f'"\u00e9{i}":1' for i in range(n // 10)) + "}",
    "big-ints": lambda n: "[" + ",".join(["1152921504606846976"] * (n // 20)) + "]",
    "hex-strings": lambda n: "[" + ",".join(['"3e3e3e3e"'] * (n // 11)) + "]",
}

def main(mib, frame_kib):
    now = time.time()
    target = Core(Identity.generate(), Config(), rng=random.Random(1), now=now)
    relay, attacker = Identity.generate(), Identity.generate()
    handle = target.link_accepted(now)
    greeting = next(e.frame for e in target.events() if hasattr(e, "frame"))
    hello = wire.parse_hello(orjson.loads(greeting))
    mine = b"m" * 16
    target.frame_received(handle, wire.hello_frame(relay.id, relay.public_key, mine), now)
    proof = relay.sign(wire.link_proof_bytes(hello.nonce, mine, target.id, relay.id))
    target.frame_received(handle, wire.proof_frame(proof), now)
    target.events()
    key = wire.b64encode(attacker.public_key)
    bad_sig = wire.b64encode(b"\x01" * 64)
    out = {}
    shapes = dict(SHAPES)
    shapes["small"] = lambda n: '"' + "x" * 120 + '"'
    for name, make in shapes.items():
        size = 300 if name == "small" else frame_kib * 1024
        data = make(size)
        frames = []
        total = 0
        i = 0
        while total < mib * 2**20:
            ts = int(now * 1000)
            head = (f'{{"to":"{target.hex}","from":"{attacker.id.hex()}","path":'
                    f'["{attacker.id.hex()}","{relay.id.hex()}"],"nonce":"{name}{i}",'
                    f'"auth":{{"key":"{key}","sig":"{bad_sig}","ts":{ts}}},'
                    f'"data":{{"type":"user","data":')
            frame = (head + data + "}}").encode()
            frames.append(frame)
            total += len(frame)
            i += 1
        start = time.process_time()
        for frame in frames:
            target.frame_received(handle, frame, now)
        spent = time.process_time() - start
        target.events()
        out[name] = {"ms_per_mib": round(spent * 1000 / (total / 2**20), 1),
                     "frames": len(frames),
                     "open": target.peers == [relay.id]}
    print(json.dumps({"shapes": out, "dropped": dict(target.stats.dropped)}))

main(MIB, FRAME_KIB)
"""


def run(src: Path, args: argparse.Namespace) -> dict[str, object]:
    code = RUN.replace("MIB, FRAME_KIB", f"{args.mib}, {args.frame_kib}")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(src)},
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--head", default=None, help="default: the working tree")
    parser.add_argument("--mib", type=float, default=4.0, help="MiB of junk per shape")
    parser.add_argument("--frame-kib", type=int, default=256, help="size of each junk frame")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_src = export(args.base, Path(tmp) / "base")
        head_src = ROOT / "src" if args.head is None else export(args.head, Path(tmp) / "head")
        base = run(base_src, args)
        head = run(head_src, args)
    shapes: dict[str, dict[str, object]] = {}
    base_shapes = base["shapes"]
    head_shapes = head["shapes"]
    assert isinstance(base_shapes, dict) and isinstance(head_shapes, dict)
    for name in head_shapes:
        b, h = base_shapes[name], head_shapes[name]
        shapes[name] = {
            "base_ms_per_mib": b["ms_per_mib"],
            "head_ms_per_mib": h["ms_per_mib"],
            "head_over_base": round(h["ms_per_mib"] / b["ms_per_mib"], 3)
            if b["ms_per_mib"]
            else None,
            "link_open": {"base": b["open"], "head": h["open"]},
        }
    print(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "base": args.base,
                "head": args.head or "working tree",
                "mib_per_shape": args.mib,
                "frame_kib": args.frame_kib,
                "shapes": shapes,
                "head_dropped": head["dropped"],
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
