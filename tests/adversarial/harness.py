"""What the adversarial tests and benchmarks/hostile.py share: the attacker in its own process,
a TCP trap that counts who dials it, and watches on a network of honest nodes (their bounds,
their links).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from peer_relay import PeerRelay

HERE = Path(__file__).resolve().parent
ATTACKER = HERE / "attacker.py"
SRC = HERE.parents[1] / "src"
LOCAL: dict[str, Any] = {"port": 0, "host": "127.0.0.1"}
"""A listening node on loopback, on a free port."""


def more_open_files(wanted: int = 1 << 16) -> None:
    """Raise this process's limit of open files toward ``wanted`` (the hard limit too, where
    allowed, as for root): an attack makes a victim hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(wanted, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(limit, wanted)), limit))
            return
        except (ValueError, OSError):
            continue


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def quiet(node: PeerRelay, seconds: float) -> tuple[int, float, float]:
    """Wait until ``node`` has read no frame for ``seconds``; return its frame count, and this
    process's CPU time and the wall clock when it read the last one."""
    last = (node.stats["frames_in"], time.process_time(), time.monotonic())
    while time.monotonic() - last[2] < seconds:
        await asyncio.sleep(0.005)
        frames = node.stats["frames_in"]
        if frames != last[0]:
            last = (frames, time.process_time(), time.monotonic())
    return last


class Attacker:
    """The attacker script (``attacker.py``) running in its own process.

    Its report lines are kept in :attr:`events`; :meth:`event` waits for the next one of a kind.
    """

    def __init__(self, proc: asyncio.subprocess.Process, mode: str) -> None:
        self.proc = proc
        self.mode = mode
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._taken: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(cls, mode: str, url: str, *options: str) -> Attacker:
        """Start ``attacker.py MODE --url URL OPTIONS...`` with this interpreter."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ATTACKER),
            mode,
            "--url",
            url,
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc, mode)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line[-2000:]
            del self.stderr[:-8000]

    def _next(self, name: str) -> dict[str, Any] | None:
        seen = [e for e in self.events if e.get("event") == name]
        taken = self._taken.get(name, 0)
        if len(seen) <= taken:
            return None
        self._taken[name] = taken + 1
        return seen[taken]

    def latest(self, name: str) -> dict[str, Any] | None:
        """The last report of kind ``name`` so far, if any."""
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    async def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next report of kind ``name`` (each is returned once)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._next(name)
            if found is not None:
                return found
            if self._readers[0].done():
                raise RuntimeError(
                    f"attacker {self.mode} ended without {name!r}: "
                    f"{self.stderr.decode(errors='replace')[-2000:]}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"attacker {self.mode} sent no {name!r} in {timeout}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def command(self, line: str) -> None:
        """Send one command (``go`` or ``stop``)."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(line.encode() + b"\n")

    async def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop the attack and return its ``done`` report."""
        self.command("stop")
        done = await self.event("done", timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        return done

    async def kill(self) -> None:
        """End the process however it is (idempotent)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def attacking(mode: str, url: str, *options: str) -> AsyncIterator[Attacker]:
    """An attacker process for the block; killed on the way out, whatever happened."""
    attacker = await Attacker.start(mode, url, *options)
    try:
        yield attacker
    finally:
        await attacker.kill()


def probing(
    url: str, target: str, count: int = 20, rate: float = 5.0
) -> contextlib.AbstractAsyncContextManager[Attacker]:
    """An honest prober process (``attacker.py probe``): ``count`` findPeers to ``target`` at
    ``rate`` a second once told ``go``; its ``done`` report counts the answers. The default pace
    is within an honest sender's budget (5/s, burst 10) however the requests bunch on the way."""
    return attacking(
        "probe", url, "--target", target, "--count", str(count), "--rate", str(rate), "--wait"
    )


class Trap:
    """A TCP listener that counts the connections made to it and holds them, silent: a
    WebSocket dial to it hangs until the dialler gives up."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(1 << 16):
                pass

    async def __aenter__(self) -> Trap:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:
            writer.close()
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class BoundsWatch:
    """Samples ``bounds()`` of some nodes every ``interval`` seconds while it runs and keeps the
    largest size seen of each bound, next to its limit."""

    def __init__(self, nodes: dict[str, PeerRelay], interval: float = 0.02) -> None:
        self.nodes = nodes
        self.interval = interval
        self.peak: dict[str, tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def exceeded(self) -> dict[str, tuple[int, int]]:
        """``{node.bound: (largest size seen, limit)}`` of the bounds that were exceeded."""
        return {key: (size, limit) for key, (size, limit) in self.peak.items() if size > limit}

    def sample(self) -> None:
        for label, node in self.nodes.items():
            for name, (size, limit) in node.bounds().items():
                key = f"{label}.{name}"
                if size > self.peak.get(key, (-1, 0))[0]:
                    self.peak[key] = (size, limit)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> BoundsWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()


class LinkWatch:
    """Records every link among ``nodes`` that closes (``peer-closed``) while it is on."""

    def __init__(self, nodes: dict[str, PeerRelay]) -> None:
        self.nodes = nodes
        self.names = {node.id: label for label, node in nodes.items()}
        self.lost: list[str] = []
        self._callbacks: list[tuple[PeerRelay, Callable[..., None]]] = []

    def __enter__(self) -> LinkWatch:
        for label, node in self.nodes.items():

            def closed(peer_id: bytes, reason: str, label: str = label) -> None:
                other = self.names.get(bytes(peer_id))
                if other is not None:
                    self.lost.append(f"{label} lost {other}: {reason}")

            node.on("peer-closed", closed)
            self._callbacks.append((node, closed))
        return self

    def __exit__(self, *exc: object) -> None:
        for node, callback in self._callbacks:
            node.off("peer-closed", callback)


class Inbox:
    """The messages a node receives, with their senders."""

    def __init__(self, node: PeerRelay) -> None:
        self.got: list[tuple[Any, bytes]] = []
        node.on("message", lambda data, sender: self.got.append((data, bytes(sender))))

    def has(self, data: Any) -> bool:
        return any(got == data for got, _sender in self.got)


async def round_trip(sender: PeerRelay, receiver: Inbox, target: PeerRelay, tag: Any) -> float:
    """Send ``tag`` from ``sender`` to ``target`` (whose messages ``receiver`` keeps) and return
    the seconds it took to arrive; TimeoutError after 10 s."""
    start = time.monotonic()
    sender.send(target.id, {"honest": tag})
    await wait_until(lambda: receiver.has({"honest": tag}), 10.0, f"honest message {tag}")
    return time.monotonic() - start


def drops(node: PeerRelay, *reasons: str) -> int:
    """How many frames ``node`` dropped for any of ``reasons``."""
    dropped: dict[str, int] = node.stats["dropped"]
    return sum(dropped.get(reason, 0) for reason in reasons)


def write_frames(path: Path, batch: list[bytes | str]) -> str:
    """Write frames for ``attacker.py frames --frames-file``; return the path."""
    text = [f.decode() if isinstance(f, bytes) else f for f in batch]
    path.write_text(json.dumps(text))
    return str(path)
