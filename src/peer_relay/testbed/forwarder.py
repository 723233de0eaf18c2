"""The testbed's "internet": one process that moves IPv4 packets between TUN devices.

Started by :class:`peer_relay.testbed.net.Testbed` as ``python -I forwarder.py CONFIG`` (a
plain script: it imports nothing of peer_relay, so it starts in milliseconds). CONFIG is JSON::

    {"links": [{"netns": "prt-abc123-h1", "ifname": "wan0", "address": "10.77.0.1",
                "forward": false}, ...],
     "seed": 0, "delay": 0.0, "jitter": 0.0, "loss": 0.0}

For each link it enters the namespace (``setns``), creates the TUN device ``ifname`` there
(IFF_TUN, no packet information), turns IPv6 off on it (so that no router solicitations wander
in) and, when ``forward`` is true (a NAT router), sets ``net.ipv4.ip_forward=1``. It then
returns to its own namespace and prints ``{"ready": true}``; the harness gives the devices
their addresses and routes.

Every packet read from a TUN goes to the TUN that owns its destination address, after:

* a partition check (addresses in different groups do not talk; an address in no group talks
  to all),
* a loss draw (``loss``, seeded RNG),
* a delay of ``delay + U(-jitter, +jitter)`` seconds (uniform, clipped at 0), held in a heap.
  Packets of one (source, destination) pair keep their order: a packet never leaves before
  the one sent before it on that pair (like a queue on a real path), so jitter adds delay
  variation but no reordering.

Control: one JSON object a line on stdin, one JSON reply a line on stdout::

    {"op": "shape", "delay": 0.03, "jitter": 0.005, "loss": 0.01}  (new packets only)
    {"op": "partition", "groups": {"10.77.0.1": 0, "10.77.0.2": 1}}
    {"op": "heal"}
    {"op": "counters"}
    {"op": "quit"}

The counters' ``dropped_queue`` is what the kernel dropped before the forwarder could read it
(a full TUN queue: the forwarder fell behind), summed from each namespace's /proc/net/dev.

End of stdin (the harness died) ends the process too.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_BATCH = 64  # packets read from one device before looking at the others

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Move this (single-threaded) process into the network namespace bound at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(ifname: str) -> int:
    """Create the TUN device ``ifname`` in the current namespace; its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass  # best effort: IPv6 may be compiled out


class Forwarder:
    """Routing, shaping and counting of packets; no I/O of its own except writes to TUN fds."""

    def __init__(self, routes: dict[bytes, int], seed: int) -> None:
        self.routes = routes  # destination address (4 bytes) -> TUN fd
        self.rng = random.Random(seed)
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.groups: dict[bytes, int] = {}
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.last_due: dict[bytes, float] = {}  # (source, destination) -> last due time
        self.seq = 0
        self.kernel_drops: Callable[[], int] = lambda: 0
        self.counters = dict.fromkeys(
            (
                "received",
                "forwarded",
                "bytes_forwarded",
                "dropped_loss",
                "dropped_partition",
                "dropped_no_route",
                "dropped_not_ipv4",
                "dropped_error",
            ),
            0,
        )

    def set_shape(self, delay: float, jitter: float, loss: float) -> None:
        """Shape for packets arriving from now on (queued ones keep their due time)."""
        self.delay, self.jitter, self.loss = float(delay), float(jitter), float(loss)

    def packet(self, pkt: bytes, now: float) -> None:
        """Route one packet read at ``now``: drop it, write it, or queue it."""
        c = self.counters
        c["received"] += 1
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            c["dropped_not_ipv4"] += 1
            return
        dst = pkt[16:20]
        fd = self.routes.get(dst)
        if fd is None:
            c["dropped_no_route"] += 1
            return
        if self.groups:
            g_src = self.groups.get(pkt[12:16])
            g_dst = self.groups.get(dst)
            if g_src is not None and g_dst is not None and g_src != g_dst:
                c["dropped_partition"] += 1
                return
        if self.loss and self.rng.random() < self.loss:
            c["dropped_loss"] += 1
            return
        d = self.delay
        if self.jitter:
            d += self.rng.uniform(-self.jitter, self.jitter)
        due = now + d if d > 0 else now
        key = pkt[12:20]
        last = self.last_due.get(key)
        if last is not None and last > due:
            due = last
        if due <= now:
            self.write(fd, pkt)
            return
        self.last_due[key] = due
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, fd, pkt))

    def write(self, fd: int, pkt: bytes) -> None:
        """Hand ``pkt`` to the kernel as received on the TUN device ``fd``."""
        try:
            os.write(fd, pkt)
        except OSError:
            self.counters["dropped_error"] += 1
            return
        self.counters["forwarded"] += 1
        self.counters["bytes_forwarded"] += len(pkt)

    def flush(self, now: float) -> None:
        """Write every queued packet that is due at ``now``."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(heap)
            self.write(fd, pkt)
        if not heap and len(self.last_due) > 4096:
            self.last_due.clear()  # all past: they can no longer hold anything back

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Apply one control message; the reply to print."""
        op = msg.get("op")
        if op == "shape":
            self.set_shape(msg["delay"], msg["jitter"], msg["loss"])
        elif op == "partition":
            self.groups = {
                bytes(int(x) for x in ip.split(".")): int(g) for ip, g in msg["groups"].items()
            }
        elif op == "heal":
            self.groups = {}
        elif op == "counters":
            counters = {**self.counters, "queued": len(self.heap)}
            counters["dropped_queue"] = self.kernel_drops()
            return {"ok": True, "counters": counters}
        elif op == "quit":
            return {"ok": True, "quit": True}
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True}


def setup(links: list[dict[str, Any]]) -> tuple[dict[bytes, int], list[tuple[int, str]]]:
    """Create every link's TUN device in its namespace: destination address -> fd, and for
    each device an fd of its namespace's /proc/net/dev with the device's name."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    routes: dict[bytes, int] = {}
    stats: list[tuple[int, str]] = []
    try:
        for link in links:
            enter_netns(os.path.join("/run/netns", link["netns"]))
            fd = open_tun(link["ifname"])
            routes[bytes(int(x) for x in link["address"].split("."))] = fd
            # opened here, /proc/self/net/dev stays this namespace's for good
            stats.append(
                (os.open("/proc/self/net/dev", os.O_RDONLY | os.O_CLOEXEC), link["ifname"])
            )
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{link['ifname']}/disable_ipv6", "1")
            if link.get("forward"):
                _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back home failed")
        os.close(home)
    return routes, stats


def kernel_drops(stats: list[tuple[int, str]]) -> int:
    """Packets the TUN devices' queues dropped: sent by a host while the forwarder lagged."""
    total = 0
    for fd, ifname in stats:
        text = os.pread(fd, 1 << 20, 0).decode(errors="replace")
        for line in text.splitlines():
            name, _, fields = line.partition(":")
            if name.strip() == ifname:
                total += int(fields.split()[11])  # transmit: bytes packets errs drop ...
    return total


def serve(fwd: Forwarder, control_fd: int = 0, reply_fd: int = 1) -> None:
    """The event loop: read TUNs and control, hold packets, until quit or end of control."""
    os.set_blocking(control_fd, False)
    ep = select.epoll()
    fds = sorted(set(fwd.routes.values()))
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    ep.register(control_fd, select.EPOLLIN)
    buf = b""
    clock = time.monotonic
    while True:
        heap = fwd.heap
        timeout = max(0.0, heap[0][0] - clock()) if heap else -1.0
        events = ep.poll(timeout)
        for fd, _ in events:
            if fd == control_fd:
                try:
                    chunk = os.read(control_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    try:
                        reply = fwd.command(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    os.write(reply_fd, json.dumps(reply).encode() + b"\n")
                    if reply.get("quit"):
                        return
                continue
            now = clock()
            for _ in range(READ_BATCH):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EBADFD, errno.EIO):
                        break
                    raise
                fwd.packet(pkt, now)
        if fwd.heap:
            fwd.flush(clock())


def main(argv: list[str]) -> int:
    """Set up from the JSON config in ``argv[1]``, say ready, then serve until told to quit."""
    config = json.loads(argv[1])
    routes, stats = setup(config["links"])
    fwd = Forwarder(routes, int(config.get("seed", 0)))
    fwd.kernel_drops = lambda: kernel_drops(stats)
    fwd.set_shape(config.get("delay", 0.0), config.get("jitter", 0.0), config.get("loss", 0.0))
    os.write(1, b'{"ready": true}\n')
    serve(fwd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
