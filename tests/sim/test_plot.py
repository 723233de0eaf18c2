"""``peer-relay simulate``'s plot and progress (issue 17).

- the plot has what matters for the run: hops, latency CDF, links per peer, and delivery over
  time only when something changes over time (churn); every series told apart and visible;
- progress: a live ``\\r`` line on a terminal only, elsewhere a plain line per phase;
- ``--compiled`` says it compiles only when it does.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from peer_relay.sim import cli as sim_cli
from peer_relay.sim import compiled
from peer_relay.sim.cli import Observed, _Progress, build_figure, panels, run_observed
from peer_relay.sim.runner import SimParams, run_simulation

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
BUILD_TIMEOUT = 900
"""As in ``test_compiled.py``: a test that may build the compiled core takes minutes."""
STATIC = SimParams(nodes=40, messages=30, seed=3)
CHURN = replace(STATIC, churn=0.2)
STATIC_PANELS = ["hop distribution", "latency CDF", "links per peer"]


def simulate(
    cwd: Path, *argv: str, timeout: float = 300, env: dict[str, str] = ENV
) -> tuple[str, str]:
    """Run ``peer-relay simulate argv`` as a process, its stderr to a file: (stdout, stderr),
    stderr read as written (a ``\\r`` stays a ``\\r``)."""
    err_path = cwd / "stderr.txt"
    with err_path.open("wb") as err:
        done = subprocess.run(
            [sys.executable, "-m", "peer_relay.cli", "simulate", *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    stderr = err_path.read_bytes().decode()
    assert done.returncode == 0, stderr
    return done.stdout.decode(), stderr


def phase_lines(strategy: str, nodes: int, messages: int, replaced: int = 0) -> list[str]:
    """The lines (as patterns) a run says on a file, one per phase."""
    churn = f", replacing {replaced} peers" if replaced else ""
    return [
        re.escape(f"[{strategy}] joining {nodes} peers ..."),
        re.escape(f"[{strategy}] settling ..."),
        re.escape(f"[{strategy}] sending {messages} messages{churn} ..."),
        re.escape(f"[{strategy}] done in ") + r"\d+\.\d s",
    ]


def assert_lines(stderr: str, patterns: list[str]) -> None:
    assert "\r" not in stderr and "\x1b" not in stderr, repr(stderr)
    lines = stderr.splitlines()
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


# ---------------------------------------------------------------------------------- progress


def test_progress_to_a_file_is_one_plain_line_per_phase_and_the_plot_is_written(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    out, err = simulate(tmp_path, "--nodes", "40", "--messages", "30", "--plot", "out.png")
    assert_lines(err, phase_lines("spread", 40, 30))
    assert "plot written to out.png" in out
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_strategy_of_a_churn_run_says_its_phases_from_its_own_process(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    argv = ["--nodes", "40", "--messages", "30", "--churn", "0.2", "--strategy", "all"]
    _out, err = simulate(tmp_path, *argv, "--plot", "all.png")
    assert_lines(err, phase_lines("spread", 40, 30, 8) + phase_lines("original", 40, 30, 8))
    assert (tmp_path / "all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = _Terminal()
    progress = _Progress(out)
    assert progress.live
    progress.begin(STATIC)
    progress("join", 40, 40, 28.0)
    progress("messages", 10, 30, 40.0)
    progress.done()
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 3 and text.endswith("\r\x1b[K")  # cleared at the end
    assert "[spread] messages 10/30 | virtual 40s" in text


def test_progress_elsewhere_says_a_phase_the_runner_did_not_report() -> None:
    out = io.StringIO()
    progress = _Progress(out)
    assert not progress.live
    progress.begin(replace(STATIC, nodes=10_000, messages=1000, churn=0.1))
    progress("join", 64, 10_000, 3.0)
    progress("join", 10_000, 10_000, 90.0)
    progress("messages", 0, 2000, 200.0)  # a settle too short to be reported
    progress("messages", 2000, 2000, 210.0)
    progress.done()
    assert_lines(
        out.getvalue(),
        [
            re.escape("[spread] joining 10,000 peers ..."),
            re.escape("[spread] settling ..."),
            re.escape("[spread] sending 1,000 messages, replacing 1,000 peers ..."),
            r"\[spread\] done in \d+\.\d s",
        ],
    )


# ---------------------------------------------------------------------------------- plot


@pytest.fixture(scope="module")
def static_runs() -> list[Observed]:
    return [run_observed(replace(STATIC, strategy=s)) for s in ("spread", "original")]


@pytest.fixture(scope="module")
def churn_runs() -> list[Observed]:
    return [run_observed(replace(CHURN, strategy=s)) for s in ("spread", "original")]


def test_run_observed_is_the_very_same_run_with_its_distributions(
    churn_runs: list[Observed],
) -> None:
    run = churn_runs[0]
    r = run.report
    assert r.digest == run_simulation(CHURN).digest
    assert len(run.latencies) == r.delivered and run.latencies == sorted(run.latencies)
    assert sum(run.latencies) / r.delivered == pytest.approx(r.latency_mean)
    assert len(run.links) == r.nodes_final and run.links == sorted(run.links)
    assert (run.links[0], run.links[-1]) == (r.links_min, r.links_max)


def test_a_static_run_has_no_delivery_over_time(static_runs: list[Observed]) -> None:
    pytest.importorskip("matplotlib")
    assert panels(static_runs) == STATIC_PANELS
    fig = build_figure(static_runs[:1])
    assert [ax.get_title() for ax in fig.axes] == STATIC_PANELS


def test_a_churn_run_has_delivery_over_time(churn_runs: list[Observed]) -> None:
    pytest.importorskip("matplotlib")
    fig = build_figure(churn_runs)
    assert [ax.get_title() for ax in fig.axes] == [*STATIC_PANELS, "delivery over time"]
    delivery = fig.axes[3]
    assert len(delivery.get_lines()) == 2


def test_compared_strategies_are_told_apart_in_every_panel(
    churn_runs: list[Observed], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.container import BarContainer

    fig = build_figure(churn_runs)
    hops, *line_panels = fig.axes
    bars = [bar for bar in hops.containers if isinstance(bar, BarContainer)]
    assert len(bars) == 2
    fills = {(bar.patches[0].get_facecolor(), bar.patches[0].get_hatch()) for bar in bars}
    assert len({colour for colour, _hatch in fills}) == 2
    assert len({hatch for _colour, hatch in fills}) == 2
    for ax in line_panels:
        lines = ax.get_lines()
        assert len(lines) == 2, ax.get_title()
        for attribute in ("get_color", "get_linestyle", "get_marker"):
            assert len({getattr(line, attribute)() for line in lines}) == 2, (ax, attribute)
        # the later series lies on top, thinner, so that one hiding the other still shows
        first, second = lines
        assert second.get_zorder() > first.get_zorder()
        assert second.get_linewidth() < first.get_linewidth()
        assert second.get_markersize() < first.get_markersize()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None, ax.get_title()
        labels = [text.get_text() for text in legend.get_texts()]
        assert [label.split()[0] for label in labels] == ["spread", "original"]
    path = tmp_path / "runs.png"
    sim_cli.plot_runs(churn_runs, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- compiled


@pytest.mark.parametrize("built", [False, True])
def test_compiled_says_compiling_only_when_it_compiles(
    built: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_compiler(verbose: bool = False) -> Path:
        raise compiled.CompileError("no C compiler here")

    monkeypatch.setattr(compiled, "is_built", lambda: built)
    monkeypatch.setattr(compiled, "build", no_compiler)
    assert sim_cli.main(["--nodes", "10", "--compiled"]) == 2
    err = capsys.readouterr().err
    assert ("compiling" in err) is not built
    assert "no C compiler here" in err


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_a_second_compiled_run_does_not_say_compiling(tmp_path: Path) -> None:
    """On a copy of the sources: the compiled build is named by a hash of them, which edits
    made meanwhile (elsewhere in a working tree) would change between the two runs."""
    src = tmp_path / "src"
    shutil.copytree(
        Path(SRC) / "peer_relay",
        src / "peer_relay",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    ask = "from peer_relay.sim import compiled; print(compiled.is_built())"
    built = subprocess.run(
        [sys.executable, "-c", ask], env=env, capture_output=True, text=True, check=True
    )
    argv = ("--nodes", "40", "--messages", "30", "--compiled")
    _out, first = simulate(tmp_path, *argv, timeout=BUILD_TIMEOUT, env=env)  # builds if need be
    assert ("compiling" in first) is (built.stdout.strip() == "False"), first
    out, second = simulate(tmp_path, *argv, timeout=BUILD_TIMEOUT, env=env)
    assert_lines(second, phase_lines("spread", 40, 30))
    assert "delivery" in out
