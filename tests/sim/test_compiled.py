"""The core compiled by mypyc (``peer-relay simulate --compiled``) runs the very same simulation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from peer_relay.sim import compiled
from peer_relay.sim.runner import SimParams, run_simulation

BUILD_TIMEOUT = 900
"""Seconds a test may take that builds the compiled core (once per version of the sources:
some 25 modules through mypyc and the C compiler, minutes on a busy machine)."""
RUN = "run_simulation(SimParams(nodes=60, messages=80, seed=4, churn=0.1))"


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_compiled_core_runs_the_very_same_simulation() -> None:
    target = compiled.build()  # cached per version of the sources; scripts/test installs gcc
    code = (
        "import json\n"
        "from peer_relay.sim import compiled\n"
        "from peer_relay.sim.runner import SimParams, run_simulation\n"
        f"print(json.dumps([compiled.is_compiled(), {RUN}.digest]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=compiled.environ(target),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    was_compiled, digest = json.loads(done.stdout.splitlines()[-1])
    assert was_compiled and not compiled.is_compiled()
    assert digest == run_simulation(SimParams(nodes=60, messages=80, seed=4, churn=0.1)).digest


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_simulate_compiled_on_the_command_line() -> None:
    def digest(*extra: str) -> tuple[str, str]:
        argv = ["simulate", "--nodes", "40", "--messages", "30", "--json", *extra]
        done = subprocess.run(
            [sys.executable, "-m", "peer_relay.cli", *argv],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,  # builds the compiled core if not built yet
            check=True,
        )
        out = json.loads(done.stdout)
        return out["core"], out["runs"][0]["digest"]

    fast, slow = digest("--compiled"), digest()
    assert fast[0] == "compiled" and slow[0] == "python" and fast[1] == slow[1]
