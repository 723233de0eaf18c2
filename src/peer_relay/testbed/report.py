"""What a testbed scenario measured: delivery by phase, hops, latency, direct links between
busy NATed pairs, transports, memory per process and the forwarders' counters."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("steady", "busy", "churn", "partition", "heal")
"""The phases of a scenario, in the order they run; a phase that did not run has no entry."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class PhaseCount:
    """Messages of one phase: sent, arrived at their destination, and (``deliver`` mode) those
    whose ``deliver()`` returned on the receipt."""

    sent: int = 0
    delivered: int = 0
    confirmed: int | None = None

    @property
    def share(self) -> float | None:
        """Delivered / sent, None when nothing was sent."""
        return self.delivered / self.sent if self.sent else None


@dataclass
class PeerSummary:
    """One peer as the scenario left it."""

    name: str
    host: str
    nat: str | None
    id: str
    links: int
    transports: dict[str, int]
    rss_kb: int
    restarts: int = 0
    links_to: dict[str, str] = field(default_factory=dict)
    """Open links at the end: the other peer's name (its id where unknown) to the transport."""


@dataclass
class Report:
    """The figures of one scenario run (see :func:`peer_relay.testbed.scenario.run_scenario`).

    Latencies are one way, in seconds, from the sender's wall clock to the receiver's (one
    machine, one clock). ``direct_share`` is the share of busy NATed pairs whose two peers end
    with a ``webrtc`` link between them (None without busy pairs).
    """

    scenario: dict[str, Any]
    mode: str
    phases: dict[str, PhaseCount]
    hops: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    busy_pairs: int = 0
    direct_pairs: int = 0
    busy_transports: dict[str, int] = field(default_factory=dict)
    transports: dict[str, int] = field(default_factory=dict)
    peers: list[PeerSummary] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0
    """Seconds from the first agent started to the report (building the network apart)."""
    startup: float = 0.0
    """Seconds to start every agent."""
    build: float = 0.0
    """Seconds to build the network (namespaces, forwarder, coturn)."""
    notes: list[str] = field(default_factory=list)
    ice: dict[str, int] = field(default_factory=dict)
    """ICE pairs in use by NATed peers' WebRTC links, by ``local/remote`` candidate type
    (``relay`` on either side: through TURN); seen from both ends, so a link counts twice."""
    lost: list[dict[str, Any]] = field(default_factory=list)
    """Up to 20 messages per phase that did not arrive: phase, sender, destination, error, and
    whether the destination had been restarted."""
    testbed_id: str | None = None
    """The prefix of the namespaces the run built (None in local mode); all removed."""
    workdir: str = ""
    """The run's directory of sockets, keys and logs; removed at the end."""

    # ------------------------------------------------------------------ figures

    @property
    def sent(self) -> int:
        """Messages sent in all phases."""
        return sum(p.sent for p in self.phases.values())

    @property
    def delivered(self) -> int:
        """Messages that arrived at their destination, in all phases."""
        return sum(p.delivered for p in self.phases.values())

    @property
    def confirmed(self) -> int | None:
        """Deliveries confirmed by a receipt (``deliver`` mode), else None."""
        counts = [p.confirmed for p in self.phases.values() if p.confirmed is not None]
        return sum(counts) if counts else None

    @property
    def delivery(self) -> float | None:
        """Delivered / sent over all phases."""
        return self.delivered / self.sent if self.sent else None

    @property
    def direct_share(self) -> float | None:
        """Busy NATed pairs on a direct WebRTC link at the end / busy pairs."""
        return self.direct_pairs / self.busy_pairs if self.busy_pairs else None

    @property
    def turn_share(self) -> float | None:
        """Of the NATed peers' ICE pairs not between two host candidates (peers on one LAN),
        the share that goes through TURN (a ``relay`` candidate on either side)."""
        wide = {k: v for k, v in self.ice.items() if k != "host/host"}
        total = sum(wide.values())
        relayed = sum(v for k, v in wide.items() if "relay" in k.split("/"))
        return relayed / total if total else None

    def hops_stats(self) -> dict[str, float | None]:
        """Hops of the delivered messages: mean, p99 and max."""
        if not self.hops:
            return {"mean": None, "p99": None, "max": None}
        return {
            "mean": sum(self.hops) / len(self.hops),
            "p99": percentile(self.hops, 99),
            "max": max(self.hops),
        }

    def latency_stats(self) -> dict[str, float | None]:
        """One-way latency of the delivered messages in seconds: p50, p99 and max."""
        return {
            "p50": percentile(self.latencies, 50),
            "p99": percentile(self.latencies, 99),
            "max": max(self.latencies) if self.latencies else None,
        }

    def rss_stats(self) -> dict[str, float | None]:
        """Resident memory per peer process in KiB at the end: mean and max."""
        values = [p.rss_kb for p in self.peers if p.rss_kb]
        if not values:
            return {"mean": None, "max": None}
        return {"mean": sum(values) / len(values), "max": max(values)}

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        """Every figure as plain JSON values (the summaries and the raw samples)."""
        out = asdict(self)
        out["phases"] = {
            name: {**asdict(count), "share": count.share} for name, count in self.phases.items()
        }
        out.update(
            sent=self.sent,
            delivered=self.delivered,
            confirmed=self.confirmed,
            delivery=self.delivery,
            direct_share=self.direct_share,
            turn_share=self.turn_share,
            hops_summary=self.hops_stats(),
            latency_summary=self.latency_stats(),
            rss_summary=self.rss_stats(),
        )
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as one JSON document."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def format(self) -> str:
        """A table for the terminal."""
        rows: list[tuple[str, str]] = []
        sc = self.scenario
        nat = f", {sc.get('nated', 0)} behind {sc.get('nat')} NAT" if sc.get("nat") else ""
        rows.append(("scenario", f"{sc.get('hosts')} hosts x {sc.get('peers')} peers{nat}"))
        rows.append(("mode", self.mode))
        for name in PHASES:
            count = self.phases.get(name)
            if count is None:
                continue
            text = f"{count.delivered}/{count.sent} delivered ({_pct(count.share)})"
            if count.confirmed is not None:
                text += f", {count.confirmed} confirmed by receipt"
            rows.append((f"  {name}", text))
        total = f"{self.delivered}/{self.sent} ({_pct(self.delivery)})"
        if self.confirmed is not None:
            total += f", confirmed {self.confirmed}"
        rows.append(("delivered", total))
        h = self.hops_stats()
        rows.append(("hops", f"mean {_num(h['mean'])}, p99 {_num(h['p99'])}, max {_num(h['max'])}"))
        lat = self.latency_stats()
        rows.append(
            (
                "latency",
                f"p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}",
            )
        )
        if self.busy_pairs:
            busy = ", ".join(f"{k} {v}" for k, v in sorted(self.busy_transports.items()))
            rows.append(
                (
                    "direct (busy NATed)",
                    f"{self.direct_pairs}/{self.busy_pairs} on WebRTC "
                    f"({_pct(self.direct_share)}); links between them: {busy or 'none'}",
                )
            )
        if self.ice:
            ice = ", ".join(f"{k} {v}" for k, v in sorted(self.ice.items()))
            turn = self.turn_share
            if turn is not None:
                ice += f" (through TURN: {_pct(turn)} of those not within one LAN)"
            rows.append(("ICE pairs (NATed ends)", ice))
        links = ", ".join(f"{k} {v}" for k, v in sorted(self.transports.items())) or "none"
        rows.append(("links", links))
        rss = self.rss_stats()
        rows.append(
            (
                "RSS per process",
                f"mean {_mib(rss['mean'])}, max {_mib(rss['max'])} ({len(self.peers)} peers)",
            )
        )
        if self.counters:
            counters = ", ".join(f"{k} {v}" for k, v in sorted(self.counters.items()))
            rows.append(("forwarders", counters))
        rows.append(
            (
                "duration",
                f"{self.duration:.1f} s (network built in {self.build:.1f} s, "
                f"agents started in {self.startup:.1f} s)",
            )
        )
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Write a figure (latency CDF, hops, delivery by phase, RSS) to ``path``.

        Needs matplotlib; raises :class:`~peer_relay.testbed.net.TestbedError` saying how to
        install it when it is missing.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            from .net import TestbedError

            raise TestbedError(
                "plotting needs matplotlib: pip install matplotlib (or peer-relay[plot])"
            ) from None
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        ax = axes[0][0]
        if self.latencies:
            ordered = sorted(x * 1000 for x in self.latencies)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
        ax.set_xlabel("one-way latency (ms)")
        ax.set_ylabel("share of messages")
        ax.set_title("latency CDF")
        ax = axes[0][1]
        if self.hops:
            ax.hist(self.hops, bins=range(0, max(self.hops) + 2), align="left", rwidth=0.8)
        ax.set_xlabel("hops")
        ax.set_title("hops of delivered messages")
        ax = axes[1][0]
        names = [n for n in PHASES if n in self.phases]
        shares = [100 * (self.phases[n].share or 0.0) for n in names]
        ax.bar(names, shares)
        ax.set_ylim(min([90.0, *shares]) - 1, 100.5)
        ax.set_ylabel("delivered (%)")
        ax.set_title("delivery by phase")
        ax = axes[1][1]
        ax.bar(range(len(self.peers)), [p.rss_kb / 1024 for p in self.peers])
        ax.set_xlabel("peer process")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("memory per process")
        sc = self.scenario
        fig.suptitle(
            f"peer-relay testbed: {sc.get('hosts')} hosts x {sc.get('peers')} peers, "
            f"mode {self.mode}"
        )
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"
