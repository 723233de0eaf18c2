"""One simulated experiment, start to finish: build a network, let it settle, send, measure.

:func:`run_simulation` takes :class:`SimParams` and returns a :class:`SimReport`. A run has four
phases on the virtual clock:

1. **join**: peers arrive one by one (a Poisson process whose rate grows with the network:
   ``join_growth`` per peer already there, between ``join_rate`` and ``join_max_rate``); each
   bootstraps to one random peer already there, exactly as a live peer dials a bootstrap URL;
2. **settle**: nothing happens but the peers' own maintenance, until link openings die down
   (or ``settle_max`` passes);
3. **messages**: ``messages`` user messages between random peers (a Poisson process of rate
   ``message_rate``), while ``churn`` of the peers are replaced (some crash, the rest leave);
4. **drain**: a few seconds for the last messages to land (and every delivery to end).

Messages go the way ``sending`` says (see :data:`SENDING`): by default with ``Core.deliver``,
end to end through sessions with receipts and retransmission over other first hops, measured both
by arrival (delivery, hops, latency) and by receipt at the sender (delivered by receipt, the
failures and why, the time to receipt). Every frame of a message counts in its frames per
delivered message, the session's key exchange, handshake and receipts included
(``message_frames`` splits them by kind).

Given the same parameters, the same run happens: identities, workload and network draw from
separate random streams derived from ``seed``, so two strategies with one seed see the same peers
join in the same order and the same messages sent between the same pairs (when nothing churns).

Before anything runs, :func:`check_params` refuses impossible parameters; during the join, a run
that would not fit in memory stops early (:class:`SimulationTooLarge`, see ``memory_limit``).
"""

from __future__ import annotations

import gc
import hashlib
import math
import random
import re
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import orjson

from ..core import Config
from ..events import Delivered, DeliveryResult
from ..status import rss_bytes
from ..wire import MAX_HOPS
from .network import SimNetwork, SimNode, lognormal_latency, uniform_delay

_Number = TypeVar("_Number", int, float)

Progress = Callable[[str, float, float, float], None]
"""``progress(phase, done, total, virtual_seconds)``, called now and then during a run."""

STRATEGIES = ("spread", "original")
"""Named population and forwarding policies (``--strategy``)."""

ORIGINAL_MAX_LINKS = 1000
"""0.0.2 keeps every link it is offered; ``original`` stands for that with this bound."""

SENDING = ("deliver", "sealed", "plain")
"""How the message phase sends (``SimParams.sending``): ``deliver``, ``Core.deliver`` (sessions,
receipts, retransmission); ``sealed``, ``Core.send`` through sessions, fire and forget (what a
live node's ``send()`` does by default); ``plain``, ``Core.send`` with ``sessions`` off: signed
messages without sessions, as the simulator sent before sessions (its figures, apart from the
report's new fields)."""


def strategy_config(name: str, links: int | None = None, **overrides: Any) -> Config:
    """The :class:`Config` a strategy runs with.

    ``spread`` is our policy with its defaults; ``original`` is 0.0.2's: dial the 15 ids nearest
    our own, forward every message to the 2 closest links, keep every link.
    """
    if name == "spread":
        base: dict[str, Any] = {"strategy": "spread"}
        if links is not None:
            base["max_links"] = links
    elif name == "original":
        base = {
            "strategy": "original",
            "redundancy": 2,
            "share_links": False,
            "max_detours": MAX_HOPS,
            "max_links": links or ORIGINAL_MAX_LINKS,
        }
    else:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    base.update(overrides)
    return Config(**base)


@dataclass(frozen=True)
class SimParams:
    """Everything that defines a run. The same parameters give the same run."""

    nodes: int = 1000
    messages: int = 1000
    strategy: str = "spread"
    seed: int = 1
    links: int | None = None
    """Most links per peer (``Config.max_links``); None: the strategy's default."""
    churn: float = 0.0
    """Share of the peers replaced during the message phase (0.1: one in ten leaves, and as
    many new peers join)."""
    crash_share: float = 0.5
    """Share of the leaving peers that crash without a goodbye (the rest close their links)."""
    loss: float = 0.0
    """Probability that an envelope frame is lost on its link (link handshakes are spared)."""
    join_growth: float = 0.05
    """Peers arriving per virtual second during the join phase, per peer already there: the
    network grows by this share a second (doubles every ``ln 2 / join_growth`` seconds), so
    that every peer sees the same pace of newcomers whatever the size."""
    join_rate: float = 1.0
    """Least arrivals per second (while the network is small)."""
    join_max_rate: float = 200.0
    """Most arrivals per second."""
    message_rate: float = 100.0
    """User messages sent per virtual second."""
    latency_median: float = 0.020
    latency_sigma: float = 0.5
    keepalive: tuple[float, float] = (20.0, 40.0)
    """Range of seconds after which a silent (crashed) link is noticed and closed."""
    settle_window: float = 5.0
    settle_quiet: float = 0.005
    """Settled once fewer links than this share of the peers opened in one window."""
    settle_min: float = 0.0
    settle_max: float = 120.0
    """Messages start once the network is quiet, or after this many seconds (the time to
    settle is still measured, until the end of the run)."""
    drain: float = 15.0
    target_min_age: float = 10.0
    """Messages go between peers that joined at least this many seconds before."""
    real_crypto: bool = False
    """Sign and verify with Ed25519 and seal with Noise (slow) instead of a keyed hash and
    the stand-in suite."""
    sending: str = "deliver"
    """How messages are sent: one of :data:`SENDING`."""
    deliver_timeout: float = 10.0
    """Seconds each ``deliver`` has for its receipt (the drain lasts at least this long)."""
    swallowers: float = 0.0
    """Share of the peers (drawn from a random stream of their own) that swallow the messages
    they relay while they answer pings (see ``SimNetwork.swallow``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`Config` settings, on top of the strategy's."""
    timeline: bool = True
    """Keep per-second delivery and the hop histogram (for plots)."""
    memory_limit: int | None = None
    """Bytes this run's process may hold (resident), or None: what it holds plus the memory the
    machine has available (``MemAvailable``), within its cgroup's ``memory.max`` if set. The
    join measures what each peer costs and stops a run projected beyond it
    (:class:`SimulationTooLarge`); a sweep gives each of its runs at once a share."""


@dataclass
class SimReport:
    """What a run measured. :meth:`as_dict` gives the JSON form."""

    params: dict[str, Any]
    nodes_final: int
    sent: int
    delivered: int
    undeliverable: int
    """Messages whose target left before they could arrive (not counted as sent)."""
    delivery_ratio: float
    hops_mean: float
    hops_p50: int
    hops_p90: int
    hops_p99: int
    hops_max: int
    latency_mean: float
    latency_p99: float
    receipted: int
    """Messages whose sender got their receipt (``deliver`` only)."""
    receipt_ratio: float
    """``receipted`` over the messages counted as sent whose sender stayed to hear."""
    receipt_failures: dict[str, int]
    """Deliveries that failed, by reason (peer ids and counts written as ``<peer>``, ``N``)."""
    sender_left: int
    """Counted messages whose sender left before its delivery ended (no outcome to count)."""
    receipt_p50: float
    receipt_p99: float
    """Seconds from sending to the receipt, over the receipted messages."""
    user_frames: int
    """Frames of messages (user, session and session-reset messages) in the message phase."""
    message_frames: dict[str, int]
    """``user_frames`` by kind: ``user``, ``key-ask``, ``key``, ``open``, ``accept``,
    ``sealed`` (session data and receipts), ``session-reset``."""
    message_origins: dict[str, int]
    """Of ``message_frames``, those sent by their origin: messages of each kind sent."""
    frames_per_delivered: float
    duplicates: int
    """Copies of user messages dropped as duplicates (by relays and destinations)."""
    links_mean: float
    links_min: int
    links_max: int
    links_p50: int
    settle_time: float
    settled: bool
    virtual_time: float
    control_frames: int
    """Frames that were not user messages, over the whole run (discovery, handshakes)."""
    drops: dict[str, int]
    """Frames dropped by the cores during the message phase, by reason."""
    frames_lost: int
    frames_dead: int
    frames_swallowed: int
    """Frames dropped by peers that swallow what they relay (``swallowers``)."""
    swallowers: int
    joined: int
    departed: int
    max_rss_mib: float
    wall_time: float
    wall_phases: dict[str, float]
    hop_histogram: dict[int, int]
    timeline: list[tuple[float, int, int]]
    """Per virtual second of the message phase: (seconds since its start, sent, delivered)."""
    bounds: dict[str, tuple[int, int]]
    """Largest size seen of each bounded structure in a core, and its limit."""
    digest: str
    """Hash of the run's outcome (not of timings): equal for equal runs."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        out = asdict(self)
        out["hop_histogram"] = {str(k): v for k, v in self.hop_histogram.items()}
        return out


class SimulationTooLarge(ValueError):
    """A run would need more memory than it may use: stopped during its join, before it swaps.
    Its message (one line) says the projected size, the measured cost per peer and what to do."""


MEMORY_CHECK_FROM = 1024
"""Peers joined (or half of them, if fewer) when the join first projects the run's memory."""
MEMORY_CHECK_EVERY = 512
"""Peers joined between later projections."""


def check_params(p: SimParams) -> None:
    """Refuse parameters no run can have: raise :class:`ValueError` with a one-line message
    that names the parameter, the value and what it must be."""
    problems = [
        (p.nodes >= 2, f"nodes must be at least 2 (got {p.nodes})"),
        (p.messages >= 0, f"messages must be 0 or more (got {p.messages})"),
        (
            p.strategy in STRATEGIES,
            f"unknown strategy {p.strategy!r}; choose from {', '.join(STRATEGIES)}",
        ),
        (
            p.sending in SENDING,
            f"unknown sending {p.sending!r}; choose from {', '.join(SENDING)}",
        ),
        (p.links is None or p.links >= 1, f"links must be at least 1 (got {p.links})"),
        (
            p.links is None or p.links < p.nodes,
            f"links ({p.links}) must be below nodes ({p.nodes}): a peer can link to at most "
            f"the {p.nodes - 1} others",
        ),
        (0 <= p.churn <= 1, f"churn must be in [0, 1] (got {p.churn})"),
        (0 <= p.crash_share <= 1, f"crash_share must be in [0, 1] (got {p.crash_share})"),
        (0 <= p.loss < 1, f"loss must be in [0, 1) (got {p.loss})"),
        (0 <= p.swallowers <= 1, f"swallowers must be in [0, 1] (got {p.swallowers})"),
        (
            0 < p.message_rate < math.inf,
            f"message_rate (--rate) must be a finite number above 0 (got {p.message_rate})",
        ),
        (
            0 < p.join_growth < math.inf,
            f"join_growth must be a finite number above 0 (got {p.join_growth})",
        ),
        (
            0 < p.join_rate <= p.join_max_rate,
            f"join_rate ({p.join_rate}) must be above 0 and at most join_max_rate "
            f"({p.join_max_rate})",
        ),
        (
            0 < p.deliver_timeout < math.inf,
            f"deliver_timeout must be a finite number above 0 (got {p.deliver_timeout})",
        ),
        (
            0 < p.settle_window < math.inf,
            f"settle_window must be a finite number above 0 (got {p.settle_window})",
        ),
        (
            p.memory_limit is None or p.memory_limit > 0,
            f"memory_limit must be above 0 bytes (got {p.memory_limit})",
        ),
    ]
    for fine, problem in problems:
        if not fine:  # comparisons with NaN are false: NaN is refused too
            raise ValueError(problem)


def format_bytes(size: float) -> str:
    """``size`` bytes the way people read them: ``512 B``, ``51.2 KiB``, ``3.4 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def memory_available() -> int | None:
    """Bytes this process may hold: what it holds now plus what the machine has available
    (``MemAvailable``), within the room its cgroups' ``memory.max`` leave; None where
    ``/proc`` does not say."""
    rss = rss_bytes()
    free = _meminfo("MemAvailable")
    if rss is None or free is None:
        return None
    room = _cgroup_room()
    return rss + (free if room is None else min(free, room))


def _meminfo(field: str) -> int | None:
    """A field of ``/proc/meminfo``, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """The least room left under a ``memory.max`` of this process's cgroup and those above it
    (cgroup v2), or None if none is set."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next(line[3:].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    rooms: list[int] = []
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts), -1, -1):
        where = "/".join(["/sys/fs/cgroup", *parts[:depth]])
        try:
            with open(f"{where}/memory.max") as f:
                limit = f.read().strip()
            with open(f"{where}/memory.current") as f:
                current = int(f.read())
        except (OSError, ValueError):
            continue
        if limit != "max":
            rooms.append(max(0, int(limit) - current))
    return min(rooms) if rooms else None


def memory_verdict(p: SimParams, before: int, now: int, peers: int, joined: int) -> str | None:
    """Why a run of ``p`` would not fit in memory, if it would not; None if it fits (or
    nothing says how much there is).

    This process held ``before`` bytes ``joined`` peers ago and holds ``now`` with ``peers``
    peers: the growth per peer since, times the peers still to come (the churn's replacements
    included), is projected against ``p.memory_limit`` or :func:`memory_available`. Later peers
    cost a little more (their tables fill), and so do the messages: a low estimate.
    """
    limit = p.memory_limit if p.memory_limit is not None else memory_available()
    if limit is None or joined < 1:
        return None
    total = p.nodes + round(p.churn * p.nodes)
    per_peer = max(0, now - before) / joined
    projected = now + per_peer * max(0, total - peers)
    if projected <= limit:
        return None
    room = "this run may use (memory_limit)" if p.memory_limit is not None else "available"
    which = f"first {peers:,}" if joined == peers else f"last {joined:,} of {peers:,}"
    return (
        f"a run of {total:,} peers would need about {format_bytes(projected)} "
        f"({format_bytes(per_peer)} a peer, measured as the {which} peers joined), more than "
        f"the {format_bytes(limit)} {room}; run fewer peers, or free memory"
    )


class _QuietWatch:
    """Notes when, after the last join, fewer than ``settle_quiet`` x peers links open per window.

    It ticks on the virtual clock, from the end of the join phase to the end of the run, so the
    time to settle is measured even when messages start before the network is quiet.
    """

    def __init__(self, net: SimNetwork, alive: _Alive, p: SimParams) -> None:
        self.net = net
        self.alive = alive
        self.window = p.settle_window
        self.quiet = max(1.0, p.settle_quiet * len(alive))
        self.min_at = net.now + p.settle_min
        self.quiet_at: float | None = None
        self.opened = self._opened()
        self.running = True
        net.at(self.window, self._tick)

    def _opened(self) -> int:
        return sum(n.core.stats.links_opened for n in self.alive.items)

    def _tick(self) -> None:
        if not self.running or self.quiet_at is not None:
            return
        opened = self._opened()
        # Each link opens at both ends: count links, not ends.
        if (opened - self.opened) / 2 < self.quiet and self.net.now >= self.min_at:
            self.quiet_at = self.net.now
            return
        self.opened = opened
        self.net.at(self.window, self._tick)

    def stop(self) -> None:
        self.running = False


class _Message:
    __slots__ = ("copies", "ended", "failure", "hops", "latency", "sent_at", "source", "target")

    def __init__(self, sent_at: float, source: SimNode, target: SimNode) -> None:
        self.sent_at = sent_at
        self.source = source
        self.target = target
        self.hops = -1
        self.latency = 0.0
        self.copies = 0
        self.ended = -1.0
        """When its delivery ended (receipt or failure); -1 until then."""
        self.failure: str | None = None


class _Alive:
    """The live peers, with O(1) random choice and removal."""

    def __init__(self) -> None:
        self.items: list[SimNode] = []
        self.where: dict[int, int] = {}

    def add(self, node: SimNode) -> None:
        self.where[node.index] = len(self.items)
        self.items.append(node)

    def remove(self, node: SimNode) -> None:
        i = self.where.pop(node.index)
        last = self.items.pop()
        if last is not node:
            self.items[i] = last
            self.where[last.index] = i

    def choice(self, rng: random.Random) -> SimNode:
        return self.items[rng.randrange(len(self.items))]

    def __len__(self) -> int:
        return len(self.items)


def percentile(sorted_values: list[_Number], p: float) -> _Number:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


_PEER = re.compile(r"\b[0-9a-f]{8}\b")
_NUMBER = re.compile(r"(?<![.\d])\d+(?![.\d])")
"""A count, not part of a version number."""


def failure_kind(reason: str) -> str:
    """A delivery failure's reason without its peer ids and counts, to add up alike ones."""
    return _NUMBER.sub("N", _PEER.sub("<peer>", reason))


def max_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bound_sizes(node: SimNode) -> dict[str, tuple[int, int]]:
    """Sizes of a core's bounded structures next to their limits."""
    return node.core.bounds()


def run_simulation(params: SimParams, progress: Progress | None = None) -> SimReport:
    """Run the experiment ``params`` describes and measure it. See the module docstring.

    The cyclic garbage collector is paused meanwhile: the cores make next to no cycles, and
    with millions of live objects its passes cost a sixth of the time (a fifth at 10,000 peers).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(params, progress)
    finally:
        if enabled:
            gc.enable()


def observe_simulation(
    params: SimParams, progress: Progress | None = None
) -> tuple[SimReport, list[float], list[int]]:
    """Run ``params`` as :func:`run_simulation` does (the same run, the same digest), and also
    return what the report only sums up, for plots: the latency of each delivered message and
    the links of each peer alive at the end, both ascending."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        run = _phases(params, progress)
        report = run.report()
        latencies = sorted(m.latency for m in run._counted() if m.hops >= 0)
        links = sorted(len(n.core.peers) for n in run.alive.items)
        return report, latencies, links
    finally:
        if enabled:
            gc.enable()


def _run(params: SimParams, progress: Progress | None) -> SimReport:
    """Drive one run through its phases (see the module docstring)."""
    return _phases(params, progress).report()


def _phases(params: SimParams, progress: Progress | None) -> _Run:
    """Check ``params`` and drive a run through its phases; the run, to measure."""
    check_params(params)
    run = _Run(params, progress)
    run.join()
    run.settle()
    run.send_messages()
    run.drain()
    return run


class _Run:
    """The state one run shares between its phases, and one method per phase."""

    def __init__(self, params: SimParams, progress: Progress | None) -> None:
        p = self.p = params
        self.progress = progress
        self.wall0 = time.perf_counter()
        plain = {"sessions": False} if p.sending == "plain" else {}
        self.config = strategy_config(p.strategy, p.links, **{**plain, **p.config})
        net = self.net = SimNetwork(
            seed=p.seed,
            latency=lognormal_latency(p.latency_median, p.latency_sigma),
            loss=p.loss,
            real_crypto=p.real_crypto,
            keep_inbox=False,
            keepalive=uniform_delay(*p.keepalive),
        )
        self.load = random.Random(f"{p.seed}/workload")
        self.bad = random.Random(f"{p.seed}/swallowers")
        self.swallowers = 0
        self.alive = _Alive()
        self.messages: list[_Message] = []
        self.tokens: dict[tuple[int, int], _Message] = {}
        """Deliveries waiting for their outcome, by (sender's index, token)."""
        net.on_deliver = self._on_deliver
        net.on_event = self._on_event
        self.last_report = 0.0
        self.start = net.now
        self.wall_mark = self.wall0
        self.wall_phases: dict[str, float] = {}
        self.joined_at = 0.0
        self.watch: _QuietWatch | None = None
        self.drops_before: Counter[str] = Counter()
        self.phase_start = 0.0
        self.sent_bins: Counter[int] = Counter()
        self.departed = 0
        self.settled = False
        self.settle_time = 0.0
        self.memory_mark: tuple[int | None, int] = (None, 0)
        """This process's resident bytes when the join last measured it, and the peers then."""

    def _on_deliver(self, node: SimNode, event: Delivered) -> None:
        """Note the first arrival (hops, latency) and every copy of a user message."""
        data = event.data
        if type(data) is not dict:
            return
        number = data.get("m")
        messages = self.messages
        if type(number) is not int or not 0 <= number < len(messages):
            return
        msg = messages[number]
        if msg.target is not node:
            return
        msg.copies += 1
        if msg.hops < 0:
            msg.hops = event.hops
            msg.latency = self.net.now - msg.sent_at

    def _on_event(self, node: SimNode, event: object) -> None:
        """Note how each delivery ended, at its sender."""
        if type(event) is not DeliveryResult:
            return
        msg = self.tokens.pop((node.index, event.token), None)
        if msg is not None:
            msg.ended = self.net.now
            if not event.ok:
                msg.failure = failure_kind(event.reason)

    def _report(self, phase: str, done: float, total: float) -> None:
        """Tell ``progress``, at most every 0.2 s of wall time (and at the end of a phase)."""
        if self.progress is None:
            return
        t = time.perf_counter()
        if t - self.last_report >= 0.2 or done >= total:
            self.last_report = t
            self.progress(phase, done, total, self.net.now - self.start)

    def _add(self, bootstrap: SimNode | None) -> SimNode:
        """A new peer, bootstrapping to ``bootstrap``."""
        node = self.net.add_node(self.config, bootstrap=[bootstrap] if bootstrap else None)
        self.alive.add(node)
        if self.p.swallowers and self.bad.random() < self.p.swallowers:
            self.net.swallow(node)
            self.swallowers += 1
        return node

    def _mark(self, phase: str) -> None:
        """Record the wall time ``phase`` took (since the previous mark)."""
        now = time.perf_counter()
        self.wall_phases[phase] = now - self.wall_mark
        self.wall_mark = now

    def join(self) -> None:
        """Phase 1: peers arrive one by one, each bootstrapping to a random peer already there."""
        p, net, load, alive = self.p, self.net, self.load, self.alive
        self.memory_mark = (rss_bytes(), 0)
        first = min(MEMORY_CHECK_FROM, p.nodes // 2)
        self._add(None)
        for i in range(1, p.nodes):
            rate = min(p.join_max_rate, max(p.join_rate, p.join_growth * len(alive)))
            net.run(load.expovariate(rate))
            self._add(alive.choice(load))
            if i % 64 == 0:
                self._report("join", i + 1, p.nodes)
            if i >= first and (i - first) % MEMORY_CHECK_EVERY == 0:
                self._check_memory()
        self._report("join", p.nodes, p.nodes)
        self._mark("join")

    def _check_memory(self) -> None:
        """Stop the run if it would not fit in memory (see :func:`memory_verdict`)."""
        before, then = self.memory_mark
        now, peers = rss_bytes(), len(self.net.nodes)
        if before is None or now is None:
            return
        verdict = memory_verdict(self.p, before, now, peers, peers - then)
        if verdict is not None:
            raise SimulationTooLarge(verdict)
        self.memory_mark = (now, peers)

    def settle(self) -> None:
        """Phase 2: only maintenance, until quiet or ``settle_max`` (the watch keeps ticking)."""
        p, net = self.p, self.net
        joined_at = self.joined_at = net.now
        watch = self.watch = _QuietWatch(net, self.alive, p)
        while net.now - joined_at < p.settle_max and watch.quiet_at is None:
            net.run(p.settle_window)
            self._report("settle", net.now - joined_at, p.settle_max)
        self._mark("settle")

    def _schedule(self) -> list[tuple[float, int]]:
        """When each message (kind 0) is sent and each peer is replaced (kind 1), in order."""
        p, load = self.p, self.load
        duration = p.messages / p.message_rate
        schedule: list[tuple[float, int]] = []
        t = 0.0
        for _ in range(p.messages):
            t += load.expovariate(p.message_rate)
            schedule.append((t, 0))
        replaced = round(p.churn * p.nodes)
        for _ in range(replaced):
            schedule.append((load.random() * duration, 1))
        schedule.sort()
        return schedule

    def send_messages(self) -> None:
        """Phase 3: send the user messages while ``churn`` of the peers are replaced."""
        net = self.net
        for n in net.nodes:
            self.drops_before.update(n.core.stats.dropped)
        schedule = self._schedule()
        phase_start = self.phase_start = net.now
        net.count_user = True
        for k, (at, kind) in enumerate(schedule):
            net.run(max(0.0, phase_start + at - net.now))
            if kind == 1:
                self._replace()
            elif not self._send():
                continue
            if k % 64 == 0:
                self._report("messages", k, len(schedule))
        self._report("messages", len(schedule), len(schedule))

    def _replace(self) -> None:
        """A random peer crashes or leaves, and a new one joins."""
        load, alive = self.load, self.alive
        victim = alive.choice(load)
        alive.remove(victim)
        if load.random() < self.p.crash_share:
            self.net.crash(victim)
        else:
            self.net.leave(victim)
        self.departed += 1
        self._add(alive.choice(load))

    def _send(self) -> bool:
        """Send one message between two random settled peers; False if none were found."""
        p, net, load, alive = self.p, self.net, self.load, self.alive
        source = alive.choice(load)
        target = alive.choice(load)
        tries = 0
        while (
            target is source
            or net.now - target.joined_at < p.target_min_age
            or net.now - source.joined_at < p.target_min_age
        ) and tries < 100:
            source, target = alive.choice(load), alive.choice(load)
            tries += 1
        if target is source:
            return False
        msg = _Message(net.now, source, target)
        data = {"m": len(self.messages)}
        self.messages.append(msg)
        self.sent_bins[int(net.now - self.phase_start)] += 1
        if p.sending == "deliver":
            token = source.core.deliver(target.id, data, net.now, p.deliver_timeout)
            self.tokens[(source.index, token)] = msg
            net.pump(source)
        else:
            net.send(source, target.id, data)
        return True

    def drain(self) -> None:
        """Phase 4: let the last messages land, then stop the quiet watch."""
        p, net, watch = self.p, self.net, self.watch
        assert watch is not None
        net.run(max(p.drain, p.deliver_timeout + 1.0) if p.sending == "deliver" else p.drain)
        net.count_user = False
        watch.stop()
        self.settled = watch.quiet_at is not None
        self.settle_time = (net.now if watch.quiet_at is None else watch.quiet_at) - self.joined_at
        self._mark("messages")

    def _counted(self) -> list[_Message]:
        """The messages that count as sent: delivered, or whose target stayed long enough."""
        drain = self.p.drain
        return [
            m
            for m in self.messages
            if m.hops >= 0 or m.target.left_at is None or m.target.left_at > m.sent_at + drain
        ]

    def _timeline(self, counted: list[_Message]) -> list[tuple[float, int, int]]:
        """Per second of the message phase: (second, sent, delivered); empty without timeline."""
        phase_start, sent_bins = self.phase_start, self.sent_bins
        delivered_bins: Counter[int] = Counter(
            int(m.sent_at - phase_start) for m in counted if m.hops >= 0
        )
        return (
            [(float(s), sent_bins[s], delivered_bins[s]) for s in sorted(sent_bins)]
            if self.p.timeline
            else []
        )

    def _receipts(self, counted: list[_Message]) -> tuple[list[float], Counter[str], int]:
        """Over the counted messages (``deliver`` only): the times to receipt, ascending; the
        failures by reason; how many senders left before their delivery ended."""
        times: list[float] = []
        failures: Counter[str] = Counter()
        left = 0
        if self.p.sending != "deliver":
            return times, failures, left
        for m in counted:
            if m.ended < 0:
                if m.source.left_at is not None:
                    left += 1
                else:  # a delivery that never ended: the core owes a DeliveryResult
                    failures["no outcome by the end of the run"] += 1
            elif m.failure is None:
                times.append(m.ended - m.sent_at)
            else:
                failures[m.failure] += 1
        times.sort()
        return times, failures, left

    def _drops(self) -> Counter[str]:
        """Frames the cores dropped during the message phase (and drain), by reason."""
        drops: Counter[str] = Counter()
        for n in self.net.nodes:
            drops.update(n.core.stats.dropped)
        drops.subtract(self.drops_before)
        return +drops

    def _bounds(self) -> dict[str, tuple[int, int]]:
        """The largest size seen of each bounded structure over all cores, with its limit."""
        bounds: dict[str, tuple[int, int]] = {}
        for n in self.net.nodes:
            for name, (size, limit) in bound_sizes(n).items():
                old = bounds.get(name)
                if old is None or size > old[0]:
                    bounds[name] = (size, limit)
        return bounds

    def report(self) -> SimReport:
        """Measure the run: the :class:`SimReport`, with its digest."""
        p, net = self.p, self.net
        counted = self._counted()
        undeliverable = len(self.messages) - len(counted)
        hops = sorted(m.hops for m in counted if m.hops >= 0)
        latencies = sorted(m.latency for m in counted if m.hops >= 0)
        delivered = len(hops)
        hist: Counter[int] = Counter()
        if p.timeline:
            hist.update(hops)
        timeline = self._timeline(counted)
        link_counts = sorted(len(n.core.peers) for n in self.alive.items)
        drops = self._drops()
        bounds = self._bounds()
        user_frames = net.user_frames
        receipt_times, failures, sender_left = self._receipts(counted)
        heard = len(receipt_times) + sum(failures.values())
        report = SimReport(
            params=asdict(p),
            nodes_final=len(self.alive),
            sent=len(counted),
            delivered=delivered,
            undeliverable=undeliverable,
            delivery_ratio=delivered / len(counted) if counted else 0.0,
            hops_mean=sum(hops) / delivered if delivered else 0.0,
            hops_p50=percentile(hops, 50),
            hops_p90=percentile(hops, 90),
            hops_p99=percentile(hops, 99),
            hops_max=hops[-1] if hops else 0,
            latency_mean=sum(latencies) / delivered if delivered else 0.0,
            latency_p99=latencies[max(0, math.ceil(0.99 * delivered) - 1)] if delivered else 0.0,
            receipted=len(receipt_times),
            receipt_ratio=len(receipt_times) / heard if heard else 0.0,
            receipt_failures=dict(sorted(failures.items())),
            sender_left=sender_left,
            receipt_p50=percentile(receipt_times, 50),
            receipt_p99=percentile(receipt_times, 99),
            user_frames=user_frames,
            message_frames=dict(sorted(net.message_frames.items())),
            message_origins=dict(sorted(net.message_origins.items())),
            frames_per_delivered=user_frames / delivered if delivered else 0.0,
            duplicates=drops.get("duplicate", 0),
            links_mean=sum(link_counts) / len(link_counts) if link_counts else 0.0,
            links_min=link_counts[0] if link_counts else 0,
            links_max=link_counts[-1] if link_counts else 0,
            links_p50=percentile(link_counts, 50),
            settle_time=self.settle_time,
            settled=self.settled,
            virtual_time=net.now - self.start,
            control_frames=net.frames_sent - user_frames,
            drops=dict(sorted(drops.items())),
            frames_lost=net.frames_lost,
            frames_dead=net.frames_dead,
            frames_swallowed=net.frames_swallowed,
            swallowers=self.swallowers,
            joined=len(net.nodes),
            departed=self.departed,
            max_rss_mib=0.0,
            wall_time=0.0,
            wall_phases=self.wall_phases,
            hop_histogram=dict(sorted(hist.items())),
            timeline=timeline,
            bounds=bounds,
            digest="",
        )
        report.digest = _digest(report, net)
        report.max_rss_mib = max_rss_mib()
        report.wall_time = time.perf_counter() - self.wall0
        return report


def _digest(report: SimReport, net: SimNetwork) -> str:
    """A hash of everything a run decided: metrics, and each peer's counters and links."""
    h = hashlib.sha256()
    skip = {"max_rss_mib", "wall_time", "wall_phases", "digest", "params"}
    h.update(orjson.dumps({k: v for k, v in report.as_dict().items() if k not in skip}))
    for node in net.nodes:
        core = node.core
        h.update(node.id)
        h.update(orjson.dumps(core.stats.as_dict(), option=orjson.OPT_SORT_KEYS))
        h.update(b"".join(sorted(core.peers)))
    return h.hexdigest()


def with_strategy(params: SimParams, strategy: str) -> SimParams:
    """``params`` for another strategy."""
    return replace(params, strategy=strategy)
