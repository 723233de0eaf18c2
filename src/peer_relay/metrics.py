"""Prometheus metrics and a status page for a running :class:`~peer_relay.PeerRelay`.

One small HTTP server per node (``--metrics HOST:PORT``), on the node's own event loop, serves:

* ``/metrics``: Prometheus' text format, from a registry of this server's own (several nodes
  in one process each have theirs). The node's counters are read from its public read-outs
  (:attr:`~PeerRelay.stats`, :meth:`~PeerRelay.inspect`, :meth:`~PeerRelay.bounds`) when
  Prometheus scrapes, by a custom collector: nothing is counted twice and nothing is added to
  the node's paths. The process's memory, CPU and file descriptors come from
  ``prometheus_client``'s process collector.
* ``/status.json``: the snapshot of :func:`peer_relay.status.snapshot`.
* ``/`` and ``/status``: a self-contained page that shows that snapshot, refreshed every second.

Every metric is described in ``docs/operating.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .status import PAGE, Observed, page_script_hash, snapshot

_log = logging.getLogger("peer_relay.metrics")

PREFIX: Final = "peer_relay"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' classic text format, which ``generate_latest`` writes."""
MAX_REQUEST: Final = 16 * 1024
READ_TIMEOUT: Final = 10.0
TRANSPORTS: Final = ("ws", "webrtc")
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_COUNTERS: Final = (
    # (key of PeerRelay.stats, metric name without _total, help)
    ("frames_in", "frames_received", "Frames received on every link (handshakes included)."),
    ("frames_out", "frames_sent", "Frames sent on every link (handshakes included)."),
    ("bytes_in", "received_bytes", "Bytes of frames received on every link."),
    ("bytes_out", "sent_bytes", "Bytes of frames sent on every link."),
    (
        "originated",
        "messages_originated",
        "Messages this peer started (user messages, session and control messages).",
    ),
    ("delivered", "messages_delivered", "Messages delivered to this peer's application."),
    ("relayed", "messages_relayed", "Messages forwarded on towards another peer."),
    (
        "rerouted",
        "messages_rerouted",
        "Messages sent again over another link after theirs failed or went silent.",
    ),
    ("links_opened", "links_opened", "Direct links opened (handshake completed)."),
    ("links_closed", "links_closed", "Direct links closed, for any reason."),
)


# ----------------------------------------------------------------------------- HOST:PORT


def parse_metrics_spec(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0: any free port) as ``(host, port)``;
    ValueError, in one line, for anything else."""
    text = spec.strip() if isinstance(spec, str) else ""
    example = "give HOST:PORT, e.g. 127.0.0.1:9100 (port 0: any free port)"
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"metrics address {spec!r} is not HOST:PORT; {example}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"metrics address {spec!r}: unbalanced [ ]; {example}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"metrics address {spec!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"metrics address {spec!r}: write an IPv6 host in brackets, [::1]:9100")
    elif not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"metrics address {spec!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"metrics address {spec!r}: the port must be 0..65535; {example}")
    return host, int(port_text)


def metrics_spec_arg(text: str) -> str:
    """argparse ``type=`` for ``--metrics``: the address as given, once it parses."""
    try:
        parse_metrics_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics HOST:PORT`` to ``parser`` (a bad address is one argparse error line)."""
    parser.add_argument(
        "--metrics",
        type=metrics_spec_arg,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics), a status page (/) and /status.json on "
        "HOST:PORT (port 0: any free port; bind 127.0.0.1 unless a scraper elsewhere needs "
        "it; default: none)",
    )


# ----------------------------------------------------------------------------- the collector


class PeerCollector(Collector):
    """Reads one node's public read-outs at scrape time and turns them into metric families."""

    def __init__(self, peer: Observed) -> None:
        self._peer = peer

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would call collect() once; the node may not run yet.
        return ()

    def collect(self) -> Iterable[Metric]:
        peer = self._peer
        stats = peer.stats
        info = GaugeMetricFamily(
            f"{PREFIX}_info",
            "This peer: its id, the URL it advertises, the package version (always 1).",
            labels=("id", "url", "version"),
        )
        info.add_metric((peer.id.hex(), peer.url or "", __version__), 1)
        yield info
        up = GaugeMetricFamily(
            f"{PREFIX}_up", "1 while the node runs (started, not destroyed), else 0."
        )
        up.add_metric((), 1 if stats else 0)
        yield up
        for key, name, doc in _COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=int(stats.get(key, 0)))
        drops = CounterMetricFamily(
            f"{PREFIX}_drops",
            "Frames, messages and connections dropped, by reason (see docs/operating.md).",
            labels=("reason",),
        )
        for reason, count in sorted(stats.get("dropped", {}).items()):
            drops.add_metric((reason,), count)
        yield drops
        readout = peer.inspect()
        links: Counter[tuple[str, str]] = Counter(
            (str(link.get("transport")), str(link.get("state")))
            for link in readout.get("links", ())
        )
        for transport in TRANSPORTS:
            links.setdefault((transport, "open"), 0)
        gauge = GaugeMetricFamily(
            f"{PREFIX}_links",
            "Links by transport (ws, webrtc) and state (dialing, hello, proof: handshakes; "
            "open; draining: closed by us, frames in flight still read).",
            labels=("transport", "state"),
        )
        for (transport, state), count in sorted(links.items()):
            gauge.add_metric((transport, state), count)
        yield gauge
        bounds = peer.bounds()
        sessions = bounds.get("sessions", (0, 0))[0]
        yield GaugeMetricFamily(
            f"{PREFIX}_sessions", "Peers with end-to-end session state.", value=sessions
        )
        size = GaugeMetricFamily(
            f"{PREFIX}_bound_size",
            "Size now of each bounded structure (see PeerRelay.bounds()).",
            labels=("structure",),
        )
        limit = GaugeMetricFamily(
            f"{PREFIX}_bound_limit",
            "Limit of each bounded structure: at it, the node drops or evicts.",
            labels=("structure",),
        )
        for name, (now, most) in sorted(bounds.items()):
            size.add_metric((name,), now)
            limit.add_metric((name,), most)
        yield size
        yield limit


# ----------------------------------------------------------------------------- the server


class MetricsError(RuntimeError):
    """The metrics server cannot listen; the message says why and what to do, in one line.
    (Not an OSError: it must not pass for a failure of the peer's own port.)"""


def _why(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror}): give --metrics an address of this host"
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use: choose another --metrics port, or port 0 for any free one"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this host has no such address: give --metrics one of its own, or 127.0.0.1"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): choose another port"
    return str(exc.strerror or exc)


class MetricsServer:
    """Serves one node's metrics, ``/status.json`` and its status page over HTTP.

    Runs on the node's event loop (it reads the node's state there, between its callbacks).
    :meth:`start` binds; :attr:`port` is the bound port (useful with port 0); :meth:`close`
    stops. ``registry`` is this server's own.
    """

    def __init__(self, peer: Observed, host: str = "127.0.0.1", port: int = 0) -> None:
        self.peer = peer
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(PeerCollector(peer))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.handshake_seconds = Histogram(
            f"{PREFIX}_handshake_duration_seconds",
            "Seconds from a link's start (our dial, or the connection accepted) to its hello and "
            "proof completing (observed when the node reports it).",
            labelnames=("transport",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            f"{PREFIX}_delivery_duration_seconds",
            "Seconds from deliver() or request() to the destination's receipt or reply "
            "(observed when the node reports it).",
            labelnames=("kind",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for transport in TRANSPORTS:
            self.handshake_seconds.labels(transport)
        for kind in ("deliver", "request"):
            self.delivery_seconds.labels(kind)
        self._opened: dict[bytes, float] = {}
        """When each open link opened (``time.monotonic()``), from the node's peer events: links
        already open when this server started have no known age."""
        self._started: float | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._csp = (
            "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; "
            f"script-src {page_script_hash()}; img-src 'self' data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        )

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT/`` once bound (the status page)."""
        if self.port is None:
            return None
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/"

    async def start(self) -> MetricsServer:
        """Bind and serve; returns once listening. MetricsError if it cannot listen (the port
        is taken, the address is not this host's, ...)."""
        if self._server is not None:
            return self
        host = self.host
        try:
            if self.requested_port == 0:
                # A name may resolve to several addresses, each of which would get a port of
                # its own: any free port is taken on the first one only.
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                host = str(infos[0][4][0])
            server = await asyncio.start_server(
                self._handle, host, self.requested_port, limit=MAX_REQUEST
            )
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {_why(exc)}"
            ) from exc
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        self._started = time.monotonic()
        self.peer.on("peer", self._linked)
        self.peer.on("peer-closed", self._unlinked)
        _log.info("metrics and status on %s (metrics at /metrics)", self.url)
        return self

    async def close(self) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self.peer.off("peer", self._linked)
        self.peer.off("peer-closed", self._unlinked)
        server.close()
        for writer in list(self._clients):
            writer.close()
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- latencies: for the node to report (see docs/operating.md) -------------------------

    def observe_handshake(self, seconds: float, transport: str = "ws") -> None:
        """One link's handshake took ``seconds``."""
        self.handshake_seconds.labels(transport).observe(seconds)

    def observe_delivery(self, seconds: float, kind: str = "deliver") -> None:
        """One ``deliver()`` (``kind="deliver"``) or ``request()`` (``"request"``) got its
        receipt or reply after ``seconds``."""
        self.delivery_seconds.labels(kind).observe(seconds)

    # -- link ages, from the node's peer events (rare: not on any frame's path) ------------

    def _linked(self, peer_id: bytes) -> None:
        self._opened[bytes(peer_id)] = time.monotonic()

    def _unlinked(self, peer_id: bytes, reason: str = "") -> None:
        key = bytes(peer_id)
        if key not in self.peer.peers:
            self._opened.pop(key, None)

    # -- what is served --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The snapshot ``/status.json`` serves."""
        live = set(self.peer.peers)
        for key in [k for k in self._opened if k not in live]:
            del self._opened[key]
        return snapshot(self.peer, self._opened, self._started)

    def metrics(self) -> bytes:
        """What ``/metrics`` serves."""
        return generate_latest(self.registry)

    def _route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, self.metrics(), CONTENT_TYPE
        if path == "/status.json":
            body = json.dumps(self.status(), separators=(",", ":")).encode()
            return 200, body, "application/json"
        if path in ("/", "/status", "/index.html"):
            return 200, PAGE.encode(), "text/html; charset=utf-8"
        return 404, b"not found: try /, /status.json or /metrics\n", "text/plain; charset=utf-8"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            request = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(request) != 3 or not request[2].startswith("HTTP/"):
                self._respond(writer, 400, b"bad request\n", "text/plain; charset=utf-8")
            elif request[0] not in ("GET", "HEAD"):
                self._respond(writer, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            else:
                try:
                    status, body, kind = self._route(urlsplit(request[1]).path)
                except Exception:
                    _log.exception("metrics: %s failed", request[1][:100])
                    status, body, kind = 500, b"internal error\n", "text/plain; charset=utf-8"
                self._respond(writer, status, body, kind, head_only=request[0] == "HEAD")
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
            OSError,
        ) as exc:
            _log.debug("metrics client failed: %r", exc)
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        kind: str,
        *,
        head_only: bool = False,
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
        }[status]
        extra = f"Content-Security-Policy: {self._csp}\r\n" if kind.startswith("text/html") else ""
        if status == 405:
            extra += "Allow: GET, HEAD\r\n"
        headers = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"{extra}"
            "Connection: close\r\n\r\n"
        )
        writer.write(headers.encode("latin-1") + (b"" if head_only else body))


# ----------------------------------------------------------------------------- wiring


async def start_metrics(peer: Observed, spec: str) -> MetricsServer:
    """Serve ``peer``'s metrics and status on ``spec`` (``HOST:PORT``); returns the running
    server (its bound port in ``.port``). ValueError for a malformed address, MetricsError
    when it cannot listen there."""
    host, port = parse_metrics_spec(spec)
    return await MetricsServer(peer, host, port).start()


@contextlib.asynccontextmanager
async def serving_metrics(peer: Observed, spec: str | None) -> AsyncIterator[MetricsServer | None]:
    """``async with serving_metrics(peer, args.metrics) as server:`` serves while inside
    (nothing, and ``None``, when ``spec`` is None)."""
    if spec is None:
        yield None
        return
    server = await start_metrics(peer, spec)
    try:
        yield server
    finally:
        await server.close()
