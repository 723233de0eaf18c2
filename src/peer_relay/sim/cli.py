"""``peer-relay simulate``: run the simulator from the command line and print what it measured.

:func:`main` takes the arguments that follow ``simulate`` and returns an exit status; the
``peer-relay`` command hands it its arguments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from . import compiled
from .runner import SENDING, STRATEGIES, SimParams, SimReport, run_simulation

PLOT_HINT = "--plot needs matplotlib: pip install 'peer-relay[plot]'"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``peer-relay simulate``."""
    parser = argparse.ArgumentParser(
        prog="peer-relay simulate",
        description="Run N peers (the real core) on a virtual clock and measure routing.",
    )
    parser.add_argument("--nodes", "-n", type=int, default=1000, help="peers (default 1000)")
    parser.add_argument("--messages", "-m", type=int, default=1000, help="messages (default 1000)")
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of peers replaced while messages flow, e.g. 0.1 (default 0)",
    )
    parser.add_argument(
        "--crash-share",
        type=float,
        default=0.5,
        metavar="P",
        help="share of leaving peers that crash without a goodbye (default 0.5)",
    )
    parser.add_argument(
        "--loss", type=float, default=0.0, metavar="P", help="envelope loss per link (0..1)"
    )
    parser.add_argument("--links", type=int, default=None, metavar="K", help="most links per peer")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--strategy",
        default="spread",
        metavar="NAME",
        help=f"population policy: {', '.join(STRATEGIES)} or all (default spread)",
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="messages per virtual second (default 100)"
    )
    parser.add_argument(
        "--join-growth",
        type=float,
        default=SimParams.join_growth,
        metavar="G",
        help=f"arrivals per second per peer while joining (default {SimParams.join_growth})",
    )
    parser.add_argument(
        "--real-crypto",
        action="store_true",
        help="Ed25519 and Noise instead of a keyed hash and a stand-in (slow)",
    )
    parser.add_argument(
        "--send",
        dest="sending",
        choices=SENDING,
        default="deliver",
        help="deliver: with receipts, sent again over other first hops when late (default); "
        "sealed: fire and forget through sessions (send()); plain: fire and forget, signed, "
        "no sessions (the simulator before sessions)",
    )
    parser.add_argument(
        "--no-receipts",
        dest="sending",
        action="store_const",
        const="plain",
        help="the same as --send plain: the old figures",
    )
    parser.add_argument(
        "--deliver-timeout",
        type=float,
        default=SimParams.deliver_timeout,
        metavar="S",
        help=f"seconds a delivery has for its receipt (default {SimParams.deliver_timeout:g})",
    )
    parser.add_argument(
        "--swallowers",
        type=float,
        default=0.0,
        metavar="P",
        help="share of peers that drop the messages they relay but answer pings (default 0)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw hops and delivery over time")
    parser.add_argument("--json", action="store_true", help="print JSON (and no progress)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the core compiled by mypyc (built once; needs a C compiler)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``peer-relay simulate`` with ``argv`` (the arguments after ``simulate``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(STRATEGIES) if args.strategy == "all" else [args.strategy]
    for name in names:
        if name not in STRATEGIES:
            parser.error(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}, all")
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    if args.messages < 0 or not 0 <= args.loss < 1 or not 0 <= args.churn <= 1:
        parser.error("--messages must be >= 0, --loss in [0, 1) and --churn in [0, 1]")
    if not 0 <= args.swallowers <= 1 or not args.deliver_timeout > 0:
        parser.error("--swallowers must be in [0, 1] and --deliver-timeout > 0")
    if args.plot and not _have_matplotlib():
        print(f"peer-relay simulate: {PLOT_HINT}", file=sys.stderr)
        return 2
    if args.compiled and not compiled.is_compiled():
        return _rerun_compiled(list(sys.argv[1:] if argv is None else argv))
    base = SimParams(
        nodes=args.nodes,
        messages=args.messages,
        seed=args.seed,
        links=args.links,
        churn=args.churn,
        crash_share=args.crash_share,
        loss=args.loss,
        message_rate=args.rate,
        join_growth=args.join_growth,
        real_crypto=args.real_crypto,
        sending=args.sending,
        deliver_timeout=args.deliver_timeout,
        swallowers=args.swallowers,
    )
    progress = None if args.json else _Progress(sys.stderr)
    reports: list[SimReport] = []
    for name in names:
        params = SimParams(**{**base.__dict__, "strategy": name})
        if progress is not None:
            progress.strategy = name
        if len(names) > 1:
            reports.append(run_isolated(params, progress))
        else:
            reports.append(run_simulation(params, progress))
        if progress is not None:
            progress.done()
    if args.json:
        core = "compiled" if compiled.is_compiled() else "python"
        print(json.dumps({"core": core, "runs": [r.as_dict() for r in reports]}, indent=2))
    else:
        print(format_reports(reports))
    if args.plot:
        plot_reports(reports, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


class _Progress:
    """One status line on a terminal, rewritten in place."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.strategy = ""
        self.start = time.perf_counter()
        self.width = 0

    def __call__(self, phase: str, done: float, total: float, virtual: float) -> None:
        wall = time.perf_counter() - self.start
        what = f"settling {done:.0f}s" if phase == "settle" else f"{phase} {done:.0f}/{total:.0f}"
        line = f"[{self.strategy}] {what} | virtual {virtual:.0f}s | wall {wall:.0f}s"
        self.out.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.out.flush()

    def done(self) -> None:
        if self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()
        self.width = 0
        self.start = time.perf_counter()


def run_isolated(params: SimParams, progress: Any = None) -> SimReport:
    """Run one simulation in a child process (its memory measured alone), if fork exists."""
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        return run_simulation(params, progress)
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(params, progress, sender), daemon=True)
    child.start()
    sender.close()
    try:
        report: SimReport = receiver.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the simulation process died (exit code {child.exitcode})") from None
    child.join()
    return report


def _child(params: SimParams, progress: Any, sender: Any) -> None:
    sender.send(run_simulation(params, progress))
    sender.close()


def _rerun_compiled(cli_args: list[str]) -> int:
    """Build the compiled core if needed, then run ``simulate cli_args`` again on it."""
    print("peer-relay simulate: compiling the core with mypyc (once) ...", file=sys.stderr)
    try:
        target = compiled.build()
    except compiled.CompileError as exc:
        print(f"peer-relay simulate: {exc}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "peer_relay.cli", "simulate", *cli_args]
    return subprocess.run(command, env=compiled.environ(target), check=False).returncode


def _fmt_drops(drops: dict[str, int], sep: str = ", ") -> str:
    items = sorted(drops.items(), key=lambda item: -item[1])
    return sep.join(f"{k} {v}" for k, v in items) or "none"


def _fmt_kinds(r: SimReport) -> str:
    """Frames of each kind of message (how many were sent: the rest is relaying)."""
    items = sorted(r.message_frames.items(), key=lambda item: -item[1])
    return ", ".join(f"{k} {v} ({r.message_origins.get(k, 0)})" for k, v in items) or "none"


def _by_receipt(r: SimReport) -> str:
    if r.params.get("sending", "deliver") != "deliver":
        return "-"
    heard = r.receipted + sum(r.receipt_failures.values())
    return f"{r.receipt_ratio:.2%} ({r.receipted}/{heard})"


def _receipt_time(r: SimReport) -> str:
    if r.params.get("sending", "deliver") != "deliver":
        return "-"
    return f"{r.receipt_p50:.3f}/{r.receipt_p99:.3f} s"


def format_reports(reports: list[SimReport]) -> str:
    """A table, one column per run."""
    first = reports[0].params
    head = (
        f"{first['nodes']} peers, {reports[0].sent} messages, churn {first['churn']:.0%}, "
        f"loss {first['loss']:.1%}, seed {first['seed']}, sent by {first['sending']}"
    )
    if first["swallowers"]:
        head += f", {reports[0].swallowers} peers swallow what they relay"
    rows: list[tuple[str, list[str]]] = [
        ("strategy", [r.params["strategy"] for r in reports]),
        ("delivery", [f"{r.delivery_ratio:.2%} ({r.delivered}/{r.sent})" for r in reports]),
        ("hops mean", [f"{r.hops_mean:.2f}" for r in reports]),
        (
            "hops p50/p90/p99/max",
            [f"{r.hops_p50}/{r.hops_p90}/{r.hops_p99}/{r.hops_max}" for r in reports],
        ),
        ("latency mean/p99", [f"{r.latency_mean:.3f}/{r.latency_p99:.3f} s" for r in reports]),
        ("delivered by receipt", [_by_receipt(r) for r in reports]),
        ("time to receipt p50/p99", [_receipt_time(r) for r in reports]),
        ("frames per delivered", [f"{r.frames_per_delivered:.2f}" for r in reports]),
        ("duplicates", [str(r.duplicates) for r in reports]),
        (
            "links per peer mean/min/max",
            [f"{r.links_mean:.1f}/{r.links_min}/{r.links_max}" for r in reports],
        ),
        (
            "time to settle",
            [f"{r.settle_time:.0f} s" + ("" if r.settled else " (not quiet)") for r in reports],
        ),
        (
            "control frames",
            [f"{r.control_frames} ({r.control_frames / r.joined:.0f}/peer)" for r in reports],
        ),
        ("peers left/joined", [f"{r.departed}/{r.joined}" for r in reports]),
        ("memory (peak RSS)", [f"{r.max_rss_mib:.0f} MiB" for r in reports]),
        (
            "wall time",
            [
                f"{r.wall_time:.1f} s (join {r.wall_phases['join']:.0f}, "
                f"messages {r.wall_phases['messages']:.0f})"
                for r in reports
            ],
        ),
    ]
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(row[1][i]) for row in rows) + 2 for i in range(len(reports))]
    lines = [head]
    for label, values in rows:
        lines.append(
            label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        )
    for r in reports:
        name = r.params["strategy"]
        lines.append(f"message frames (messages) ({name}): {_fmt_kinds(r)}")
        if r.params["sending"] == "deliver":
            failed = _fmt_drops(r.receipt_failures, "; ")
            lines.append(f"failed deliveries ({name}): {failed}")
            if r.sender_left:
                lines.append(f"deliveries whose sender left first ({name}): {r.sender_left}")
        lines.append(f"drops ({name}): {_fmt_drops(r.drops)}")
    return "\n".join(lines)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def plot_reports(reports: list[SimReport], path: str) -> None:
    """Draw the hop distribution and delivery over time of each run into ``path``."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    fig, (hops_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        label = r.params["strategy"]
        xs = sorted(r.hop_histogram)
        total = sum(r.hop_histogram.values()) or 1
        hops_ax.bar(
            [x + i * width for x in xs],
            [r.hop_histogram[x] / total for x in xs],
            width=width,
            label=f"{label} (mean {r.hops_mean:.2f})",
        )
        seconds = [t for t, _sent, _got in r.timeline]
        ratio = [got / sent if sent else 1.0 for _t, sent, got in r.timeline]
        time_ax.plot(seconds, ratio, label=f"{label} ({r.delivery_ratio:.2%})")
    hops_ax.set_xlabel("hops")
    hops_ax.set_ylabel("share of delivered messages")
    hops_ax.set_title("hop distribution")
    hops_ax.legend()
    time_ax.set_xlabel("virtual seconds into the message phase")
    time_ax.set_ylabel("delivered / sent")
    time_ax.set_ylim(0, 1.05)
    time_ax.set_title("delivery over time")
    time_ax.legend()
    p = reports[0].params
    fig.suptitle(f"{p['nodes']} peers, churn {p['churn']:.0%}, loss {p['loss']:.1%}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
