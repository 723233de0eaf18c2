"""``peer-relay simulate``: run the simulator from the command line and print what it measured.

:func:`main` takes the arguments that follow ``simulate`` and returns an exit status; the
``peer-relay`` command hands it its arguments. With ``--seeds K`` (or ``--dask``) it runs a
sweep (:mod:`peer_relay.sim.sweep`) and prints the spread of each figure over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

from . import compiled, runner, sweep
from .runner import SENDING, STRATEGIES, Progress, SimParams, SimReport, run_simulation

if TYPE_CHECKING:
    from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

_T = TypeVar("_T")

PLOT_HINT = "--plot needs matplotlib: pip install 'peer-relay[plot]'"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage above them)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``peer-relay simulate``."""
    parser = _Parser(
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
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw hops, latency, links per peer (and delivery over time with churn)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (and no progress)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the core compiled by mypyc (built once; needs a C compiler)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="run seeds SEED..SEED+K-1 in parallel and print each figure's mean, standard "
        "deviation and range (default 1)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        metavar="N",
        help="most runs at once on this machine (default: one per CPU)",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run each seed as a task on the Dask scheduler at ADDRESS (tcp://host:port)",
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        metavar="MIB",
        help="most memory a run may take, in MiB (default: what is available, shared by the "
        "runs at once); a run projected beyond it stops during its join",
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
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1 (got {args.seeds})")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1 (got {args.jobs})")
    if args.plot and (args.seeds > 1 or args.dask):
        parser.error("--plot draws one run per strategy: drop --seeds and --dask, or --plot")
    if args.compiled and args.dask:
        parser.error("Dask workers run the core they import: drop --compiled with --dask")
    if args.memory_limit is not None and not 0 < args.memory_limit < math.inf:
        parser.error(f"--memory-limit must be a number of MiB above 0 (got {args.memory_limit})")
    limit = None if args.memory_limit is None else round(args.memory_limit * 2**20)
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
        memory_limit=limit,
    )
    try:
        runner.check_params(base)
    except ValueError as exc:
        parser.error(str(exc))
    if args.plot and not _have_matplotlib():
        print(f"peer-relay simulate: {PLOT_HINT}", file=sys.stderr)
        return 2
    if args.compiled and not compiled.is_compiled():
        return _rerun_compiled(list(sys.argv[1:] if argv is None else argv))
    client = None
    if args.dask:
        try:
            client = sweep.connect_dask(args.dask)
        except sweep.SweepError as exc:
            parser.error(str(exc))
    runs = [replace(base, strategy=name) for name in names]
    progress = None if args.json else _Progress(sys.stderr)
    try:
        if client is None and args.seeds == 1:
            reports, observed = _run_each(runs, progress, bool(args.plot))
        else:
            reports, observed = _run_sweep(runs, args.seeds, args.jobs, client, progress), []
    except runner.SimulationTooLarge as exc:
        if progress is not None:
            progress.clear()
        print(f"peer-relay simulate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    if args.json:
        core = "compiled" if compiled.is_compiled() else "python"
        out: dict[str, Any] = {"core": core, "runs": [r.as_dict() for r in reports]}
        if args.seeds > 1:
            out["summary"] = {
                name: {k: asdict(v) for k, v in sweep.summarize(group).items()}
                for name, group in _by_strategy(reports).items()
            }
        print(json.dumps(out, indent=2))
    elif args.seeds > 1:
        print(format_sweep(reports))
    else:
        print(format_reports(reports))
    if args.plot:
        plot_runs(observed, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _run_each(
    runs: list[SimParams], progress: _Progress | None, plot: bool
) -> tuple[list[SimReport], list[Observed]]:
    """Run ``runs`` one after the other (each in a process of its own when there are more
    than one): their reports, and what their plot draws if ``plot``."""
    reports: list[SimReport] = []
    observed: list[Observed] = []
    for params in runs:
        if progress is not None:
            progress.begin(params)
        if plot:  # what the plot draws beyond the report, too
            if len(runs) > 1:
                run = _isolated(run_observed, params, progress)
            else:
                run = run_observed(params, progress)
            observed.append(run)
            reports.append(run.report)
        elif len(runs) > 1:
            reports.append(run_isolated(params, progress))
        else:
            reports.append(run_simulation(params, progress))
        if progress is not None:
            progress.done()
    return reports, observed


def _run_sweep(
    runs: list[SimParams], seeds: int, jobs: int | None, client: Any, progress: _Progress | None
) -> list[SimReport]:
    """Run each of ``runs`` with ``seeds`` seeds, in a local pool or on Dask (``client``),
    saying on ``progress``'s stream as each ends: the reports, by strategy then seed."""
    every = [seeded for params in runs for seeded in sweep.seeded(params, seeds)]
    finished: Counter[str] = Counter()

    def done(report: SimReport) -> None:
        if progress is None:
            return
        name = report.params["strategy"]
        finished[name] += 1
        progress.out.write(
            f"[{name}] seed {report.params['seed']} done in {report.wall_time:.1f} s "
            f"({finished[name]}/{seeds})\n"
        )
        progress.out.flush()

    if client is not None:
        return sweep.run_dask(client, every, done)
    return sweep.run_local(every, jobs, done)


def _by_strategy(reports: list[SimReport]) -> dict[str, list[SimReport]]:
    """``reports`` grouped by strategy, in order."""
    groups: dict[str, list[SimReport]] = {}
    for r in reports:
        groups.setdefault(r.params["strategy"], []).append(r)
    return groups


PHASES = ("join", "settle", "messages")
"""The phases :func:`run_simulation` reports progress of, in order (the drain is not reported)."""


class _Progress:
    """Progress of the runs, on ``out`` (stderr).

    On a terminal, one status line rewritten in place. Anywhere else (a file, a pipe), a plain
    line as each phase starts and one when the run is done: ``[spread] joining 10,000 peers
    ...``, ``[spread] settling ...``, ``[spread] sending 1,000 messages ...``, ``[spread] done in
    12.3 s``. A phase the runner did not report (a settle too short to) gets its line all the
    same, when the next one starts.
    """

    def __init__(self, out: IO[str], live: bool | None = None) -> None:
        self.out = out
        self.live = _isatty(out) if live is None else live
        self.params = SimParams()
        self.phase = ""
        self.start = time.perf_counter()

    def begin(self, params: SimParams) -> None:
        """A run of ``params`` starts (with its join)."""
        self.params = params
        self.phase = ""
        self.start = time.perf_counter()
        self._enter("join")

    def __call__(self, phase: str, done: float, total: float, virtual: float) -> None:
        if phase != self.phase:
            self._enter(phase)
        if not self.live:
            return
        wall = time.perf_counter() - self.start
        what = f"settling {done:.0f}s" if phase == "settle" else f"{phase} {done:.0f}/{total:.0f}"
        line = f"[{self.params.strategy}] {what} | virtual {virtual:.0f}s | wall {wall:.0f}s"
        self.out.write(f"\r{line}\x1b[K")  # the rest of the old line erased
        self.out.flush()

    def _enter(self, phase: str) -> None:
        """Say that ``phase`` starts (and any phase before it that went unreported)."""
        known = self.phase in PHASES and phase in PHASES
        skipped = PHASES[PHASES.index(self.phase) + 1 : PHASES.index(phase)] if known else ()
        self.phase = phase
        if self.live:
            return
        for name in (*skipped, phase):
            self._say(f"{self._describe(name)} ...")

    def _describe(self, phase: str) -> str:
        p = self.params
        if phase == "join":
            return f"joining {p.nodes:,} peers"
        if phase == "settle":
            return "settling"
        if phase == "messages":
            replaced = round(p.churn * p.nodes)
            churn = f", replacing {replaced:,} peers" if replaced else ""
            return f"sending {p.messages:,} messages{churn}"
        return phase

    def _say(self, text: str) -> None:
        self.out.write(f"[{self.params.strategy}] {text}\n")
        self.out.flush()

    def done(self) -> None:
        """The run is over: clear the status line, or say how long it took."""
        if not self.live:
            self._say(f"done in {time.perf_counter() - self.start:.1f} s")
        self.clear()

    def clear(self) -> None:
        """Erase the status line (on a terminal), so that what follows starts a line."""
        if self.live:
            self.out.write("\r\x1b[K")
            self.out.flush()
        self.phase = ""


def _isatty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (ValueError, OSError):  # closed, or no such notion
        return False


@dataclass
class Observed:
    """A run's report, and what its plot draws beyond it (:func:`run_observed`)."""

    report: SimReport
    latencies: list[float]
    """Seconds from sending to the first arrival of each delivered message counted as sent
    (those the report's latency figures are of), ascending."""
    links: list[int]
    """Links of each peer alive at the end of the run (those of the report's links per peer),
    ascending."""


def run_observed(params: SimParams, progress: Progress | None = None) -> Observed:
    """Run ``params`` as :func:`run_simulation` does, and keep the latency of each delivered
    message and the links of each peer, which the report only sums up.

    The very same run (the same digest).
    """
    report, latencies, links = runner.observe_simulation(params, progress)
    return Observed(report, latencies, links)


def run_isolated(params: SimParams, progress: Any = None) -> SimReport:
    """Run one simulation in a child process (its memory measured alone), if fork exists."""
    return _isolated(run_simulation, params, progress)


def _isolated(
    run: Callable[[SimParams, Progress | None], _T], params: SimParams, progress: Any
) -> _T:
    """``run(params, progress)`` in a child process, if fork exists (here if not)."""
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        return run(params, progress)
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(run, params, progress, sender), daemon=True)
    child.start()
    sender.close()
    try:
        result: _T | Exception = receiver.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the simulation process died (exit code {child.exitcode})") from None
    child.join()
    if isinstance(result, Exception):
        raise result
    return result


def _child(run: Callable[..., object], params: SimParams, progress: Any, sender: Any) -> None:
    try:
        result = run(params, progress)
    except Exception as exc:  # raised in the parent (a run too large, say), not printed here
        result = exc
    sender.send(result)
    sender.close()


def _rerun_compiled(cli_args: list[str]) -> int:
    """Build the compiled core if needed, then run ``simulate cli_args`` again on it."""
    if not compiled.is_built():
        print(
            "peer-relay simulate: compiling the core with mypyc "
            "(once for these sources, a minute or more) ...",
            file=sys.stderr,
        )
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
    head = _head(first, reports[0].sent, f"seed {first['seed']}")
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
    lines = _table(head, rows)
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


def _head(params: dict[str, Any], messages: int, seeds: str) -> str:
    """The line above a table: what the runs were."""
    return (
        f"{params['nodes']} peers, {messages} messages, churn {params['churn']:.0%}, "
        f"loss {params['loss']:.1%}, {seeds}, sent by {params['sending']}"
    )


def _table(head: str, rows: list[tuple[str, list[str]]]) -> list[str]:
    """``head``, then ``rows`` (a label and a value per column) aligned in columns."""
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(row[1][i]) for row in rows) + 2 for i in range(len(rows[0][1]))]
    lines = [head]
    for label, values in rows:
        lines.append(
            label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        )
    return lines


def format_sweep(reports: list[SimReport]) -> str:
    """The table of a sweep: one column per strategy, each figure of its runs as mean
    ±standard deviation (least-most) over the seeds; then the drops and failed deliveries of
    all its runs together."""
    groups = _by_strategy(reports)
    first = reports[0].params
    seeds = sorted({r.params["seed"] for r in reports})
    head = _head(first, first["messages"], f"seeds {seeds[0]}-{seeds[-1]}")
    if first["swallowers"]:
        head += f", {first['swallowers']:.0%} of peers swallow what they relay"
    summaries = {name: sweep.summarize(group) for name, group in groups.items()}
    rows: list[tuple[str, list[str]]] = [
        ("strategy", list(groups)),
        *(
            (f.label, [summaries[name][f.key].text(f) for name in groups])
            for f in sweep.figures(reports)
        ),
        ("settled (quiet)", [f"{sum(r.settled for r in g)}/{len(g)}" for g in groups.values()]),
    ]
    lines = _table(head, rows)
    for name, group in groups.items():
        both = f"{name}, {len(group)} seeds"
        if first["sending"] == "deliver":
            failed: Counter[str] = Counter()
            for r in group:
                failed.update(r.receipt_failures)
            lines.append(f"failed deliveries ({both}): {_fmt_drops(dict(failed), '; ')}")
        drops: Counter[str] = Counter()
        for r in group:
            drops.update(r.drops)
        lines.append(f"drops ({both}): {_fmt_drops(dict(drops))}")
    return "\n".join(lines)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Colours of the series of a panel, in order (Okabe and Ito's, told apart by the colour-blind)."""
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--")


def series_style(i: int) -> dict[str, Any]:
    """How the ``i``-th series of a panel is drawn: a colour, dashes and a hollow marker of its
    own, each later series thinner and with smaller markers, on top of the earlier ones, so
    that a series lying on another still shows (one line inside the other)."""
    return {
        "color": COLOURS[i % len(COLOURS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
        "linewidth": max(1.0, 3.0 - 0.9 * i),
        "markersize": max(4.0, 9.0 - 2.0 * i),
        "markerfacecolor": "none",
        "markeredgewidth": 1.5,
        "zorder": 2 + i,
    }


def _markevery(i: int) -> tuple[float, float]:
    """Markers spaced along a line, each series' shifted so that they do not land together."""
    return (0.02 + 0.035 * i, 0.1)


def changes_over_time(report: SimReport) -> bool:
    """Whether something in the run changes while messages flow, so that delivery over time
    tells more than the delivery ratio: churn (the only such thing :class:`SimParams` has; a
    static run's curve is a flat line at its ratio)."""
    return bool(report.params.get("churn")) and bool(report.timeline)


def panels(runs: Sequence[Observed]) -> list[str]:
    """The titles of the panels the plot of ``runs`` has, in order."""
    titles = ["hop distribution", "latency CDF", "links per peer"]
    if any(changes_over_time(run.report) for run in runs):
        titles.append("delivery over time")
    return titles


def build_figure(runs: Sequence[Observed]) -> Figure:
    """The figure of ``runs`` (one series per run, in each of :func:`panels`), not saved."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    if not runs:
        raise ValueError("nothing to plot")
    titles = panels(runs)
    rows, cols = (1, 3) if len(titles) == 3 else (2, 2)
    fig = Figure(figsize=(5.2 * cols, 4.4 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    draw = {
        "hop distribution": _draw_hops,
        "latency CDF": _draw_latency,
        "links per peer": _draw_links,
        "delivery over time": _draw_delivery,
    }
    for ax, title in zip(axes, titles, strict=True):
        draw[title](ax, runs)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    p = runs[0].report.params
    fig.suptitle(
        f"{p['nodes']:,} peers, {runs[0].report.sent:,} messages, churn {p['churn']:.0%}, "
        f"loss {p['loss']:.1%}, sent by {p['sending']}, seed {p['seed']}"
    )
    return fig


def plot_runs(runs: Sequence[Observed], path: str) -> None:
    """Draw :func:`build_figure` of ``runs`` into ``path`` (its format from its extension)."""
    build_figure(runs).savefig(path)


def _nothing(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)


def _draw_hops(ax: Axes, runs: Sequence[Observed]) -> None:
    """Share of the delivered messages by hops: bars side by side, a colour and hatch each."""
    from matplotlib.ticker import MaxNLocator  # type: ignore[import-not-found, unused-ignore]

    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        r = run.report
        xs = sorted(r.hop_histogram)
        total = sum(r.hop_histogram.values()) or 1
        ax.bar(
            [x - 0.4 + (i + 0.5) * width for x in xs],
            [r.hop_histogram[x] / total for x in xs],
            width=width,
            color=COLOURS[i % len(COLOURS)],
            hatch=HATCHES[i % len(HATCHES)],
            edgecolor="white",
            linewidth=0.5,
            label=f"{r.params['strategy']} (mean {r.hops_mean:.2f}, max {r.hops_max})",
        )
    if not any(run.report.hop_histogram for run in runs):
        _nothing(ax, "nothing delivered")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hops")
    ax.set_ylabel("share of delivered messages")


def _draw_latency(ax: Axes, runs: Sequence[Observed]) -> None:
    """Share of the messages sent that arrived within each latency: a CDF that tops at the
    delivery ratio; on a logarithmic axis when latencies span more than a decade or so."""
    for i, run in enumerate(runs):
        r = run.report
        if not run.latencies or not r.sent:
            continue
        ms = [1000 * t for t in run.latencies]
        shares = [(k + 1) / r.sent for k in range(len(ms))]
        ax.plot(
            ms,
            shares,
            drawstyle="steps-post",
            markevery=_markevery(i),
            label=f"{r.params['strategy']} (mean {1000 * r.latency_mean:.0f} ms, "
            f"p99 {1000 * r.latency_p99:.0f} ms)",
            **series_style(i),
        )
    every = [t for run in runs for t in run.latencies]
    if not every:
        _nothing(ax, "nothing delivered")
    elif min(every) > 0 and max(every) / min(every) > 20:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("latency to first arrival (ms)")
    ax.set_ylabel("share of messages sent")


def _draw_links(ax: Axes, runs: Sequence[Observed]) -> None:
    """Share of the peers (alive at the end) with at most so many links: a CDF, whose steps
    show where the counts gather however far they spread."""
    for i, run in enumerate(runs):
        r = run.report
        if not run.links:
            continue
        counts = Counter(run.links)
        xs = sorted(counts)
        shares: list[float] = []
        below = 0
        for x in xs:
            below += counts[x]
            shares.append(below / len(run.links))
        ax.plot(
            [xs[0] - 1, *xs],
            [0.0, *shares],
            drawstyle="steps-post",
            markevery=_markevery(i) if len(xs) > 15 else None,
            label=f"{r.params['strategy']} (mean {r.links_mean:.1f}, {r.links_min}-{r.links_max})",
            **series_style(i),
        )
    if not any(run.links for run in runs):
        _nothing(ax, "no peers")
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("links")
    ax.set_ylabel("share of peers with at most so many")


def _draw_delivery(ax: Axes, runs: Sequence[Observed]) -> None:
    """Delivered over sent, by the second the messages were sent in."""
    lowest = 1.0
    for i, run in enumerate(runs):
        r = run.report
        seconds = [t for t, _sent, _got in r.timeline]
        ratio = [got / sent if sent else 1.0 for _t, sent, got in r.timeline]
        lowest = min([lowest, *ratio])
        ax.plot(
            seconds,
            ratio,
            markevery=_markevery(i) if len(seconds) > 15 else None,
            label=f"{r.params['strategy']} ({r.delivery_ratio:.2%})",
            **series_style(i),
        )
    ax.set_ylim(max(0.0, lowest - 0.05), 1.01 + 0.02 * (1.0 - lowest))
    replaced = round(runs[0].report.params["churn"] * runs[0].report.params["nodes"])
    ax.set_xlabel(f"virtual seconds into the message phase ({replaced:,} peers replaced)")
    ax.set_ylabel("delivered / sent")


if __name__ == "__main__":
    sys.exit(main())
