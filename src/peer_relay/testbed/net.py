"""The testbed's network: hosts in network namespaces, a shaping router, NATs and coturn.

Layout (addresses are fixed by the order of the hosts):

* The "internet" is 10.77.0.0/16, carried by one forwarder process (``forwarder.py``) that owns
  a TUN device ``wan0`` in every public namespace and moves packets between them with the
  :class:`Shape`'s delay, jitter and loss, and the current partition.
* A public host is a namespace whose ``wan0`` holds its public address 10.77.x.y.
* A host behind NAT lives in its own namespace with ``eth0`` = 192.168.J.2/24 (J = 1, 2, ...
  in the order of the NAT hosts), on a veth pair to a router namespace (``lan0`` =
  192.168.J.1/24) whose ``wan0`` holds the public address; nftables masquerades what leaves
  ``wan0``. Each NAT host has a router of its own. ``"cone"``: plain masquerade (the source
  port is kept when free, so one mapping for every destination; conntrack lets in only
  replies from the endpoint the host sent to: a port-restricted cone). ``"symmetric"``:
  ``masquerade fully-random`` (a fresh random port for each new destination endpoint).
* With ``turn=True`` a namespace ``infra`` (address 10.77.0.254, :data:`INFRA_ADDRESS`) runs
  Debian's coturn on port 3478 (STUN and TURN over UDP/TCP, long-term credentials, relaying
  to 10.77.0.0/16 only).

Packets are real (the hosts' own kernel TCP/UDP stacks); only those crossing the forwarder
(host to host, host to coturn) are shaped, with a granularity of about 1 ms (a packet leaves
at its due time or up to ~1 ms later). The forwarder moves about 150,000 small packets a
second per core of CPU; a host that sends faster than it keeps up loses packets in its TUN
queue (4096 packets), counted as ``dropped_queue``.

Not modelled: IPv6 (dropped), hairpinning (a host cannot reach its own NAT's outside
address), several hosts behind one NAT, per-link shapes (one :class:`Shape` for all).

Names: every namespace is ``<id>-<host>`` (``<id>-<host>-nat`` for a router, ``<id>-infra-``
for coturn) with ``<id>`` = ``prt-`` and 6 random hex digits, recorded with the owner's pid in
``/run/peer-relay-testbed/<id>.json`` so that :func:`cleanup_stale` can tell leftovers of dead
testbeds from live ones.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

PREFIX = "prt-"
INFRA_ADDRESS = "10.77.0.254"
TURN_PORT = 3478
TURN_SERVER = "turn-server"
"""The name of the STUN/TURN server in :meth:`Testbed.partition` groups (never a host name)."""

MAX_NAT_HOSTS = 254
MAX_PUBLIC = 250 * 200  # public namespaces: 10.77.{0..199}.{1..250}

NETNS_DIR = Path("/run/netns")
OWNER_DIR = Path("/run/peer-relay-testbed")
FORWARDER = Path(__file__).with_name("forwarder.py")

_HOST_NAME = re.compile(r"[a-z0-9]{1,8}")
_TOOLS = {"ip": "iproute2", "nft": "nftables", "turnserver": "coturn"}
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_CONTROL_TIMEOUT = 10.0
_START_TIMEOUT = 15.0


class TestbedError(RuntimeError):
    """A testbed cannot be built or driven; the message is one line saying why."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class HostSpec:
    """One host: its name (``[a-z0-9]{1,8}``) and whether it sits behind a NAT, of which kind."""

    name: str
    nat: Literal["cone", "symmetric"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HOST_NAME.fullmatch(self.name):
            raise TestbedError(f"bad host name {self.name!r}: want 1 to 8 of [a-z0-9]")
        if self.nat not in (None, "cone", "symmetric"):
            raise TestbedError(
                f"bad NAT kind {self.nat!r} for host {self.name}: want 'cone', 'symmetric' or None"
            )


@dataclass(frozen=True)
class Shape:
    """What the forwarder does to each packet crossing it.

    ``delay``: seconds added one way (a round trip between two hosts gets twice this).
    ``jitter``: each packet's delay is ``delay + U(-jitter, +jitter)`` (uniform), clipped at 0;
    packets between one pair of addresses are never reordered (a packet waits for the one
    before it), so jitter shows as delay variation, not reordering.
    ``loss``: the fraction 0..1 of packets dropped (independently, seeded RNG).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay", "jitter", "loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TestbedError(f"Shape.{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise TestbedError(f"Shape.{name} must be finite and >= 0, not {value!r}")
        if self.loss > 1:
            raise TestbedError(f"Shape.loss is a fraction 0..1, not {self.loss!r}")


def _tool(name: str) -> str | None:
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=f"{path}:{_SBIN}" if path else _SBIN)


def check_requirements(*, turn: bool = False) -> None:
    """Raise :class:`TestbedError` unless this process can build a testbed (with coturn if
    ``turn``): root, ``ip``, ``nft`` (and ``turnserver``) and /dev/net/tun."""
    if os.geteuid() != 0:
        raise TestbedError(
            "the testbed needs root (network namespaces, TUN devices, nftables): run as root"
        )
    missing = [
        f"{tool} (Debian package {pkg})"
        for tool, pkg in _TOOLS.items()
        if (turn or tool != "turnserver") and _tool(tool) is None
    ]
    if missing:
        raise TestbedError(f"the testbed needs tools not found: {', '.join(missing)}")
    if not os.path.exists("/dev/net/tun"):
        raise TestbedError(
            "/dev/net/tun is missing: load the tun module or 'mknod /dev/net/tun c 10 200'"
        )


def _ip_tool() -> str:
    return _tool("ip") or "ip"


def _run_tool(argv: Sequence[str], stdin: str | None = None, timeout: float = 30) -> None:
    """Run a setup command; TestbedError with its first error line if it fails."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise TestbedError(f"{' '.join(argv[:4])} failed: {lines[0]}")


def _proc_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start_time: int | None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _pids_in(namespaces: Collection[str]) -> list[int]:
    """Processes whose network namespace is one of ``namespaces`` (by their bound inode)."""
    inodes: set[tuple[int, int]] = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(NETNS_DIR / ns)
            inodes.add((st.st_dev, st.st_ino))
    if not inodes:
        return []
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            found.append(int(entry))
    return found


def _kill(pids: Collection[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _delete_namespaces(namespaces: Collection[str]) -> int:
    """Kill every process in ``namespaces`` and delete them; how many existed."""
    existing = [ns for ns in namespaces if (NETNS_DIR / ns).exists()]
    if not existing:
        return 0
    for _ in range(3):
        pids = _pids_in(existing)
        if not pids:
            break
        _kill(pids)
        time.sleep(0.02)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [_ip_tool(), "-force", "-batch", "-"],
            input="".join(f"netns del {ns}\n" for ns in existing),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    for ns in existing:  # what ip could not delete (it was never mounted, say)
        with contextlib.suppress(OSError):
            (NETNS_DIR / ns).unlink()
    return len(existing)


def cleanup_stale(prefix: str = PREFIX) -> int:
    """Remove what dead testbeds left: namespaces named ``<prefix><6 hex>-...`` whose owner
    (recorded in /run/peer-relay-testbed) is gone, with their processes, forwarder and the
    work directory they created. Live testbeds are left alone. Returns how many namespaces
    were removed."""
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{6}")
    ids: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            m = pattern.match(name)
            if m and name[m.end() :].startswith("-"):
                ids.setdefault(m.group(), []).append(name)
    with contextlib.suppress(OSError):
        for name in os.listdir(OWNER_DIR):
            if name.endswith(".json") and pattern.fullmatch(name[:-5]):
                ids.setdefault(name[:-5], [])
    removed = 0
    for tid, namespaces in ids.items():
        owner_file = OWNER_DIR / f"{tid}.json"
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(int(owner["pid"]), owner.get("start_time")):
            continue
        if owner is not None:
            for pid, start in owner.get("helpers", []):
                if _alive(int(pid), start):
                    _kill([int(pid)])
        removed += _delete_namespaces(namespaces)
        if owner is not None and owner.get("workdir"):
            shutil.rmtree(owner["workdir"], ignore_errors=True)
        for leftover in (owner_file, OWNER_DIR / f"{tid}.json.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return removed


# Testbeds that are started and not closed: closed at exit and on SIGTERM.
_LIVE: set[Testbed] = set()
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False


def _close_all() -> None:
    with _LIVE_LOCK:
        live = [tb for tb in _LIVE if tb.owner_pid == os.getpid()]  # not a fork's parent's
    for tb in live:
        tb.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _register(tb: Testbed) -> None:
    global _HANDLERS_INSTALLED
    with _LIVE_LOCK:
        _LIVE.add(tb)
        if not _HANDLERS_INSTALLED:
            _HANDLERS_INSTALLED = True
            atexit.register(_close_all)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(tb: Testbed) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(tb)
        if (
            not _LIVE
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm
        ):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass(frozen=True)
class _Node:
    """One namespace of the layout."""

    netns: str
    public: str | None  # the wan0 address, if this namespace is on the internet
    lan: str | None = None  # a router's lan0 address / a NAT host's eth0 address
    gateway: str | None = None  # a NAT host's router (lan side)
    nat: str | None = None  # a router's kind


class Testbed:
    """N hosts in network namespaces, on a shaped "internet", some behind NATs, and coturn.

    Build it, ``start()`` it (or use ``with``), run processes in its hosts with :meth:`popen`
    and :meth:`run`, shape and partition the network while they run, ``close()`` it. Addresses,
    namespace names and TURN credentials are known from construction on. Bad specs raise
    :class:`TestbedError` here, missing requirements in :meth:`start`, before anything is
    created. Everything created is removed by :meth:`close`, which ``start`` calls itself on
    failure, ``with`` on any exception, and this module at interpreter exit and on SIGTERM
    (when SIGTERM had no handler of the program's own).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        shape: Shape = Shape(),  # frozen: one shared default is safe
        *,
        turn: bool = False,
        seed: int = 0,
        workdir: str | None = None,
    ) -> None:
        hosts = tuple(hosts)
        if not hosts:
            raise TestbedError("a testbed needs at least one host")
        for spec in hosts:
            if not isinstance(spec, HostSpec):
                raise TestbedError(f"hosts must be HostSpec, not {spec!r}")
        seen: set[str] = set()
        dups: set[str] = set()
        for spec in hosts:
            (dups if spec.name in seen else seen).add(spec.name)
        if dups:
            raise TestbedError(f"duplicate host names: {', '.join(sorted(dups))}")
        nat_hosts = [h for h in hosts if h.nat]
        if len(nat_hosts) > MAX_NAT_HOSTS:
            raise TestbedError(f"at most {MAX_NAT_HOSTS} hosts behind NAT, not {len(nat_hosts)}")
        if len(hosts) > MAX_PUBLIC:
            raise TestbedError(f"at most {MAX_PUBLIC} hosts, not {len(hosts)}")
        if not isinstance(shape, Shape):
            raise TestbedError(f"shape must be a Shape, not {shape!r}")
        self.hosts: tuple[HostSpec, ...] = hosts
        self._shape = shape
        self._turn = bool(turn)
        self._seed = int(seed)
        self._workdir_arg = workdir
        self._id = self._fresh_id()
        self._nodes: dict[str, _Node] = {}  # host name -> its namespace
        self._routers: dict[str, _Node] = {}  # host name -> its NAT router
        public_index = 0
        nat_index = 0
        for spec in hosts:
            addr = f"10.77.{public_index // 250}.{public_index % 250 + 1}"
            public_index += 1
            if spec.nat is None:
                self._nodes[spec.name] = _Node(f"{self._id}-{spec.name}", addr)
                continue
            nat_index += 1
            self._routers[spec.name] = _Node(
                f"{self._id}-{spec.name}-nat", addr, lan=f"192.168.{nat_index}.1", nat=spec.nat
            )
            self._nodes[spec.name] = _Node(
                f"{self._id}-{spec.name}",
                None,
                lan=f"192.168.{nat_index}.2",
                gateway=f"192.168.{nat_index}.1",
            )
        self._infra = _Node(f"{self._id}-infra-", INFRA_ADDRESS) if self._turn else None
        self.stun_url: str | None = None
        self.turn_url: str | None = None
        self.turn_username: str | None = None
        self.turn_credential: str | None = None
        if self._turn:
            self.stun_url = f"stun:{INFRA_ADDRESS}:{TURN_PORT}"
            self.turn_url = f"turn:{INFRA_ADDRESS}:{TURN_PORT}?transport=udp"
            self.turn_username = "peer-relay"
            self.turn_credential = secrets.token_hex(12)
        self._lock = threading.RLock()
        self._started = False
        self._closed = False
        self._workdir: Path | None = None
        self._own_workdir = False
        self._created: list[str] = []  # namespaces, in creation order
        self._forwarder: subprocess.Popen[bytes] | None = None
        self._coturn: subprocess.Popen[bytes] | None = None
        self._procs: dict[int, subprocess.Popen[Any]] = {}
        self._reply = b""
        self.owner_pid = os.getpid()
        """The process that built this testbed (a forked child does not close it at exit)."""

    @staticmethod
    def _fresh_id() -> str:
        taken: set[str] = set()
        with contextlib.suppress(OSError):
            taken = {n[: len(PREFIX) + 6] for n in os.listdir(NETNS_DIR)}
        with contextlib.suppress(OSError):
            taken |= {n[:-5] for n in os.listdir(OWNER_DIR)}
        while True:
            tid = PREFIX + secrets.token_hex(3)
            if tid not in taken:
                return tid

    # --- names and addresses ------------------------------------------------------------

    @property
    def id(self) -> str:
        """This testbed's unique prefix (``prt-`` and 6 hex digits) of all its names."""
        return self._id

    @property
    def workdir(self) -> Path | None:
        """Where coturn's config and log and the forwarder's log are (None before start)."""
        return self._workdir

    @property
    def forwarder_pid(self) -> int | None:
        """The forwarder's pid while it runs (to measure its CPU time, say), else None."""
        fwd = self._forwarder
        return fwd.pid if fwd is not None and fwd.poll() is None else None

    def _node(self, host: str) -> _Node:
        try:
            return self._nodes[host]
        except KeyError:
            raise TestbedError(f"no host named {host!r} in this testbed") from None

    def namespace(self, host: str) -> str:
        """The name of ``host``'s network namespace (for ``ip netns exec``)."""
        return self._node(host).netns

    def address(self, host: str) -> str:
        """``host``'s own IPv4 address (its private one behind a NAT)."""
        node = self._node(host)
        return node.public or node.lan or ""

    def public_address(self, host: str) -> str:
        """The address others see ``host``'s packets come from: its NAT's outside address,
        else :meth:`address`."""
        node = self._node(host)
        router = self._routers.get(host)
        return router.public if router and router.public else node.public or ""

    def namespaces(self) -> list[str]:
        """Every namespace of this testbed: hosts, NAT routers, and coturn's."""
        out = [n.netns for n in self._nodes.values()]
        out += [r.netns for r in self._routers.values()]
        if self._infra:
            out.append(self._infra.netns)
        return out

    def _public_nodes(self) -> list[_Node]:
        nodes = [n for n in self._nodes.values() if n.public]
        nodes += list(self._routers.values())
        if self._infra:
            nodes.append(self._infra)
        return nodes

    # --- life ---------------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the network (and start coturn); on any failure, remove what was built and
        raise (TestbedError for what the testbed could not do)."""
        with self._lock:
            if self._started or self._closed:
                raise TestbedError("this testbed was started already (build a new one)")
            check_requirements(turn=self._turn)
            self._started = True
            self.owner_pid = os.getpid()
            _register(self)
            try:
                self._build()
            except BaseException:
                self.close()
                raise

    def _build(self) -> None:
        if self._workdir_arg is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self._id}-"))
            self._own_workdir = True
        else:
            self._workdir = Path(self._workdir_arg)
            self._workdir.mkdir(parents=True, exist_ok=True)
        self._write_owner()
        ip = _ip_tool()
        namespaces = self.namespaces()
        taken = [ns for ns in namespaces if (NETNS_DIR / ns).exists()]
        if taken:  # not ours: never delete them
            raise TestbedError(f"namespace {taken[0]} exists already")
        self._created = list(namespaces)
        _run_tool([ip, "-batch", "-"], "".join(f"netns add {ns}\n" for ns in namespaces))
        self._start_forwarder()
        self._write_owner()
        if self._routers:
            _run_tool(
                [ip, "-batch", "-"],
                "".join(
                    f"link add lan0 netns {r.netns} type veth peer name eth0 netns "
                    f"{self._nodes[h].netns}\n"
                    for h, r in self._routers.items()
                ),
            )
        batches: list[tuple[str, str]] = []
        infra = [self._infra] if self._infra else []
        for node in [*self._nodes.values(), *self._routers.values(), *infra]:
            lines = ["link set lo up"]
            if node.public:
                lines += [
                    f"addr add {node.public}/16 dev wan0",
                    "link set wan0 txqueuelen 4096 up",
                    "route add default dev wan0",
                ]
            if node.nat:
                lines += [f"addr add {node.lan}/24 dev lan0", "link set lan0 up"]
            elif node.gateway:
                lines += [
                    f"addr add {node.lan}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {node.gateway}",
                ]
            batches.append((node.netns, "".join(line + "\n" for line in lines)))
        self._run_parallel([([ip, "-n", ns, "-batch", "-"], text) for ns, text in batches])
        nft = _tool("nft") or "nft"
        jobs = []
        for host, router in self._routers.items():
            rules = self._workdir / f"nat-{host}.nft"
            rules.write_text(_nat_rules(router.nat or "cone"))
            jobs.append(([ip, "netns", "exec", router.netns, nft, "-f", str(rules)], None))
        self._run_parallel(jobs)
        if self._infra:
            self._start_coturn(self._infra)
        self._write_owner()

    @staticmethod
    def _run_parallel(jobs: Sequence[tuple[list[str], str | None]]) -> None:
        """Run setup commands at once (2 cores: the exec and netlink work overlaps)."""
        procs = []
        try:
            for argv, text in jobs:
                p = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if text is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                procs.append((argv, p, text))
            errors = []
            for argv, p, text in procs:
                out, _ = p.communicate(text, timeout=30)
                if p.returncode != 0:
                    first = (out.strip().splitlines() or [f"exit {p.returncode}"])[0]
                    errors.append(f"{' '.join(argv[:4])} failed: {first}")
            if errors:
                raise TestbedError(errors[0])
        finally:
            for _, p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def _write_owner(self) -> None:
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        helpers = []
        for p in (self._forwarder, self._coturn):
            if p is not None:
                helpers.append([p.pid, _proc_start_time(p.pid)])
        data = {
            "pid": os.getpid(),
            "start_time": _proc_start_time(os.getpid()),
            "workdir": str(self._workdir) if self._own_workdir else None,
            "helpers": helpers,
        }
        tmp = OWNER_DIR / f"{self._id}.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(OWNER_DIR / f"{self._id}.json")

    def _start_forwarder(self) -> None:
        assert self._workdir is not None
        links = [
            {
                "netns": n.netns,
                "ifname": "wan0",
                "address": n.public,
                "forward": n.nat is not None,
            }
            for n in self._public_nodes()
        ]
        config = {"links": links, "seed": self._seed, **self._shape_dict(self._shape)}
        with open(self._workdir / "forwarder.log", "wb") as log:
            self._forwarder = subprocess.Popen(
                [sys.executable, "-I", str(FORWARDER), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        reply = self._read_reply(_START_TIMEOUT)
        if not reply.get("ready"):
            raise TestbedError(f"the forwarder did not start: {self._log_tail('forwarder.log')}")

    def _start_coturn(self, infra: _Node) -> None:
        assert self._workdir is not None
        work = self._workdir
        conf = work / "turnserver.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listening-ip={INFRA_ADDRESS}",
                    f"relay-ip={INFRA_ADDRESS}",
                    f"listening-port={TURN_PORT}",
                    "min-port=49152",
                    "max-port=65535",
                    "lt-cred-mech",
                    f"user={self.turn_username}:{self.turn_credential}",
                    "realm=testbed.peer-relay",
                    "fingerprint",
                    "no-tls",
                    "no-dtls",
                    "no-cli",
                    "no-rfc5780",
                    "no-stun-backward-compatibility",
                    "no-multicast-peers",
                    "allowed-peer-ip=10.77.0.0-10.77.255.255",
                    f"userdb={work / 'turndb'}",
                    f"pidfile={work / 'turnserver.pid'}",
                    f"log-file={work / 'turnserver.log'}",
                    "simple-log",
                    "no-stdout-log",
                    "",
                ]
            )
        )
        turnserver = _tool("turnserver") or "turnserver"
        with open(work / "turnserver.out", "wb") as out:
            self._coturn = subprocess.Popen(
                [_ip_tool(), "netns", "exec", infra.netns, turnserver, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._write_owner()
        deadline = time.monotonic() + _START_TIMEOUT
        port = f":{TURN_PORT:04X} "
        while time.monotonic() < deadline:
            if self._coturn.poll() is not None:
                raise TestbedError(
                    f"turnserver exited with {self._coturn.returncode}: "
                    f"{self._log_tail('turnserver.log') or self._log_tail('turnserver.out')}"
                )
            try:
                udp = Path(f"/proc/{self._coturn.pid}/net/udp").read_text()
            except OSError:
                udp = ""
            if port in udp:
                return
            time.sleep(0.02)
        raise TestbedError(f"turnserver did not listen on UDP {TURN_PORT} in time")

    def _log_tail(self, name: str) -> str:
        if self._workdir is None:
            return ""
        try:
            lines = (self._workdir / name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def close(self) -> None:
        """Kill every process of the testbed (process groups, SIGKILL), coturn and the
        forwarder, delete its namespaces (with their veths, TUNs and nft tables), its work
        directory if it made one, and its owner record. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            procs = list(self._procs.values())
            for p in [*procs, self._coturn, self._forwarder]:
                if p is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, signal.SIGKILL)
            for p in [*procs, self._coturn, self._forwarder]:
                if p is not None:
                    with contextlib.suppress(Exception):
                        p.wait(timeout=5)
            for p in (self._coturn, self._forwarder):  # the callers' own Popen are theirs
                for stream in (p.stdin, p.stdout, p.stderr) if p is not None else ():
                    if stream is not None:
                        with contextlib.suppress(Exception):
                            stream.close()
            self._procs.clear()
            _delete_namespaces(self._created)
            if self._own_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            with contextlib.suppress(OSError):
                (OWNER_DIR / f"{self._id}.json").unlink()
        except Exception:  # close() promises never to raise
            pass
        finally:
            _unregister(self)

    # --- processes ----------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self._started:
            raise TestbedError("the testbed is not started")
        if self._closed:
            raise TestbedError("the testbed is closed")

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (through ``ip netns exec``, so its pid is
        the process's own) in a new session and process group, with ``kwargs`` passed to
        :class:`subprocess.Popen`. :meth:`close` kills its group (SIGKILL) if still there."""
        ns = self.namespace(host)
        with self._lock:
            self._require_running()
            kwargs["start_new_session"] = True
            p: subprocess.Popen[Any] = subprocess.Popen(
                [_ip_tool(), "netns", "exec", ns, *argv], **kwargs
            )
            self._procs[p.pid] = p
            for pid in [pid for pid, q in self._procs.items() if q.poll() is not None]:
                if pid != p.pid:
                    del self._procs[pid]
            return p

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` to its end, its output captured as text (stdin is empty).
        After ``timeout`` seconds its process group is killed and TimeoutExpired raised."""
        p = self.popen(
            host,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        finally:
            with self._lock:
                self._procs.pop(p.pid, None)
        return subprocess.CompletedProcess(list(argv), p.returncode, out, err)

    # --- the network --------------------------------------------------------------------

    @staticmethod
    def _shape_dict(shape: Shape) -> dict[str, float]:
        return {"delay": shape.delay, "jitter": shape.jitter, "loss": shape.loss}

    def _read_reply(self, timeout: float) -> dict[str, Any]:
        fwd = self._forwarder
        if fwd is None or fwd.stdout is None:
            raise TestbedError("the forwarder is not running")
        fd = fwd.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._reply:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestbedError("the forwarder did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise TestbedError(
                        f"the forwarder exited: {self._log_tail('forwarder.log') or 'no log'}"
                    )
                self._reply += chunk
        line, self._reply = self._reply.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _control(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._require_running()
            fwd = self._forwarder
            if fwd is None or fwd.stdin is None:
                raise TestbedError("the forwarder is not running")
            try:
                fwd.stdin.write(json.dumps(msg).encode() + b"\n")
                fwd.stdin.flush()
            except OSError as exc:
                raise TestbedError(f"the forwarder is gone: {exc}") from exc
            reply = self._read_reply(_CONTROL_TIMEOUT)
        if not reply.get("ok"):
            raise TestbedError(f"the forwarder refused {msg.get('op')}: {reply.get('error')}")
        return reply

    def partition(self, groups: Sequence[Collection[str]]) -> None:
        """Cut the network: hosts in different groups exchange no packets (both ways), hosts
        in one group do. Hosts named in no group form one more group together. The STUN/TURN
        server is in no group, reachable by all (so TURN can still relay across the cut),
        unless :data:`TURN_SERVER` is named in a group. Replaces any earlier partition."""
        where: dict[str, int] = {}
        for i, group in enumerate(groups):
            if isinstance(group, str):
                raise TestbedError(f"a group is a collection of host names, not {group!r}")
            for name in group:
                if name == TURN_SERVER and self._infra is not None:
                    pass
                else:
                    self._node(name)
                if name in where and where[name] != i:
                    raise TestbedError(f"host {name} is in two groups")
                where[name] = i
        rest = len(groups)
        mapping: dict[str, int] = {}
        for spec in self.hosts:
            mapping[self.public_address(spec.name)] = where.get(spec.name, rest)
        if self._infra is not None and TURN_SERVER in where:
            mapping[INFRA_ADDRESS] = where[TURN_SERVER]
        self._control({"op": "partition", "groups": mapping})

    def heal(self) -> None:
        """Undo :meth:`partition`: every host reaches every other again."""
        self._control({"op": "heal"})

    def set_shape(self, shape: Shape) -> None:
        """Use ``shape`` for packets from now on (packets already held keep their time)."""
        if not isinstance(shape, Shape):
            raise TestbedError(f"shape must be a Shape, not {shape!r}")
        self._control({"op": "shape", **self._shape_dict(shape)})
        self._shape = shape

    @property
    def shape(self) -> Shape:
        """The shape in force."""
        return self._shape

    def counters(self) -> dict[str, int]:
        """The forwarder's counters since start: ``received``, ``forwarded``,
        ``bytes_forwarded``, ``dropped_loss``, ``dropped_partition``, ``dropped_no_route``
        (no host has that address), ``dropped_not_ipv4``, ``dropped_error`` (write failed),
        ``queued`` (held for their delay now) and ``dropped_queue`` (dropped by the kernel
        before the forwarder read them: a full TUN queue, i.e. the forwarder fell behind)."""
        counters: dict[str, int] = self._control({"op": "counters"})["counters"]
        return counters


def _nat_rules(kind: str) -> str:
    """The router's nftables ruleset: masquerade on wan0, forward only what the LAN began, and
    drop what the outside begins toward the router itself.

    The last rule is what makes the cone NAT a cone: without it, conntrack keeps an entry for
    a peer's first ICE check that arrives at our mapped port before our own packet left, and
    our packet is then mapped to another port (as a symmetric NAT would), so hole punching
    fails. A dropped packet's entry is never confirmed.
    """
    masq = "masquerade fully-random" if kind == "symmetric" else "masquerade"
    return f"""table ip prt_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" {masq}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state new drop
    }}
}}
"""
