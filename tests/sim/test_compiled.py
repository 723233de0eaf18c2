"""The core compiled by mypyc (``peer-relay simulate --compiled``) runs the very same simulation."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peer_relay import PeerRelay
from peer_relay._filelock import file_lock
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
@pytest.mark.compiled
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
@pytest.mark.compiled
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


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.compiled
async def test_a_live_peer_runs_compiled_with_compiled_on_the_command_line() -> None:
    """``peer-relay listen --compiled`` runs the compiled core and takes part as any peer:
    messages from an uncompiled peer reach it through an uncompiled relay."""
    await asyncio.to_thread(compiled.build)
    async with PeerRelay(port=0, host="127.0.0.1") as relay:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "peer_relay.cli", "listen", "--compiled", "-v"),
            *("--bootstrap", relay.url or ""),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            said: list[str] = []
            while not any("listening as" in line for line in said):
                line = await asyncio.wait_for(proc.stderr.readline(), 60)
                assert line, f"listen exited: {said}"
                said.append(line.decode())
            assert any("running the core compiled by mypyc" in line for line in said), said
            listener = bytes.fromhex(said[-1].split()[-1])
            async with PeerRelay(bootstrap=[relay.url or ""]) as sender:
                await sender.wait_for_peers(1)
                for n in range(3):
                    await sender.deliver(listener, {"n": n})
            lines = [
                json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(3)
            ]
            assert [line["data"] for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
        finally:
            proc.terminate()
            await proc.wait()


def test_old_builds_are_pruned_from_the_cache(tmp_path: Path) -> None:
    builds = []
    for age in range(6):
        build = tmp_path / f"build{age}"
        build.mkdir()
        (build / "BUILT").write_text("x")
        os.utime(build / "BUILT", (1000 - age, 1000 - age))
        builds.append(build)
    (tmp_path / "half-built").mkdir()  # a build under way elsewhere: left alone
    current = builds[5]  # the oldest by time, but the one just built
    compiled.prune(tmp_path, keep=current)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["build0", "build1", "build5", "half-built"]
    assert compiled.KEEP == 3


def test_builds_sharing_a_cache_wait_for_each_other(tmp_path: Path) -> None:
    """The lock ``build()`` holds: a second process waits until the first is done, then finds
    its build (a test run warms the build up in the background while tests that need it start)."""
    lock, log = tmp_path / "build.lock", tmp_path / "log"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from peer_relay._filelock import file_lock\n"
            "with file_lock(Path(sys.argv[1])):\n"
            "    open(sys.argv[2], 'a').write('first in\\n')\n"
            "    time.sleep(1.0)\n"
            "    open(sys.argv[2], 'a').write('first out\\n')\n",
            str(lock),
            str(log),
        ]
    )
    while not log.exists():
        time.sleep(0.01)
    with file_lock(lock):
        log.open("a").write("second in\n")
    holder.wait()
    assert log.read_text().split("\n")[:3] == ["first in", "first out", "second in"]
