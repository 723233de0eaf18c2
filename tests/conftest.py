"""Session-wide: the slow builds that some tests need (the web folder's compressed files, the
core compiled by mypyc) start on the spare core as soon as the tests are collected, in one
background process, while the suite runs; the tests that need them wait for what is left
(``build()`` holds a file lock). A run that needs neither starts nothing.
``PEER_RELAY_NO_WARMUP=1`` turns this off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from peer_relay.sim import compiled

_WARMUP: list[subprocess.Popen[bytes]] = []

_BUILD = """
import contextlib, sys
if "web" in sys.argv:
    with contextlib.suppress(Exception):
        from peer_relay.browser.build import build
        build()
if "compiled" in sys.argv:
    with contextlib.suppress(Exception):
        from peer_relay.sim import compiled
        compiled.build()
"""


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.environ.get("PEER_RELAY_NO_WARMUP") == "1":
        return
    items = session.items
    wanted = []
    if any("web_build" in getattr(i, "fixturenames", ()) for i in items) and shutil.which("npm"):
        wanted.append("web")
    needs_compiled = any(i.get_closest_marker("compiled") for i in items)
    if needs_compiled and not compiled.is_built() and shutil.which("cc"):
        wanted.append("compiled")
    if wanted:
        command = [sys.executable, "-c", _BUILD, *wanted]
        quiet = subprocess.DEVNULL
        _WARMUP.append(subprocess.Popen(command, stdout=quiet, stderr=quiet))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for process in _WARMUP:
        if process.poll() is None:
            process.terminate()
        process.wait()
