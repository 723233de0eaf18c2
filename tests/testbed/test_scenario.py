"""Scenarios on the testbed: the CI scenario on real namespaces (3 hosts x 8 peers, one host
behind a cone NAT, 30 ms, 1% loss), the same layer on 127.0.0.1 without namespaces (churn, busy
NATed pairs, deliver()), and refusals of impossible scenarios, in Python and by the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from peer_relay.testbed import Shape, TestbedError, check_requirements, cleanup_stale
from peer_relay.testbed.report import PeerSummary, PhaseCount, Report
from peer_relay.testbed.scenario import RUN_PREFIX, Scenario, cleanup_runs, halves, run_scenario

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def namespaces() -> None:
    """Skip (or fail, with PEER_RELAY_REQUIRE_TESTBED=1) unless a testbed can be built."""
    try:
        check_requirements(turn=False)
    except TestbedError as exc:
        if os.environ.get("PEER_RELAY_REQUIRE_TESTBED") == "1":
            pytest.fail(f"the testbed is required but unavailable: {exc}")
        pytest.skip(f"testbed unavailable: {exc}")
    cleanup_stale()


def agents_running(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"peer_relay.testbed.agent" in cmdline:
                pids.append(int(entry.name))
    return pids


def assert_nothing_left(report: Report) -> None:
    assert not os.path.exists(report.workdir)
    assert agents_running(report.workdir) == []
    if report.testbed_id is not None:
        netns = Path("/run/netns")
        left = [n.name for n in netns.iterdir()] if netns.exists() else []
        assert [n for n in left if n.startswith(report.testbed_id)] == []


def test_ci_scenario_on_real_namespaces(namespaces: None) -> None:
    scenario = Scenario(
        hosts=3,
        peers=8,
        nat="cone",
        nated=1,
        shape=Shape(delay=0.030, loss=0.01),
        messages=200,
        rate=100,
        seed=1,
    )
    started = time.monotonic()
    report = run_scenario(scenario)
    elapsed = time.monotonic() - started
    print(report.format(), f"\ntest wall time {elapsed:.1f}s")
    assert len(report.peers) == 24
    assert all(p.links >= 1 for p in report.peers), "every peer joined"
    assert report.delivery is not None and report.delivery >= 0.99, report.format()
    hops = report.hops_stats()
    assert hops["max"] is not None and hops["max"] <= 6
    latency = report.latency_stats()
    assert latency["p50"] is not None and latency["p50"] >= 0.025  # the shaped path is crossed
    public = {p.name for p in report.peers if p.nat is None}
    for peer in report.peers:
        if peer.nat is not None:
            # It cannot be dialled: its WebSocket links are ones it dialled, to public peers.
            ws_to = [name for name, t in peer.links_to.items() if t == "ws"]
            assert ws_to and set(ws_to) <= public, (peer.name, peer.links_to)
    assert report.counters.get("dropped_loss", 0) > 0  # the loss was real
    assert_nothing_left(report)


@pytest.mark.parametrize("kind", ["cone", "symmetric"])
def test_busy_pairs_across_nats_with_stun_only(namespaces: None, kind: str) -> None:
    """Behind cone NATs a busy pair punches a direct WebRTC link through STUN's answers;
    behind symmetric NATs it cannot (no TURN here) and stays on the overlay. Either way no
    message is lost while it tries."""
    scenario = Scenario(
        hosts=3,
        peers=2,
        nat=kind,  # type: ignore[arg-type]
        nated=2,
        shape=Shape(delay=0.010),
        turn=True,
        stun_only=True,
        messages=20,
        rate=100,
        busy_pairs=2,
        busy_messages=40,
        upgrade_wait=12 if kind == "cone" else 4,
        options={"direct_after": 16},
        seed=3,
    )
    report = run_scenario(scenario)
    print(report.format())
    busy = report.phases["busy"]
    assert busy.delivered == busy.sent > 0, report.format()
    assert report.busy_pairs == 2
    if kind == "cone":
        assert report.direct_share == 1.0, report.format()
    else:
        assert report.direct_share == 0.0, report.format()
    assert_nothing_left(report)


def test_local_scenario_with_churn_busy_pairs_and_deliver() -> None:
    scenario = Scenario(
        hosts=3,
        peers=2,
        nat="cone",
        nated=2,
        messages=40,
        rate=100,
        mode="deliver",
        busy_pairs=1,
        busy_messages=40,
        upgrade_wait=15,
        churn=1,
        churn_down=1,
        options={"direct_after": 16},
        local=True,
        seed=2,
    )
    report = run_scenario(scenario)
    print(report.format())
    assert set(report.phases) == {"steady", "busy", "churn"}
    assert report.phases["steady"].confirmed == report.phases["steady"].sent == 40
    assert report.phases["busy"].delivered == report.phases["busy"].sent
    assert report.busy_pairs == 1 and report.direct_share is not None
    assert sum(p.restarts for p in report.peers) == 1
    assert report.rss_stats()["max"] is not None
    assert report.testbed_id is None
    assert_nothing_left(report)


@pytest.mark.parametrize(
    ("scenario", "why"),
    [
        (Scenario(hosts=0), "hosts must be at least 1"),
        (Scenario(hosts=1, peers=1), "one peer alone"),
        (Scenario(hosts=2, nat="cone", nated=2), "at least one host must be public"),
        (Scenario(nated=1), "no NAT kind"),
        (Scenario(hosts=3, nat="cone", nated=1, busy_pairs=1), "NATed peers on 2 hosts"),
        (Scenario(hosts=4, peers=2, nat="cone", nated=2, busy_pairs=3), "at most 2 pairs"),
        (Scenario(hosts=2, peers=2, churn=3), "only 2 are not seed relays"),
        (Scenario(hosts=2, partition=(("h1",), ("h9",))), "names host 'h9'"),
        (Scenario(hosts=2, nat="cone", nated=1, partition=(("h1",), ("h2",))), "no public"),
        (Scenario(shape=Shape(delay=0.03), local=True), "need network namespaces"),
        (Scenario(rate=0), "rate must be positive"),
        (Scenario(hosts=500, peers=100), "MB are available"),
    ],
)
def test_impossible_scenarios_are_refused_before_anything_is_built(
    scenario: Scenario, why: str
) -> None:
    with pytest.raises(TestbedError, match="impossible scenario") as info:
        run_scenario(scenario)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_a_partition_needs_two_public_hosts() -> None:
    with pytest.raises(TestbedError, match="2 public hosts"):
        halves(Scenario(hosts=3, nat="cone", nated=2))
    assert halves(Scenario(hosts=4, nat="cone", nated=2)) == (("h1", "h3"), ("h2", "h4"))


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--hosts", "0"], "hosts must be at least 1"),
        (["--loss", "150%"], "loss"),
        (["--delay", "soon"], "not a duration"),
        (["--hosts", "2", "--nat", "cone", "--nated", "2"], "at least one host must be public"),
        (["--hosts", "3", "--nat", "symmetric", "--nated", "2", "--partition"], "2 public"),
        (["--hosts", "2", "--peers", "2", "--churn", "5"], "not seed relays"),
    ],
)
def test_the_command_refuses_in_one_line(args: list[str], why: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "peer_relay.cli", "testbed", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cleanup_runs_removes_the_directories_of_dead_drivers_only() -> None:
    dead = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    (dead / "driver.pid").write_text("999999999\n")
    alive = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    (alive / "driver.pid").write_text(f"{os.getpid()}\n")
    try:
        assert cleanup_runs() >= 1
        assert not dead.exists() and alive.exists()
    finally:
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)


def sample_report() -> Report:
    return Report(
        scenario={"hosts": 2, "peers": 2, "nat": "cone", "nated": 1},
        mode="deliver",
        phases={"steady": PhaseCount(10, 9, 9), "churn": PhaseCount(4, 4, 4)},
        hops=[1, 1, 2, 3],
        latencies=[0.030, 0.031, 0.060, 0.200],
        busy_pairs=2,
        direct_pairs=1,
        busy_transports={"webrtc": 1, "relayed": 1},
        transports={"ws": 3, "webrtc": 1},
        peers=[PeerSummary("h1p1", "h1", None, "ab" * 20, 2, {"ws": 2}, 40_000)],
        ice={"host/srflx": 2, "host/host": 4, "relay/prflx": 2},
    )


def test_the_report_computes_and_formats_its_figures(tmp_path: Path) -> None:
    report = sample_report()
    assert (report.sent, report.delivered, report.confirmed) == (14, 13, 13)
    assert report.direct_share == 0.5
    assert report.hops_stats() == {"mean": 1.75, "p99": 3, "max": 3}
    assert report.latency_stats()["p50"] == 0.031
    text = report.format()
    assert "steady" in text and "9/10 delivered (90.00%)" in text
    assert "1/2 on WebRTC (50.00%)" in text and "host/srflx 2" in text
    assert report.turn_share == 0.5 and "through TURN: 50.00%" in text
    data = json.loads(report.to_json())
    assert data["delivery"] == 13 / 14 and data["phases"]["churn"]["share"] == 1.0
    report.plot(str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(TestbedError, match="pip install matplotlib"):
        sample_report().plot(str(tmp_path / "r.png"))


LOCAL_RUN = [
    "--hosts",
    "2",
    "--peers",
    "2",
    "--messages",
    "20",
    "--rate",
    "100",
    "--json",
    "--plot",
]


def test_the_command_runs_a_local_scenario_and_writes_json_and_a_plot(tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    proc = subprocess.run(
        [sys.executable, "-m", "peer_relay.cli", "testbed", "--local", *LOCAL_RUN, str(plot)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["sent"] == 20 and data["delivered"] == 20
    assert plot.read_bytes()[:4] == b"\x89PNG"
