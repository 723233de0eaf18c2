"""Sweeps, limits refused and memory (issue 18): ``peer-relay simulate --seeds K``.

- a sweep runs seeds SEED..SEED+K-1 in parallel (a local pool, or a Dask cluster) and prints
  each figure's mean, standard deviation and range; its runs are the runs of each seed alone;
- impossible parameters are refused in one line before anything runs, by the CLI and the
  Python API alike;
- a run that would not fit in memory stops during its join, saying so in one line.
"""

from __future__ import annotations

import json
import math
import re
import socket
import statistics
import sys
from dataclasses import replace
from typing import Any

import pytest

from peer_relay.sim import sweep
from peer_relay.sim.cli import main as simulate
from peer_relay.sim.runner import (
    SimParams,
    SimReport,
    SimulationTooLarge,
    check_params,
    memory_available,
    memory_verdict,
    run_simulation,
)

SMALL = SimParams(nodes=30, messages=20, seed=5)
ARGV = ["--nodes", "30", "--messages", "20", "--seed", "5"]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``simulate argv``, which must refuse: its one line of error."""
    with pytest.raises(SystemExit) as exit_info:
        status = simulate(argv)
        raise SystemExit(status)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peer-relay simulate: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------- sweeps


def test_a_sweep_runs_each_seed_as_it_runs_alone() -> None:
    runs = sweep.seeded(SMALL, 3)
    assert [p.seed for p in runs] == [5, 6, 7]
    finished: list[int] = []
    reports = sweep.run_local(runs, jobs=2, done=lambda r: finished.append(r.params["seed"]))
    assert sorted(finished) == [5, 6, 7]
    assert [r.params["seed"] for r in reports] == [5, 6, 7]  # in the order asked
    alone = [run_simulation(p) for p in runs]
    assert [r.digest for r in reports] == [r.digest for r in alone]
    assert len({r.digest for r in reports}) == 3  # the seeds made different runs


def test_the_table_gives_mean_spread_and_range_and_a_line_per_seed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert simulate([*ARGV, "--seeds", "3", "--jobs", "2", "--strategy", "all"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == ("30 peers, 20 messages, churn 0%, loss 0.0%, seeds 5-7, sent by deliver")
    assert re.fullmatch(r"strategy +spread +original", lines[1])
    figure = r"\d+\.\d\d% ±\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)"
    assert re.fullmatch(rf"delivery +{figure} +{figure}", lines[2]), lines[2]
    for label in ("hops mean", "frames per delivered", "links per peer mean", "wall time"):
        assert any(line.startswith(label) for line in lines), label
    said = err.splitlines()
    assert len(said) == 6, said
    for name in ("spread", "original"):
        mine = [line for line in said if line.startswith(f"[{name}] ")]
        for k, line in enumerate(mine, 1):
            assert re.fullmatch(rf"\[{name}\] seed [567] done in \d+\.\d s \({k}/3\)", line)


def test_json_has_every_run_and_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate([*ARGV, "--seeds", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress with --json
    doc = json.loads(out)
    runs = doc["runs"]
    assert [r["params"]["seed"] for r in runs] == [5, 6]
    hops = [r["hops_mean"] for r in runs]
    summary = doc["summary"]["spread"]["hops_mean"]
    assert summary == pytest.approx(
        {
            "mean": statistics.fmean(hops),
            "sd": statistics.stdev(hops),
            "min": min(hops),
            "max": max(hops),
        }
    )
    assert set(doc["summary"]["spread"]) == {f.key for f in sweep.FIGURES}


def test_one_seed_prints_what_it_printed_before(capsys: pytest.CaptureFixture[str]) -> None:
    def table(argv: list[str]) -> list[str]:
        assert simulate(argv) == 0
        out = capsys.readouterr().out
        # Timings and memory differ from one run to the next; the rest must not.
        return [line for line in out.splitlines() if not line.startswith(("wall", "memory"))]

    assert table([*ARGV, "--seeds", "1"]) == table(ARGV)
    assert "±" not in "\n".join(table(ARGV))


def test_runs_at_once_share_the_memory() -> None:
    available = memory_available()
    if available is None:
        pytest.skip("no /proc/meminfo here")
    shared = sweep.share_memory(sweep.seeded(SMALL, 4), 4)
    for p in shared:
        assert p.memory_limit is not None
        assert p.memory_limit == pytest.approx(available / 4, rel=0.05)
    lower = sweep.share_memory([replace(SMALL, memory_limit=2**20)], 4)
    assert lower[0].memory_limit == 2**20  # a lower limit of its own stays
    assert sweep.share_memory([SMALL], 1) == [SMALL]  # alone: measured as it goes


# ---------------------------------------------------------------------------------- Dask


def test_a_sweep_on_dask_gives_the_local_pools_runs(capsys: pytest.CaptureFixture[str]) -> None:
    distributed = pytest.importorskip("distributed")
    argv = [*ARGV, "--seeds", "2", "--json"]
    assert simulate(argv) == 0  # the local pool first: it forks this process
    local = json.loads(capsys.readouterr().out)["runs"]
    with distributed.LocalCluster(
        host="127.0.0.1",
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        dashboard_address=None,
    ) as cluster:
        assert simulate([*argv, "--dask", cluster.scheduler_address]) == 0
    remote = json.loads(capsys.readouterr().out)["runs"]
    assert [r["digest"] for r in remote] == [r["digest"] for r in local]
    assert [r["params"]["seed"] for r in remote] == [5, 6]


def test_an_unreachable_scheduler_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    line = one_line_error(capsys, [*ARGV, "--seeds", "2", "--dask", address])
    assert line.startswith(
        f"peer-relay simulate: error: cannot reach the Dask scheduler at {address}: "
    )
    assert line.endswith("; start one with `dask scheduler` or drop --dask")


def test_a_server_that_never_answers_is_not_waited_for() -> None:
    pytest.importorskip("distributed")
    with socket.socket() as silent:  # accepts connections (the backlog), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(sweep.SweepError) as refused:
            sweep.connect_dask(address, timeout=1.0)
    assert str(refused.value) == (
        f"cannot reach the Dask scheduler at {address}: no Dask answer within 1 s (is it a "
        "scheduler?); start one with `dask scheduler` or drop --dask"
    )


def test_without_dask_the_option_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    line = one_line_error(capsys, [*ARGV, "--dask", "tcp://127.0.0.1:8786"])
    assert line == f"peer-relay simulate: error: {sweep.DASK_HINT}"
    assert "pip install 'peer-relay[dask]'" in line


# ---------------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("argv", "params", "words"),
    [
        (
            ["--nodes", "30", "--links", "30"],
            {"nodes": 30, "links": 30},
            "links (30) must be below nodes (30): a peer can link to at most the 29 others",
        ),
        (["--links", "0"], {"links": 0}, "links must be at least 1 (got 0)"),
        (["--nodes", "1"], {"nodes": 1}, "nodes must be at least 2 (got 1)"),
        (["--churn", "1.5"], {"churn": 1.5}, "churn must be in [0, 1] (got 1.5)"),
        (["--churn", "-0.1"], {"churn": -0.1}, "churn must be in [0, 1] (got -0.1)"),
        (["--loss", "1"], {"loss": 1.0}, "loss must be in [0, 1) (got 1.0)"),
        (["--loss", "nan"], {"loss": float("nan")}, "loss must be in [0, 1) (got nan)"),
        (
            ["--rate", "0"],
            {"message_rate": 0.0},
            "message_rate (--rate) must be a finite number above 0 (got 0.0)",
        ),
        (
            ["--join-growth", "-1"],
            {"join_growth": -1.0},
            "join_growth must be a finite number above 0 (got -1.0)",
        ),
        (
            ["--deliver-timeout", "inf"],
            {"deliver_timeout": math.inf},
            "deliver_timeout must be a finite number above 0 (got inf)",
        ),
        (["--messages", "-1"], {"messages": -1}, "messages must be 0 or more (got -1)"),
        (["--swallowers", "2"], {"swallowers": 2.0}, "swallowers must be in [0, 1] (got 2.0)"),
    ],
)
def test_impossible_parameters_are_refused_alike_by_the_cli_and_the_api(
    capsys: pytest.CaptureFixture[str], argv: list[str], params: dict[str, Any], words: str
) -> None:
    assert one_line_error(capsys, argv) == f"peer-relay simulate: error: {words}"
    with pytest.raises(ValueError) as refused:
        run_simulation(SimParams(**params))
    assert str(refused.value) == words


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seeds", "0"], "--seeds must be at least 1 (got 0)"),
        (["--seeds", "2", "--jobs", "0"], "--jobs must be at least 1 (got 0)"),
        (["--seeds", "2", "--plot", "x.png"], "--plot draws one run per strategy"),
        (["--memory-limit", "0"], "--memory-limit must be a number of MiB above 0 (got 0.0)"),
        (["--memory-limit", "nan"], "--memory-limit must be a number of MiB above 0 (got nan)"),
    ],
)
def test_impossible_sweeps_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert words in one_line_error(capsys, [*ARGV, *argv])


def test_the_api_refuses_a_limit_of_no_memory_and_passes_sane_parameters() -> None:
    with pytest.raises(ValueError, match=re.escape("memory_limit must be above 0 bytes (got 0)")):
        check_params(replace(SMALL, memory_limit=0))
    check_params(SMALL)
    check_params(replace(SMALL, links=29, churn=1.0, loss=0.0, swallowers=1.0))


# ---------------------------------------------------------------------------------- memory

TOO_LARGE = re.compile(
    r"a run of (?P<total>[\d,]+) peers would need about [\d.]+ [KMG]?i?B "
    r"\([\d.]+ [KMG]?i?B a peer, measured as the first (?P<peers>\d+) peers joined\), more "
    r"than the 1\.0 MiB this run may use \(memory_limit\); run fewer peers, or free memory"
)


def test_a_run_too_large_for_its_memory_stops_during_its_join() -> None:
    phases: list[tuple[str, float, float]] = []
    params = replace(SMALL, nodes=60, churn=0.5, memory_limit=2**20)
    with pytest.raises(SimulationTooLarge) as refused:
        run_simulation(params, lambda phase, done, total, _v: phases.append((phase, done, total)))
    said = TOO_LARGE.fullmatch(str(refused.value))
    assert said, str(refused.value)
    assert said["total"] == "90"  # the 60 peers and the 30 that replace some
    assert int(said["peers"]) < 60  # before the join ended
    assert all(phase == "join" and done < total for phase, done, total in phases)


def test_the_cli_says_a_run_is_too_large_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(simulate([*ARGV, "--memory-limit", "1", "--json"]))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and TOO_LARGE.search(err), err


def test_a_sweep_too_large_says_the_runs_at_once_shared_the_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*ARGV, "--memory-limit", "1", "--seeds", "2", "--jobs", "2", "--json"]
    with pytest.raises(SystemExit):
        raise SystemExit(simulate(argv))
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and TOO_LARGE.search(err), err
    assert err.rstrip().endswith("; or run fewer at once (--jobs): 2 runs shared the memory")


def test_a_run_that_fits_is_not_stopped() -> None:
    report: SimReport = run_simulation(replace(SMALL, memory_limit=8 * 2**30))
    assert report.delivered == report.sent == 20


def test_the_projection_is_the_growth_per_peer_times_the_peers_to_come() -> None:
    mib = 2**20
    params = SimParams(nodes=10_000, churn=0.1, memory_limit=4 * 2**30)
    # 100 MiB over the last 512 peers: 200 KiB a peer, 9,976 peers to come of 11,000.
    assert memory_verdict(params, 100 * mib, 200 * mib, 1_024, 512) is None
    said = memory_verdict(replace(params, memory_limit=2**30), 100 * mib, 200 * mib, 1_024, 512)
    assert said == (
        "a run of 11,000 peers would need about 2.1 GiB (200.0 KiB a peer, measured as the "
        "last 512 of 1,024 peers joined), more than the 1.0 GiB this run may use "
        "(memory_limit); run fewer peers, or free memory"
    )
