"""The simulator's hot modules compiled ahead of time with mypyc: the same source, run faster.

:func:`build` compiles a copy of this package's core (sessions and delivery included), table,
ids, wire, events, pump (host), sealing (the sessions' suites) and simulated network with mypyc
(which ships with mypy, a test dependency; it needs a C compiler and Python's headers) into a
cache directory named by a hash of the package's sources and the interpreter, so it is built
once per version of the code (a few minutes). :func:`environ` gives the environment
in which a new Python process imports that copy instead of the pure-Python one. Nothing else
changes: a run gives the same digest compiled or not (``tests/sim/test_compiled.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import peer_relay
from peer_relay._filelock import file_lock
from peer_relay.core import PARTS

MODULES = (
    "core/__init__.py",
    *(f"core/{name}.py" for name in PARTS),
    "table.py",
    "ids.py",
    "wire.py",
    "events.py",
    "host.py",
    "sealing.py",
    "sim/network.py",
)
"""What is compiled (relative to the package): where a simulation spends its time. Not
``noise.py``: the real suite runs only with ``real_crypto``, where X25519 and ChaChaPoly (in C
already) cost far more than its Python."""

_DONE = "BUILT"
KEEP = 3
"""Builds kept in the cache (the newest); older ones are removed after each new build."""


class CompileError(RuntimeError):
    """mypyc could not build the modules (no C compiler or no Python headers, say)."""


def package_dir() -> Path:
    """Where the ``peer_relay`` being run lives."""
    return Path(peer_relay.__file__).resolve().parent


def fingerprint() -> str:
    """A hash of every source file of the package and of the interpreter's version."""
    digest = hashlib.sha256(sys.version.encode())
    root = package_dir()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """The directory the compiled copy of these sources goes to (it may not exist yet)."""
    base = os.environ.get("PEER_RELAY_CACHE") or str(Path.home() / ".cache" / "peer-relay")
    return Path(base) / "compiled" / fingerprint()


def is_compiled() -> bool:
    """Whether this process runs the compiled core."""
    from ..core import core

    return not str(core.__file__).endswith(".py")


def is_built() -> bool:
    """Whether the compiled copy of these sources is in the cache already."""
    return (cache_dir() / _DONE).exists()


def build(verbose: bool = False) -> Path:
    """Compile the modules (unless already built for these sources); return the directory to
    put first on ``sys.path``. Raise :class:`CompileError` if mypyc fails."""
    target = cache_dir()
    if (target / _DONE).exists():
        return target
    # A process that builds the same sources meanwhile (a test run warming up, another
    # simulation) is waited for: its build is this one.
    with file_lock(target.parent / "build.lock"):
        if not (target / _DONE).exists():
            _build(target, verbose)
    return target


def _build(target: Path, verbose: bool) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        shutil.copytree(
            package_dir(),
            work / "peer_relay",
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
        )
        command = [sys.executable, "-m", "mypyc", *(f"peer_relay/{m}" for m in MODULES)]
        done = subprocess.run(command, cwd=work, capture_output=not verbose, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "")[-2000:]
            raise CompileError(f"mypyc failed (exit {done.returncode}):\n{tail}")
        shutil.rmtree(work / "build", ignore_errors=True)
        shutil.rmtree(work / ".mypy_cache", ignore_errors=True)
        (work / _DONE).write_text(" ".join(MODULES) + "\n")
        try:
            work.rename(target)
        except OSError:  # built meanwhile by another process: theirs is as good
            if not (target / _DONE).exists():
                raise
        else:
            work.mkdir()  # for TemporaryDirectory's cleanup
    prune(target.parent, keep=target)


def prune(cache: Path, keep: Path) -> None:
    """Remove all but the :data:`KEEP` newest builds in ``cache`` (never ``keep``)."""
    builds = sorted(
        (p for p in cache.iterdir() if (p / _DONE).exists() and p != keep),
        key=lambda p: (p / _DONE).stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def environ(target: Path) -> dict[str, str]:
    """This process's environment with ``target`` first on the import path."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(target) + (os.pathsep + path if path else "")
    return env
