"""Scenarios on the testbed: real peer-relay processes on emulated hosts, joined, loaded with
traffic, churned, partitioned and healed, and measured (:class:`~.report.Report`).

:func:`run_scenario` builds a :class:`~.net.Testbed` (network namespaces, shaped links, NAT
routers, coturn), starts one agent process (:mod:`.agent`) per peer and drives them all over
their control sockets from this process. With ``Scenario.local`` it runs the same agents on
127.0.0.1 without namespaces (no shaping, NAT or partitions; no root needed), which is how the
layer is tested where namespaces are not available.

Everything it starts it stops, and everything it creates it removes, also when it fails or is
interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .net import HostSpec, Shape, Testbed, TestbedError, check_requirements
from .report import PeerSummary, PhaseCount, Report

Progress = Callable[[str], None]
NatKind = Literal["cone", "symmetric"]

RUN_PREFIX = "prt-run-"
"""Prefix of the temporary directory of each run (under the system's temporary directory)."""
PUBLIC_PORT = 7000
"""Port of the first listening peer on a public host when URLs are set explicitly."""
MB_PER_PEER = 45
MB_PER_WEBRTC_PEER = 80
"""Resident memory a peer process needs, plain and with aiortc imported (measured: ~40, ~70)."""


# ----------------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Scenario:
    """What to build and what to do on it.

    ``hosts`` emulated hosts (``h1``...), ``peers`` peer processes on each; the last ``nated``
    hosts sit behind a ``nat`` router (their peers do not listen and reach others by dialling
    out or by WebRTC). ``shape`` applies delay, jitter and loss to every host's link.
    ``turn`` runs coturn (STUN and TURN) and gives NATed peers its URLs (``stun_only``: the
    STUN URL alone). ``wrtc`` says which
    peers enable WebRTC: the NATed ones (default), all, or none.

    Phases, in order: ``messages`` between random pairs at ``rate`` per second (``steady``);
    ``busy_pairs`` pairs of NATed peers on different hosts exchange ``busy_messages`` each
    (``busy``), then up to ``upgrade_wait`` s for direct links while traffic goes on; ``churn``
    processes SIGKILLed, restarted after ``churn_down`` s with the same key (``churn``);
    ``partition`` (groups of host names) for ``partition_time`` s with traffic within each
    group (``partition``), then healed and, after ``heal_settle`` s, traffic between all
    (``heal``). Each traffic phase sends ``messages`` messages (``mode``: ``send`` or
    ``deliver``); the later phases send ``phase_messages`` (default: ``messages``).
    """

    hosts: int = 3
    peers: int = 8
    nat: NatKind | None = None
    nated: int = 0
    shape: Shape = field(default_factory=Shape)
    turn: bool = False
    stun_only: bool = False
    wrtc: Literal["nat", "all", "none"] = "nat"
    messages: int = 200
    phase_messages: int | None = None
    rate: float = 50.0
    mode: Literal["send", "deliver"] = "send"
    deliver_timeout: float = 10.0
    busy_pairs: int = 0
    busy_messages: int = 80
    upgrade_wait: float = 20.0
    churn: int = 0
    churn_down: float = 3.0
    partition: tuple[tuple[str, ...], ...] = ()
    partition_time: float = 5.0
    heal_settle: float = 10.0
    settle: float = 3.0
    join_timeout: float = 60.0
    grace: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    local: bool = False

    def host_names(self) -> list[str]:
        """The hosts' names, ``h1`` to ``hN``."""
        return [f"h{i + 1}" for i in range(self.hosts)]

    def nat_of(self, host: str) -> NatKind | None:
        """The NAT kind ``host`` sits behind, None for a public host."""
        index = int(host[1:]) - 1
        return self.nat if index >= self.hosts - self.nated else None

    def public_hosts(self) -> list[str]:
        """Hosts not behind NAT."""
        return [h for h in self.host_names() if self.nat_of(h) is None]

    def to_dict(self) -> dict[str, Any]:
        """The scenario as plain JSON values."""
        out = asdict(self)
        out["partition"] = [list(g) for g in self.partition]
        return out

    def validate(self) -> None:
        """Refuse a scenario that cannot run, before anything is created: a
        :class:`TestbedError` whose message is one line saying why."""
        if self.hosts < 1:
            _impossible(f"hosts must be at least 1, got {self.hosts}")
        if self.peers < 1:
            _impossible(f"peers per host must be at least 1, got {self.peers}")
        if self.hosts * self.peers < 2:
            _impossible("one peer alone has nobody to send to: give 2 peers at least")
        if self.nat not in (None, "cone", "symmetric"):
            _impossible(f"NAT kind must be cone or symmetric, got {self.nat!r}")
        if self.nat is None and self.nated:
            _impossible(f"{self.nated} NATed hosts but no NAT kind")
        if not 0 <= self.nated < self.hosts:
            _impossible(
                f"{self.nated} of {self.hosts} hosts behind NAT: at least one host must be "
                "public (NATed peers join by dialling a public one)"
            )
        shape = self.shape
        for name, value in (("delay", shape.delay), ("jitter", shape.jitter)):
            if not (0 <= value <= 10):
                _impossible(f"{name} must be within 0..10 s, got {value:g} s")
        if not 0 <= shape.loss < 1:
            _impossible(f"loss must be within 0..100% (not 100%), got {shape.loss * 100:g}%")
        if self.messages < 0 or (self.phase_messages or 0) < 0:
            _impossible("the number of messages cannot be negative")
        if not self.rate > 0:
            _impossible(f"rate must be positive, got {self.rate:g}")
        if self.mode not in ("send", "deliver"):
            _impossible(f"mode must be send or deliver, got {self.mode!r}")
        if self.wrtc not in ("nat", "all", "none"):
            _impossible(f"wrtc must be nat, all or none, got {self.wrtc!r}")
        if self.busy_pairs < 0 or self.churn < 0:
            _impossible("busy pairs and churn cannot be negative")
        if self.busy_pairs:
            if self.nated < 2:
                _impossible(
                    f"{self.busy_pairs} busy NATed pairs need NATed peers on 2 hosts at least "
                    f"({self.nated} NATed hosts)"
                )
            if self.wrtc == "none":
                _impossible("busy pairs measure direct WebRTC links, but WebRTC is off")
            most = (self.peers * self.nated) // 2
            if self.busy_pairs > most:
                _impossible(
                    f"{self.busy_pairs} busy pairs, but {self.nated} NATed hosts x "
                    f"{self.peers} peers make at most {most} pairs with no peer in two"
                )
        churnable = self.hosts * self.peers - len(self.public_hosts())
        if self.churn > churnable:
            _impossible(
                f"churn of {self.churn} processes, but only {churnable} are not seed relays"
            )
        if self.partition:
            self._validate_partition()
        if self.local:
            if shape.delay or shape.jitter or shape.loss:
                _impossible("delay, jitter and loss need network namespaces (not --local)")
            if self.partition:
                _impossible("a partition needs network namespaces (not --local)")
            if self.turn:
                _impossible("a TURN server needs network namespaces (not --local)")
        if self.stun_only and not self.turn:
            _impossible("STUN only needs the STUN/TURN server (turn)")
        for name, value in (
            ("churn_down", self.churn_down),
            ("partition_time", self.partition_time),
            ("settle", self.settle),
            ("heal_settle", self.heal_settle),
            ("grace", self.grace),
            ("upgrade_wait", self.upgrade_wait),
        ):
            if value < 0:
                _impossible(f"{name} cannot be negative")
        if not self.join_timeout > 0 or not self.deliver_timeout > 0:
            _impossible("timeouts must be positive")
        needed = self._memory_mb()
        available = _available_mb()
        if available is not None and needed > 0.8 * available:
            _impossible(
                f"{self.hosts * self.peers} peer processes need ~{needed} MB, "
                f"but {available} MB are available"
            )

    def _validate_partition(self) -> None:
        names = set(self.host_names())
        seen: set[str] = set()
        if len(self.partition) < 2:
            _impossible("a partition needs 2 groups at least")
        for group in self.partition:
            if not group:
                _impossible("a partition group cannot be empty")
            for host in group:
                if host not in names:
                    _impossible(f"partition names host {host!r}; hosts are h1..h{self.hosts}")
                if host in seen:
                    _impossible(f"host {host} is in two partition groups")
                seen.add(host)
            if all(self.nat_of(h) is not None for h in group):
                _impossible(
                    f"partition group {','.join(group)} has no public host: its NATed "
                    "peers would have nobody to reach"
                )

    def _memory_mb(self) -> int:
        total = 0
        for host in self.host_names():
            heavy = self.wrtc == "all" or (self.wrtc == "nat" and self.nat_of(host) is not None)
            total += self.peers * (MB_PER_WEBRTC_PEER if heavy else MB_PER_PEER)
        return total


def halves(scenario: Scenario) -> tuple[tuple[str, ...], ...]:
    """Two partition groups of the scenario's hosts, each with a public host (the default of
    ``--partition``); raises :class:`TestbedError` with fewer than 2 public hosts."""
    public = scenario.public_hosts()
    if len(public) < 2:
        _impossible(
            f"a partition needs 2 public hosts (one per side), this scenario has {len(public)}"
        )
    nated = [h for h in scenario.host_names() if h not in public]
    first = tuple(public[0::2] + nated[0::2])
    second = tuple(public[1::2] + nated[1::2])
    return (first, second)


def _impossible(why: str) -> Any:
    raise TestbedError(f"impossible scenario: {why}")


def _available_mb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- launchers


class Launcher(Protocol):
    """Runs a command on an emulated host: the :class:`~.net.Testbed`, or
    :class:`LocalLauncher` (every host is this machine)."""

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]: ...

    def address(self, host: str) -> str: ...


class LocalLauncher:
    """Every host is 127.0.0.1 in this namespace: each command in its own process group,
    all killed on :meth:`close`."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in a new session (so that its whole group can be killed)."""
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def address(self, host: str) -> str:
        """127.0.0.1, for every host."""
        return "127.0.0.1"

    def close(self) -> None:
        """Kill every process group started here and reap them; idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()


# ----------------------------------------------------------------------------- agents


class AgentGone(ConnectionError):
    """The agent's control connection closed (it was killed or it quit)."""


class AgentClient:
    """The driver's end of one agent's control socket: requests with answers, and message
    events handed to a callback."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = itertools.count(1)
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, path: str, on_event: Callable[[dict[str, Any]], None]) -> AgentClient:
        """Open the agent's control socket."""
        reader, writer = await asyncio.open_unix_connection(path, limit=16 << 20)
        return cls(reader, writer, on_event)

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if "event" in msg:
                    self._on_event(msg)
                    continue
                fut = self._waiting.pop(msg.get("req"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ConnectionError, ValueError):
            pass
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(AgentGone("the agent's control connection closed"))
            self._waiting.clear()

    async def call(self, op: str, wait: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one request; its answer (``ok`` true), else raise :class:`AgentGone` or
        :class:`TestbedError` with the agent's error."""
        if self._task.done():
            raise AgentGone("the agent's control connection is closed")
        req = next(self._next)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        try:
            self._writer.write(json.dumps({"op": op, "req": req, **args}).encode() + b"\n")
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.pop(req, None)
            raise AgentGone(str(exc)) from None
        try:
            answer = await asyncio.wait_for(fut, wait)
        finally:
            self._waiting.pop(req, None)
        if not answer.get("ok"):
            raise TestbedError(f"agent refused {op}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        """Close the connection (the agent goes on)."""
        self._task.cancel()
        self._writer.close()


@dataclass
class Peer:
    """One peer process of the scenario, as the driver knows it."""

    name: str
    host: str
    nat: NatKind | None
    listen: bool
    seed: bool
    control: str
    identity: str
    log: str
    options: dict[str, Any]
    bootstrap: list[str] = field(default_factory=list)
    port: int | None = None
    proc: subprocess.Popen[Any] | None = None
    client: AgentClient | None = None
    id: str = ""
    url: str | None = None
    up: bool = False
    restarts: int = 0
    status: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The agent's command line."""
        argv = [
            sys.executable,
            "-m",
            "peer_relay.testbed.agent",
            "--control",
            self.control,
            "--identity",
            self.identity,
            "--options",
            json.dumps(self.options),
            "--exit-with-parent",
        ]
        if self.listen:
            argv += ["--port", str(self.port if self.port is not None else 0)]
        for url in self.bootstrap:
            argv += ["--bootstrap", url]
        return argv


@dataclass
class Record:
    """One message: who sent it to whom in which phase, and what became of it."""

    seq: int
    phase: str
    src: str
    dst: str
    sent: float | None = None
    received: float | None = None
    hops: int | None = None
    confirmed: bool | None = None
    error: str | None = None
    restarted: bool = False
    """The destination had been restarted (killed and started again) when this was sent."""


# ----------------------------------------------------------------------------- the run


def run_scenario(scenario: Scenario, *, progress: Progress | None = None) -> Report:
    """Run ``scenario`` and return its :class:`Report`.

    Raises :class:`TestbedError` (one line) when the scenario is impossible, a requirement is
    missing (before anything is created), or the run fails (peers that do not join, say).
    Whatever it created is gone when it returns or raises, KeyboardInterrupt included.
    """
    scenario.validate()
    say = progress or (lambda text: None)
    if not scenario.local:
        check_requirements(turn=scenario.turn)
    workdir = tempfile.mkdtemp(prefix=RUN_PREFIX)
    Path(workdir, "driver.pid").write_text(f"{os.getpid()}\n")
    launcher: LocalLauncher | Testbed | None = None
    driver: Driver | None = None
    try:
        started = time.monotonic()
        if scenario.local:
            launcher = LocalLauncher()
        else:
            hosts = [HostSpec(h, scenario.nat_of(h)) for h in scenario.host_names()]
            say(f"building {len(hosts)} hosts")
            launcher = Testbed(hosts, scenario.shape, turn=scenario.turn, seed=scenario.seed)
            launcher.start()
        driver = Driver(scenario, launcher, workdir, say)
        report = asyncio.run(driver.run())
        report.build = driver.started - started
        return report
    finally:
        if driver is not None:
            driver.kill_all()
        if launcher is not None:
            launcher.close()
        shutil.rmtree(workdir, ignore_errors=True)


class Driver:
    """Carries out one scenario on a launcher (see :func:`run_scenario`)."""

    def __init__(
        self,
        scenario: Scenario,
        launcher: LocalLauncher | Testbed,
        workdir: str,
        say: Progress,
    ) -> None:
        self.sc = scenario
        self.launcher = launcher
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(scenario.seed)
        self.peers: list[Peer] = []
        self.by_id: dict[str, Peer] = {}
        self.records: dict[int, Record] = {}
        self.seq = itertools.count(1)
        self.notes: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.explicit_urls = False
        self.ice: dict[str, int] = {}
        self.started = time.monotonic()

    # ------------------------------------------------------------------ the whole run

    async def run(self) -> Report:
        """Start, join, run every phase, collect; agents are stopped whatever happens."""
        started = self.started = time.monotonic()
        try:
            await self.start_all()
            startup = time.monotonic() - started
            await self.wait_joined()
            await self.settle(self.sc.settle)
            await self.traffic("steady", self.sc.messages)
            if self.sc.busy_pairs:
                pairs = await self.busy()
            else:
                pairs = []
            if self.sc.churn:
                await self.churn()
            if self.sc.partition:
                await self.partition()
            await self.collect()
            phases = self.phase_counts()
            return self.report(phases, pairs, time.monotonic() - started, startup)
        finally:
            await self.stop_all()

    # ------------------------------------------------------------------ processes

    def plan(self) -> None:
        """Decide every peer: its host, whether it listens, its options and control paths."""
        sc = self.sc
        ice: list[str] = []
        if sc.turn and isinstance(self.launcher, Testbed):
            urls = [self.launcher.stun_url] + ([] if sc.stun_only else [self.launcher.turn_url])
            ice = [u for u in urls if u]
        for host in sc.host_names():
            nat = sc.nat_of(host)
            for i in range(sc.peers):
                name = f"{host}p{i + 1}"
                wrtc = sc.wrtc == "all" or (sc.wrtc == "nat" and nat is not None)
                options: dict[str, Any] = dict(sc.options)
                if wrtc:
                    options["wrtc"] = True
                    if ice:
                        options["ice_servers"] = ice
                        if not sc.stun_only:
                            options.update(self.turn_credentials())
                self.peers.append(
                    Peer(
                        name=name,
                        host=host,
                        nat=nat,
                        listen=nat is None,
                        seed=nat is None and i == 0,
                        control=os.path.join(self.workdir, f"{name}.sock"),
                        identity=os.path.join(self.workdir, f"{name}.key"),
                        log=os.path.join(self.workdir, f"{name}.log"),
                        options=options,
                    )
                )

    def turn_credentials(self) -> dict[str, Any]:
        """The TURN username and credential as peer options, where the testbed has them."""
        tb = self.launcher
        if not isinstance(tb, Testbed) or tb.turn_username is None:
            return {}
        return {"ice_username": tb.turn_username, "ice_credential": tb.turn_credential}

    async def start_all(self) -> None:
        """Start the seed relays, then every other peer (bootstrapping to the seeds)."""
        self.plan()
        seeds = [p for p in self.peers if p.seed]
        self.say(f"starting {len(seeds)} seed relays")
        first = seeds[0]
        await self.start(first)
        if not self.sc.local and not self.url_reachable(first):
            # The library advertised an address others cannot dial (loopback): set it.
            self.notes.append(
                f"seed {first.name} advertised {first.url}; public URLs were set explicitly"
            )
            self.explicit_urls = True
            await self.kill(first)
            await self.start(first)
        for p in seeds[1:]:
            p.bootstrap = [first.url] if first.url else []
        await asyncio.gather(*(self.start(p) for p in seeds[1:]))
        urls = [p.url for p in seeds if p.url]
        for p in self.peers:
            if not p.seed:
                p.bootstrap = list(urls)
        others = [p for p in self.peers if not p.seed]
        self.say(f"starting {len(others)} peers")
        limit = asyncio.Semaphore(4)

        async def one(peer: Peer) -> None:
            async with limit:
                await self.start(peer)

        await asyncio.gather(*(one(p) for p in others))

    def url_reachable(self, peer: Peer) -> bool:
        """Whether the URL the peer advertises names its host's address."""
        address = self.launcher.address(peer.host)
        return peer.url is not None and f"//{address}:" in peer.url

    async def start(self, peer: Peer, timeout: float = 30.0) -> None:
        """Start one agent, wait for its control socket, subscribe to its messages."""
        if peer.listen:
            index = int(peer.name.rsplit("p", 1)[1]) - 1
            if self.explicit_urls:
                peer.port = PUBLIC_PORT + index
                address = self.launcher.address(peer.host)
                peer.options["public_url"] = f"ws://{address}:{peer.port}"
            else:
                peer.port = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(peer.control)
        log = open(peer.log, "ab")  # noqa: SIM115 (closed below; the child holds its copy)
        try:
            peer.proc = self.launcher.popen(
                peer.host,
                peer.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_agent_env(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if peer.proc.poll() is not None:
                raise TestbedError(
                    f"peer {peer.name} exited with status {peer.proc.returncode} at start: "
                    f"{_last_line(peer.log)}"
                )
            if os.path.exists(peer.control):
                try:
                    peer.client = await AgentClient.connect(peer.control, self.on_event)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TestbedError(f"peer {peer.name} did not start within {timeout:g}s")
            await asyncio.sleep(0.05)
        await peer.client.call("subscribe")
        status = await peer.client.call("status")
        peer.id, peer.url, peer.up = status["id"], status["url"], True
        peer.status = status
        self.by_id[peer.id] = peer

    async def kill(self, peer: Peer) -> None:
        """SIGKILL one agent and forget its connection."""
        peer.up = False
        if peer.client is not None:
            peer.client.close()
            peer.client = None
        if peer.proc is not None and peer.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                peer.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(peer.proc.wait, 10)

    async def stop_all(self) -> None:
        """Ask every agent to quit, then kill those that did not within a few seconds."""
        for task in self.tasks:
            task.cancel()

        async def quit_one(peer: Peer) -> None:
            if peer.client is not None:
                with contextlib.suppress(AgentGone, TestbedError, TimeoutError, OSError):
                    await peer.client.call("quit", wait=2)
                peer.client.close()
                peer.client = None

        await asyncio.gather(*(quit_one(p) for p in self.peers), return_exceptions=True)
        deadline = time.monotonic() + 5
        for peer in self.peers:
            while peer.proc is not None and peer.proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every agent still running and reap it (safe to call again)."""
        for peer in self.peers:
            proc = peer.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    # ------------------------------------------------------------------ joining

    async def statuses(self, peers: Sequence[Peer] | None = None) -> None:
        """Refresh the status of the given (default: every live) peers."""

        async def one(peer: Peer) -> None:
            if peer.client is not None and peer.up:
                with contextlib.suppress(AgentGone, TestbedError, TimeoutError):
                    peer.status = await peer.client.call("status", wait=10)

        await asyncio.gather(*(one(p) for p in (peers or self.peers)))

    async def wait_joined(self, peers: Sequence[Peer] | None = None) -> None:
        """Wait until every given peer has an open link, else fail naming those without."""
        peers = list(peers or self.peers)
        self.say(f"waiting for {len(peers)} peers to join")
        deadline = time.monotonic() + self.sc.join_timeout
        while True:
            await self.statuses(peers)
            lonely = [p for p in peers if not p.status.get("peers")]
            if not lonely:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in lonely)
                raise TestbedError(
                    f"{len(lonely)} of {len(peers)} peers did not join within "
                    f"{self.sc.join_timeout:g}s: {names}"
                )
            await asyncio.sleep(0.3)

    async def settle(self, most: float) -> None:
        """Wait until no link opened or closed anywhere for a second, at most ``most`` s."""
        deadline = time.monotonic() + most
        last = -1
        while time.monotonic() < deadline:
            await self.statuses()
            churn = sum(
                p.status.get("stats", {}).get("links_opened", 0)
                + p.status.get("stats", {}).get("links_closed", 0)
                for p in self.peers
            )
            if churn == last:
                return
            last = churn
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ traffic

    def on_event(self, event: dict[str, Any]) -> None:
        """A message arrived at an agent: fill in its record."""
        seq = event.get("seq")
        record = self.records.get(seq) if isinstance(seq, int) else None
        if record is None or record.received is not None:
            return
        record.received = float(event["received"])
        record.hops = int(event["hops"])
        if record.sent is None and isinstance(event.get("sent"), int | float):
            record.sent = float(event["sent"])

    async def send_one(self, phase: str, src: Peer, dst: Peer) -> None:
        """Have ``src`` send (or deliver) one message to ``dst``, and record it."""
        seq = next(self.seq)
        record = Record(seq, phase, src.name, dst.name, restarted=dst.restarts > 0)
        self.records[seq] = record
        client = src.client
        if client is None:
            record.error = "sender down"
            return
        try:
            answer = await client.call(
                "send",
                wait=self.sc.deliver_timeout + 10,
                to=dst.id,
                seq=seq,
                mode=self.sc.mode,
                data={"phase": phase},
                **({"timeout": self.sc.deliver_timeout} if self.sc.mode == "deliver" else {}),
            )
        except (AgentGone, TestbedError, TimeoutError) as exc:
            record.error = str(exc) or type(exc).__name__
            return
        if record.sent is None:
            record.sent = float(answer["sent"])
        if self.sc.mode == "deliver":
            record.confirmed = bool(answer.get("delivered"))
            if not record.confirmed:
                record.error = str(answer.get("error"))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task tracked until it ends (cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def traffic(
        self,
        phase: str,
        count: int,
        pairs: Callable[[], tuple[Peer, Peer] | None] | None = None,
        duration: float | None = None,
        quiet: bool = False,
    ) -> None:
        """Send ``count`` messages at the scenario's rate (or spread over ``duration`` s)
        between pairs from ``pairs()`` (default: two distinct live peers at random), then
        wait for the phase's messages to be accounted for."""
        if count <= 0:
            return
        if not quiet:
            self.say(f"{phase}: {count} messages ({self.sc.mode})")
        pick = pairs or self.random_pair
        interval = (duration / count) if duration else 1.0 / self.sc.rate
        start = time.monotonic()
        tasks = []
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pair = pick()
            if pair is None:
                continue
            tasks.append(self.spawn(self.send_one(phase, *pair)))
        await self.drain(phase, tasks)

    async def drain(self, phase: str, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """Wait until every message of ``phase`` arrived, or ``grace`` s after the last
        answer came back."""
        if tasks:
            await asyncio.wait(tasks)
        deadline = time.monotonic() + self.sc.grace
        while time.monotonic() < deadline:
            if all(
                r.received is not None or r.error is not None
                for r in self.records.values()
                if r.phase == phase
            ):
                return
            await asyncio.sleep(0.05)

    def live(self) -> list[Peer]:
        """Peers whose process runs and answers."""
        return [p for p in self.peers if p.up and p.client is not None]

    def random_pair(self) -> tuple[Peer, Peer] | None:
        """Two distinct live peers at random."""
        live = self.live()
        if len(live) < 2:
            return None
        src, dst = self.rng.sample(live, 2)
        return src, dst

    # ------------------------------------------------------------------ phases

    def busy_pairs(self) -> list[tuple[Peer, Peer]]:
        """Disjoint pairs of NATed peers on different hosts."""
        by_host: dict[str, list[Peer]] = {}
        for p in self.peers:
            if p.nat is not None:
                by_host.setdefault(p.host, []).append(p)
        for members in by_host.values():
            self.rng.shuffle(members)
        pairs: list[tuple[Peer, Peer]] = []
        while len(pairs) < self.sc.busy_pairs:
            hosts = sorted((h for h in by_host if by_host[h]), key=lambda h: -len(by_host[h]))
            if len(hosts) < 2:
                break
            pairs.append((by_host[hosts[0]].pop(), by_host[hosts[1]].pop()))
        return pairs

    async def busy(self) -> list[tuple[Peer, Peer]]:
        """Busy NATed pairs exchange messages, then wait for direct links while messages go
        on; returns the pairs."""
        pairs = self.busy_pairs()
        self.say(f"busy: {len(pairs)} NATed pairs, {self.sc.busy_messages} messages each")
        turn = itertools.cycle([(a, b) for a, b in pairs] + [(b, a) for a, b in pairs])
        count = self.sc.busy_messages * len(pairs)
        await self.traffic("busy", count, lambda: next(turn))
        self.say(f"busy: up to {self.sc.upgrade_wait:g}s for direct links, traffic going on")
        deadline = time.monotonic() + self.sc.upgrade_wait
        while time.monotonic() < deadline:
            await self.statuses([p for pair in pairs for p in pair])
            if all(self.transport(a, b) == "webrtc" for a, b in pairs):
                break
            # Traffic goes on while links are upgraded: none of it may be lost.
            await self.traffic("busy", 2 * len(pairs), lambda: next(turn), duration=1.0, quiet=True)
        return pairs

    def transport(self, a: Peer, b: Peer) -> str | None:
        """The transport of the open link between ``a`` and ``b`` as ``a`` sees it."""
        peers = a.status.get("peers", {})
        value = peers.get(b.id) if isinstance(peers, dict) else None
        return value if isinstance(value, str) else None

    async def churn(self) -> None:
        """SIGKILL ``churn`` non-seed peers, send among the living, restart them with the
        same keys, wait for them to rejoin, and send on."""
        sc = self.sc
        victims = self.rng.sample([p for p in self.peers if not p.seed], sc.churn)
        self.say(f"churn: killing {len(victims)} peers")
        count = sc.phase_messages if sc.phase_messages is not None else sc.messages
        for peer in victims:
            await self.kill(peer)
        sending = self.spawn(self.traffic("churn", count // 2, duration=sc.churn_down))
        await asyncio.sleep(sc.churn_down)
        await sending
        self.say(f"churn: restarting {len(victims)} peers")
        for peer in victims:
            peer.restarts += 1
        await asyncio.gather(*(self.start(p) for p in victims))
        await self.wait_joined(victims)
        await self.traffic("churn", count - count // 2)

    async def partition(self) -> None:
        """Cut the hosts into the scenario's groups, send within groups, heal, send across."""
        sc = self.sc
        assert isinstance(self.launcher, Testbed)
        count = sc.phase_messages if sc.phase_messages is not None else sc.messages
        groups = sc.partition
        group_of = {h: i for i, g in enumerate(groups) for h in g}
        self.say(f"partition: {' | '.join(','.join(g) for g in groups)}")
        await asyncio.to_thread(self.launcher.partition, [set(g) for g in groups])

        def within() -> tuple[Peer, Peer] | None:
            live = self.live()
            src = self.rng.choice(live)
            mates = [
                p for p in live if p is not src and group_of.get(p.host) == group_of.get(src.host)
            ]
            return (src, self.rng.choice(mates)) if mates else None

        await self.traffic("partition", count, within, duration=sc.partition_time)
        self.say("heal")
        await asyncio.to_thread(self.launcher.heal)
        await asyncio.sleep(sc.heal_settle)
        await self.traffic("heal", count)

    # ------------------------------------------------------------------ the report

    async def collect(self) -> None:
        """Read every live agent's final status, and the ICE pairs of NATed WebRTC peers."""
        await self.statuses()

        async def one(peer: Peer) -> None:
            if peer.client is None or not peer.options.get("wrtc") or peer.nat is None:
                return
            with contextlib.suppress(AgentGone, TestbedError, TimeoutError):
                answer = await peer.client.call("ice", wait=10)
                for pair in answer["pairs"]:
                    key = f"{pair['local']}/{pair['remote']}"
                    self.ice[key] = self.ice.get(key, 0) + 1

        await asyncio.gather(*(one(p) for p in self.peers))

    def phase_counts(self) -> dict[str, PhaseCount]:
        """Sent, delivered and confirmed messages by phase."""
        out: dict[str, PhaseCount] = {}
        for r in self.records.values():
            count = out.setdefault(r.phase, PhaseCount())
            count.sent += 1
            if r.received is not None:
                count.delivered += 1
            if self.sc.mode == "deliver":
                count.confirmed = (count.confirmed or 0) + (1 if r.confirmed else 0)
        return out

    def report(
        self,
        phases: dict[str, PhaseCount],
        pairs: list[tuple[Peer, Peer]],
        duration: float,
        startup: float,
    ) -> Report:
        """The report of this run."""
        delivered = [r for r in self.records.values() if r.received is not None]
        hops = [r.hops for r in delivered if r.hops is not None]
        latencies = [r.received - r.sent for r in delivered if r.received and r.sent]
        transports: dict[str, int] = {}
        seen: set[frozenset[str]] = set()
        summaries: list[PeerSummary] = []
        for p in self.peers:
            links = p.status.get("peers", {}) if p.up else {}
            mine: dict[str, int] = {}
            for other, transport in links.items():
                mine[str(transport)] = mine.get(str(transport), 0) + 1
                key = frozenset((p.id, other))
                if key not in seen:
                    seen.add(key)
                    transports[str(transport)] = transports.get(str(transport), 0) + 1
            names = {o: (self.by_id[o].name if o in self.by_id else o) for o in links}
            summaries.append(
                PeerSummary(
                    name=p.name,
                    host=p.host,
                    nat=p.nat,
                    id=p.id,
                    links=len(links),
                    transports=mine,
                    rss_kb=int(p.status.get("rss_kb", 0)) if p.up else 0,
                    restarts=p.restarts,
                    links_to={names[o]: str(t) for o, t in links.items()},
                )
            )
        busy: dict[str, int] = {}
        direct = 0
        for a, b in pairs:
            kind = self.transport(a, b) or self.transport(b, a) or "relayed"
            busy[kind] = busy.get(kind, 0) + 1
            direct += kind == "webrtc"
        counters: dict[str, int] = {}
        if isinstance(self.launcher, Testbed):
            with contextlib.suppress(TestbedError, OSError):
                counters = dict(self.launcher.counters())
        errors = [r.error for r in self.records.values() if r.error and r.received is None]
        notes = list(self.notes)
        if errors:
            common = max(set(errors), key=errors.count)
            notes.append(f"{len(errors)} messages failed; most often: {common[:160]}")
        if self.sc.local:
            notes.append("local mode: every peer on 127.0.0.1, no shaping and no NAT")
        lost: list[dict[str, Any]] = []
        per_phase: dict[str, int] = {}
        for r in self.records.values():
            if r.received is None and per_phase.get(r.phase, 0) < 20:
                per_phase[r.phase] = per_phase.get(r.phase, 0) + 1
                lost.append(
                    {
                        "phase": r.phase,
                        "seq": r.seq,
                        "src": r.src,
                        "dst": r.dst,
                        "error": r.error,
                        "dst_restarted": r.restarted,
                    }
                )
        missing = [r for r in self.records.values() if r.received is None]
        to_restarted = sum(r.restarted for r in missing)
        if to_restarted:
            notes.append(
                f"{to_restarted} of {len(missing)} messages not delivered were sent to peers "
                "restarted earlier in the run"
            )
        return Report(
            scenario=self.sc.to_dict(),
            mode=self.sc.mode,
            phases=phases,
            hops=hops,
            latencies=latencies,
            busy_pairs=len(pairs),
            direct_pairs=direct,
            busy_transports=busy,
            transports=transports,
            peers=summaries,
            counters=counters,
            duration=duration,
            startup=startup,
            notes=notes,
            lost=lost,
            ice=dict(self.ice),
            testbed_id=self.launcher.id if isinstance(self.launcher, Testbed) else None,
            workdir=self.workdir,
        )


def cleanup_runs() -> int:
    """Remove the run directories (sockets, keys, logs) of drivers that died without doing
    it themselves; returns how many. Their agents exit on their own when their driver dies."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(RUN_PREFIX + "*"):
        try:
            pid = int((path / "driver.pid").read_text())
        except (OSError, ValueError):
            # Being created, or left by a driver killed at once: gone after an hour.
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 3600:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _agent_env() -> dict[str, str]:
    """The agents' environment: this one, with this package importable as it is here."""
    src = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def _last_line(path: str) -> str:
    """The last non-empty line of a log file (why a process failed)."""
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        lines = [line.strip() for line in log if line.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"
