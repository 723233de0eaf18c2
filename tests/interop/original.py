"""Drive real peers of the original npm package ``peer-relay@0.0.2`` from Python tests.

``ensure_original()`` installs the package (and ``@roamhq/wrtc`` for WebRTC) into
``<repo>/.cache/npm-original`` once; ``OriginalNetwork`` runs one Node process
(``driver.js``) that hosts any number of 0.0.2 peers and talks JSON lines with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER_JS = Path(__file__).resolve().with_name("driver.js")
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "npm-original"

ORIGINAL_PACKAGES: dict[str, str] = {"peer-relay": "0.0.2", "@roamhq/wrtc": "0.10.0"}
NPM_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 10.0

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class OriginalUnavailable(RuntimeError):
    """Node, npm or the original package cannot be had here (tests should skip)."""


class OriginalCrashed(AssertionError):
    """The Node process hosting the 0.0.2 peers crashed or exited."""


class DriverError(RuntimeError):
    """The driver answered a command with an error."""


# --------------------------------------------------------------------------- installation


def _installed_version(node_modules: Path, package: str) -> str | None:
    try:
        meta = json.loads((node_modules / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _is_installed(cache_dir: Path) -> bool:
    node_modules = cache_dir / "node_modules"
    stamp = cache_dir / ".installed.json"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if recorded != ORIGINAL_PACKAGES:
        return False
    return all(
        _installed_version(node_modules, name) == version
        for name, version in ORIGINAL_PACKAGES.items()
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _run_npm(npm: str, cache_dir: Path, timeout: float) -> None:
    specs = [f"{name}@{version}" for name, version in ORIGINAL_PACKAGES.items()]
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache_dir), *specs]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a timeout can kill npm and everything it spawned
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise OriginalUnavailable(
            f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise OriginalUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def ensure_original(cache_dir: Path | None = None, *, timeout: float = NPM_TIMEOUT_S) -> Path:
    """Install peer-relay@0.0.2 and @roamhq/wrtc@0.10.0 once; return their node_modules.

    Cached between runs (a stamp file records what was installed); a file lock keeps two
    processes (e.g. pytest-xdist workers) from installing at the same time. Raises
    ``OriginalUnavailable`` when node or npm is missing or the install fails.
    """
    cache_dir = (cache_dir or DEFAULT_CACHE_DIR).resolve()
    node_modules = cache_dir / "node_modules"
    if shutil.which("node") is None:
        raise OriginalUnavailable("`node` is not on PATH (Node.js 20 is needed for 0.0.2 peers)")
    if _is_installed(cache_dir):
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        raise OriginalUnavailable("`npm` is not on PATH; cannot install peer-relay@0.0.2")
    with _file_lock(cache_dir.parent / "npm-original.lock"):
        if _is_installed(cache_dir):  # another process installed it while we waited
            return node_modules
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / ".installed.json").unlink(missing_ok=True)
        _run_npm(npm, cache_dir, timeout)
        for name, version in ORIGINAL_PACKAGES.items():
            got = _installed_version(node_modules, name)
            if got != version:
                raise OriginalUnavailable(f"npm installed {name} {got!r}, expected {version}")
        (cache_dir / ".installed.json").write_text(json.dumps(ORIGINAL_PACKAGES))
    return node_modules


# --------------------------------------------------------------------------- the driver


def _hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes | bytearray) else value


@dataclass(frozen=True)
class OriginalPeer:
    """A 0.0.2 ``Client`` living in the driver process."""

    net: OriginalNetwork = field(repr=False, compare=False)
    name: str
    id: bytes
    url: str | None
    """What 0.0.2 itself advertises (``ws://localhost:PORT``) or None without a server."""
    port: int | None
    url_ipv4: str | None
    """``ws://127.0.0.1:PORT``: the same server, without resolving ``localhost``."""

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    async def send(self, to: bytes | str | OriginalPeer, data: Any) -> None:
        await self.net.send(self.name, to, data)

    async def peers(self) -> list[bytes]:
        return await self.net.peers(self.name)


@dataclass(frozen=True)
class OriginalSocket(OriginalPeer):
    """A 0.0.2 ``Socket`` (the dgram-like adapter); ``id`` is its inner Client's id."""

    dgram_port: int = 0
    """The made-up datagram port the Socket has before/without ``bind``."""


class OriginalNetwork:
    """One ``node driver.js`` process hosting many peer-relay@0.0.2 peers."""

    def __init__(self, proc: asyncio.subprocess.Process, node_modules: Path) -> None:
        self.proc = proc
        self.node_modules = node_modules
        self.events: list[Event] = []
        """Every event the driver reported, in order (consumed or not)."""
        self.crashed: Event | None = None
        """The driver's ``crash`` event, or a synthetic one if the process died."""
        self.node_version: str | None = None
        self._consumed: set[int] = set()
        self._pending: dict[int, asyncio.Future[Event]] = {}
        self._next_req = 1
        self._cond = asyncio.Condition()
        self._stderr: deque[str] = deque(maxlen=200)
        self._closing = False
        self._exited = asyncio.Event()
        self._ready: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name="original-stdout"),
            asyncio.create_task(self._read_stderr(), name="original-stderr"),
        ]

    # -- lifecycle

    @classmethod
    async def start(
        cls,
        node_modules: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        debug: str | None = None,
    ) -> OriginalNetwork:
        """Spawn the driver. ``debug`` is passed as DEBUG (e.g. ``"peer-relay:*"``, to stderr)."""
        node = shutil.which("node")
        if node is None:
            raise OriginalUnavailable("`node` is not on PATH")
        env = dict(os.environ)
        env["NODE_PATH"] = str(node_modules)
        env.pop("DEBUG", None)
        if debug:
            env["DEBUG"] = debug
        proc = await asyncio.create_subprocess_exec(
            node,
            "--no-deprecation",  # 0.0.2 calls new Buffer() everywhere
            str(DRIVER_JS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(DRIVER_JS.parent),
            limit=16 * 1024 * 1024,
        )
        net = cls(proc, node_modules)
        try:
            ready = await asyncio.wait_for(asyncio.shield(net._ready), timeout)
        except BaseException:
            await net.close(check=False)
            raise
        net.node_version = ready.get("node")
        return net

    async def close(self, *, check: bool = True, timeout: float = 5.0) -> None:
        """Destroy every peer and stop the driver. With ``check``, raise if it had crashed."""
        was_alive = self.alive
        crash = self.crashed
        self._closing = True
        if was_alive:
            with contextlib.suppress(Exception):
                await self._request({"cmd": "shutdown"}, timeout=timeout)
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, 2.0)
        if check and crash is not None:
            raise OriginalCrashed(self._crash_text(crash))

    @property
    def alive(self) -> bool:
        return self.crashed is None and self.proc.returncode is None

    def assert_alive(self) -> None:
        """Fail if 0.0.2 crashed (uncaught exception) or the Node process is gone."""
        if self.crashed is not None:
            raise OriginalCrashed(self._crash_text(self.crashed))
        if self.proc.returncode is not None and not self._closing:
            raise OriginalCrashed(f"driver exited with code {self.proc.returncode}")

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def _crash_text(self, crash: Event) -> str:
        parts = [f"peer-relay@0.0.2 driver crashed: {crash.get('error')}"]
        if crash.get("stack"):
            parts.append(str(crash["stack"]))
        tail = self.stderr_tail(15)
        if tail:
            parts.append("--- node stderr (tail) ---\n" + tail)
        return "\n".join(parts)

    # -- I/O

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    self._stderr.append("[non-JSON stdout] " + line.decode(errors="replace"))
                    continue
                if not isinstance(msg, dict):
                    continue
                await self._dispatch(msg)
        finally:
            rc = await self.proc.wait()
            if self.crashed is None and not self._closing:
                self.crashed = {
                    "event": "crash",
                    "kind": "exit",
                    "error": f"node driver exited unexpectedly with code {rc}",
                    "stack": None,
                }
            self._fail_everything()
            async with self._cond:
                self._cond.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode(errors="replace").rstrip("\n"))

    async def _dispatch(self, msg: Event) -> None:
        if "event" in msg:
            kind = msg["event"]
            if kind == "ready":
                if not self._ready.done():
                    self._ready.set_result(msg)
                return
            if kind == "crash":
                self.crashed = msg
                self._fail_everything()
            async with self._cond:
                self.events.append(msg)
                self._cond.notify_all()
            return
        req = msg.get("req")
        fut = self._pending.pop(req, None) if isinstance(req, int) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif req is None and not msg.get("ok", True):
            self._stderr.append(f"[driver error without req] {msg.get('error')}")

    def _fail_everything(self) -> None:
        crash = self.crashed
        err_text = self._crash_text(crash) if crash is not None else "driver closed"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OriginalCrashed(err_text))
        self._pending.clear()
        if not self._ready.done():
            self._ready.set_exception(OriginalCrashed(err_text))

    async def _request(self, cmd: dict[str, Any], *, timeout: float) -> Event:
        if not self.alive:
            self.assert_alive()
            raise OriginalCrashed("driver is not running")
        req = self._next_req
        self._next_req += 1
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        line = json.dumps({**cmd, "req": req}, ensure_ascii=False, allow_nan=False) + "\n"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode())
            await self.proc.stdin.drain()
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"driver did not answer {cmd.get('cmd')!r} within {timeout} s"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            self.assert_alive()
            raise
        finally:
            self._pending.pop(req, None)

    async def request(
        self, cmd: str, *, timeout: float = DEFAULT_TIMEOUT_S, **fields: Any
    ) -> Event:
        """Send one raw command; return the reply, raise ``DriverError`` on ``ok: false``."""
        reply = await self._request({"cmd": cmd, **fields}, timeout=timeout)
        if not reply.get("ok"):
            raise DriverError(f"{cmd}: {reply.get('error')}")
        return reply

    # -- peers

    async def create(
        self,
        name: str,
        *,
        port: int | None = 0,
        bootstrap: Iterable[str] = (),
        wrtc: bool = False,
        trace: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> OriginalPeer:
        """Start a 0.0.2 Client. ``port=0`` listens on a free port, ``None`` runs no server.

        ``trace`` reports every frame it sends/receives on its links as ``frame`` events.
        """
        if port not in (0, None):
            raise ValueError("use port=0 (a free port) or None; fixed ports are not allowed")
        reply = await self.request(
            "create",
            name=name,
            port=port,
            bootstrap=list(bootstrap),
            wrtc=wrtc,
            trace=trace,
            timeout=timeout,
        )
        return OriginalPeer(
            net=self,
            name=name,
            id=bytes.fromhex(reply["id"]),
            url=reply["url"],
            port=reply["port"],
            url_ipv4=reply["url_ipv4"],
        )

    async def send(self, name: str, to: bytes | str | OriginalPeer, data: Any) -> None:
        """``client.send(to, data)``: a ``user`` message with any JSON value."""
        target = to.id if isinstance(to, OriginalPeer) else to
        await self.request("send", name=name, to=_hex(target), data=data)

    async def connect(self, name: str, to: bytes | str | OriginalPeer) -> None:
        target = to.id if isinstance(to, OriginalPeer) else to
        await self.request("connect", name=name, to=_hex(target))

    async def disconnect(self, name: str, to: bytes | str | OriginalPeer) -> None:
        target = to.id if isinstance(to, OriginalPeer) else to
        await self.request("disconnect", name=name, to=_hex(target))

    async def peer_links(self, name: str) -> dict[bytes, str]:
        """Direct peers of ``name`` and their transport (``"ws"`` or ``"wrtc"``)."""
        reply = await self.request("peers", name=name)
        return {
            bytes.fromhex(h): kind
            for h, kind in zip(reply["peers"], reply["transports"], strict=True)
        }

    async def peers(self, name: str) -> list[bytes]:
        reply = await self.request("peers", name=name)
        return [bytes.fromhex(h) for h in reply["peers"]]

    async def destroy(self, name: str) -> None:
        await self.request("destroy", name=name)

    # -- the dgram-like Socket of 0.0.2

    async def socket_create(
        self,
        name: str,
        *,
        port: int | None = 0,
        bootstrap: Iterable[str] = (),
        wrtc: bool = False,
        trace: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> OriginalSocket:
        """``new Socket({port, bootstrap})``; ``port`` is the WebSocket server port (0/None)."""
        if port not in (0, None):
            raise ValueError("use port=0 (a free port) or None; fixed ports are not allowed")
        reply = await self.request(
            "socket_create",
            name=name,
            port=port,
            bootstrap=list(bootstrap),
            wrtc=wrtc,
            trace=trace,
            timeout=timeout,
        )
        return OriginalSocket(
            net=self,
            name=name,
            id=bytes.fromhex(reply["id"]),
            url=reply["url"],
            port=reply["port"],
            url_ipv4=reply["url_ipv4"],
            dgram_port=reply["dgram_port"],
        )

    async def socket_bind(
        self, name: str, port: int | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """``socket.bind(port)``; waits for 'listening' (0.0.2 needs a first peer for that).

        Returns ``socket.address()``: ``{"address": hex id, "port": N, "family": "peer-relay"}``.
        """
        start = len(self.events)
        await self.request("socket_bind", name=name, port=port)
        event = await self.next_event(
            lambda e: e.get("event") == "socket_listening" and e.get("name") == name,
            timeout=timeout,
            since=start,
        )
        address: dict[str, Any] = event["address"]
        return address

    async def socket_send(
        self,
        name: str,
        data: bytes,
        *,
        port: int,
        to: str | bytes,
        offset: int = 0,
        length: int | None = None,
    ) -> None:
        """``socket.send(buffer, offset, length, port, address)``.

        ``to`` is a peer id (bytes or hex) or ``"localhost"``/``"127.0.0.1"`` (then 0.0.2
        looks ``port`` up in its process-wide port table). 0.0.2 sends
        ``buffer.slice(offset, length)``, not ``offset + length``.
        """
        await self.request(
            "socket_send",
            name=name,
            buffer_b64=base64.b64encode(data).decode(),
            offset=offset,
            length=len(data) if length is None else length,
            port=port,
            to=_hex(to),
        )

    async def socket_address(self, name: str) -> dict[str, Any]:
        reply = await self.request("socket_address", name=name)
        address: dict[str, Any] = reply["address"]
        return address

    async def socket_close(self, name: str) -> None:
        await self.request("socket_close", name=name)

    # -- events

    async def next_event(
        self,
        predicate: Predicate,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        since: int = 0,
        consume: bool = True,
    ) -> Event:
        """Return the first not yet consumed event (index >= ``since``) matching ``predicate``.

        Events that arrived before the call count too, so there is no race with the command
        that caused them; pass ``since=len(net.events)`` to look only at later ones. Raises
        ``TimeoutError`` after ``timeout`` s and ``OriginalCrashed`` as soon as the driver dies.
        """
        found: list[Event] = []

        def check() -> bool:
            for i in range(since, len(self.events)):
                if i in self._consumed:
                    continue
                event = self.events[i]
                if predicate(event):
                    if consume:
                        self._consumed.add(i)
                    found.append(event)
                    return True
            return self.crashed is not None or self.proc.returncode is not None

        try:
            async with asyncio.timeout(timeout):
                async with self._cond:
                    await self._cond.wait_for(check)
        except TimeoutError:
            recent = [e for e in self.events[-8:] if e.get("event") != "frame"]
            raise TimeoutError(
                f"no matching event within {timeout} s; recent events: {recent}"
            ) from None
        if found:
            return found[0]
        self.assert_alive()
        raise OriginalCrashed("driver stopped while waiting for an event")

    async def wait_message(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        sender: bytes | str | OriginalPeer | None = None,
    ) -> Event:
        """Wait for a ``message`` event at peer ``name`` whose ``data`` matches ``predicate``.

        The event is ``{"event": "message", "name", "data", "from": hex}``.
        """
        want_from = None
        if sender is not None:
            want_from = _hex(sender.id if isinstance(sender, OriginalPeer) else sender)

        def match(e: Event) -> bool:
            return (
                e.get("event") == "message"
                and e.get("name") == name
                and (want_from is None or e.get("from") == want_from)
                and (predicate is None or predicate(e.get("data")))
            )

        return await self.next_event(match, timeout)

    async def wait_peer(
        self,
        name: str,
        peer: bytes | str | OriginalPeer | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Event:
        """Wait until peer ``name`` reports a new direct peer (``peer`` given: that one)."""
        want = None if peer is None else _hex(peer.id if isinstance(peer, OriginalPeer) else peer)
        return await self.next_event(
            lambda e: (
                e.get("event") == "peer"
                and e.get("name") == name
                and (want is None or e.get("id") == want)
            ),
            timeout,
        )

    async def wait_socket_message(
        self,
        name: str,
        predicate: Callable[[bytes, dict[str, Any]], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> tuple[bytes, dict[str, Any]]:
        """Wait for a datagram at Socket ``name``; returns ``(payload, rinfo)``."""

        def match(e: Event) -> bool:
            if e.get("event") != "socket_message" or e.get("name") != name:
                return False
            return predicate is None or predicate(base64.b64decode(e["buffer_b64"]), e["rinfo"])

        event = await self.next_event(match, timeout)
        return base64.b64decode(event["buffer_b64"]), event["rinfo"]

    def frames(self, name: str | None = None, dir: str | None = None) -> list[Event]:
        """Traced ``frame`` events so far (peers created with ``trace=True``)."""
        return [
            e
            for e in self.events
            if e.get("event") == "frame"
            and (name is None or e.get("name") == name)
            and (dir is None or e.get("dir") == dir)
        ]
