"""The ``peer-relay`` command: serve, listen, send, request, id, demo and simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from . import __version__, wire
from .errors import DeliveryError, RemoteError
from .identity import Identity
from .ids import parse_id
from .logs import add_log_format_argument, setup_logging
from .metrics import MetricsError, add_metrics_arguments
from .node import BootstrapFailure, PeerRelay

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
"""Not delivered, no reply, not sent (``--no-wait``), or any other failure at run time."""
EXIT_USAGE = 2
"""Bad arguments: reported at once, before joining the network (argparse's convention)."""
EXIT_REMOTE = 3
"""``request``: the remote request handler failed, or the remote has none."""
EXIT_INTERRUPTED = 130

_POLL = 0.05
"""Seconds between two looks at how joining the network goes."""

_SEND_EPILOG = """\
exit status:
  0  delivered: the destination's authenticated receipt came back
     (with --no-wait: the message left this peer; nothing is confirmed)
  1  not delivered: could not join the network (at once when every
     bootstrap peer refused, else within --timeout), or the destination
     did not answer within --timeout (offline, unreachable, no such id);
     the reason is on stderr
  2  bad arguments (malformed id, JSON that does not parse, --timeout not > 0,
     an --identity file that holds no key)
"""

_REQUEST_EPILOG = """\
exit status:
  0  the reply came back; it is printed on stdout as one JSON line
  1  no reply: could not join the network (at once when every bootstrap
     peer refused, else within --timeout), or the destination did not
     answer within --timeout (offline, unreachable, no such id)
  2  bad arguments (malformed id, JSON that does not parse, --timeout not > 0,
     an --identity file that holds no key)
  3  remote error: the destination's request handler failed, or it has
     none (it runs no 'peer-relay listen --echo'); its message is on stderr
"""


class _Refusal(Exception):
    """A failure the command explains in one line (what happened and what to do), raised from
    the exception behind it (whose traceback ``-v`` shows)."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what was wrong, and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _ws_url_arg(text: str) -> str:
    if not wire.is_ws_url(text):
        raise argparse.ArgumentTypeError(f"not a ws:// or wss:// URL: {text!r}")
    return text


def _peer_id_arg(text: str) -> bytes:
    try:
        return parse_id(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_arg(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    try:
        wire.canonical(value)  # what every peer can carry: I-JSON, not nested too deeply
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


_IDENTITY_HELP = "key file: read, or created (mode 0600) if it does not exist"


def _add_peer_options(
    parser: argparse.ArgumentParser, *, server: bool, bootstrap_required: bool = False
) -> None:
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        required=bootstrap_required,
        type=_ws_url_arg,
        metavar="URL",
        help="WebSocket URL (ws:// or wss://) of a peer already in the network; repeatable "
        + ("(at least one required)" if bootstrap_required else "(default: none)"),
    )
    parser.add_argument(
        "--identity",
        metavar="FILE",
        help=f"{_IDENTITY_HELP} (default: a new key, and so a new id, each run)",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="admit peers of the original 0.0.2 and unsigned messages, marked unverified "
        "(default: refused)",
    )
    parser.add_argument(
        "--webrtc",
        action="store_true",
        help="enable WebRTC links, which need aiortc: pip install 'peer-relay[webrtc]' "
        "(default: off)",
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN or TURN server for WebRTC (stun:HOST:PORT, turn:HOST:PORT); repeatable "
        "(default: none, so only this host's own addresses)",
    )
    parser.add_argument(
        "--ice-username", metavar="NAME", help="username for the TURN server (default: none)"
    )
    parser.add_argument(
        "--ice-credential", metavar="SECRET", help="password for the TURN server (default: none)"
    )
    parser.add_argument(
        "--direct-after",
        type=int,
        default=32,
        metavar="N",
        help="link directly to a peer after N messages with it through relays within 30 s "
        "(default 32; 0: never)",
    )
    parser.add_argument(
        "--max-links",
        type=int,
        default=20,
        metavar="N",
        help="most direct links kept at once (default 20)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the core compiled by mypyc: faster (built once per version, minutes; "
        "needs a C compiler and Python's headers) (default: off)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help=(
            "-v: show the traceback of an error; -vv: debug logging too (default: info logging)"
            if server
            else "-v: info logging, and the traceback of an error; -vv: debug logging "
            "(default: warnings only)"
        ),
    )
    add_log_format_argument(parser)
    if server:
        parser.add_argument(
            "--port",
            type=int,
            required=True,
            help="port to listen on; 0 takes any free port (required)",
        )
        parser.add_argument(
            "--host",
            default="0.0.0.0",
            help="address to listen on (default 0.0.0.0: every IPv4 address of this host)",
        )
        parser.add_argument(
            "--public-url",
            metavar="URL",
            help="URL to advertise to other peers when they reach this one at another address "
            "(behind NAT or a proxy) (default: ws://ADDRESS:PORT, ADDRESS one of this host's)",
        )
        parser.add_argument(
            "--web",
            action="store_true",
            help="also serve the browser build and a demo page over HTTP; needs npm once, "
            "to fetch Pyodide (default: off)",
        )
        parser.add_argument(
            "--web-port",
            type=int,
            default=0,
            metavar="PORT",
            help="HTTP port of --web, on --host; 0 takes any free port (default 0)",
        )


def _load_identity(path: str) -> Identity:
    """The key in ``path`` (created if missing), or a refusal that says what to do."""
    try:
        return Identity.load_or_create(path)
    except ValueError as exc:
        raise _Refusal(f"--identity {exc}", EXIT_USAGE) from exc
    except OSError as exc:
        raise _Refusal(
            f"--identity {path}: cannot read or create it ({exc.strerror or exc}): name a file "
            "this user may read and write",
            EXIT_USAGE,
        ) from exc


def _peer_from_args(args: argparse.Namespace, *, server: bool) -> PeerRelay:
    identity = _load_identity(args.identity) if args.identity else None
    extra: dict[str, Any] = {}
    if server:
        extra = {"port": args.port, "host": args.host, "public_url": args.public_url}
    return PeerRelay(
        bootstrap=args.bootstrap,
        identity=identity,
        allow_unsigned=args.allow_unsigned,
        wrtc=args.webrtc,
        ice_servers=args.ice_server,
        ice_username=args.ice_username,
        ice_credential=args.ice_credential,
        max_links=args.max_links,
        direct_after=args.direct_after,
        metrics=getattr(args, "metrics", None),
        **extra,
    )


def _setup_logging(verbose: int, default: int = logging.WARNING, fmt: str = "text") -> None:
    level = {0: default, 1: logging.INFO}.get(verbose, logging.DEBUG)
    setup_logging(level, fmt)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(args: argparse.Namespace) -> int:
    root = await _build_web() if args.web else None
    peer = _peer_from_args(args, server=True)
    await _listening(peer.start(), args.host, args.port, "--port")
    async with peer:
        print(f"id  {peer.id.hex()}", flush=True)
        print(f"url {peer.url}", flush=True)
        if peer.metrics is not None:
            print(f"metrics {peer.metrics.url}", flush=True)
        if root is not None:
            from .browser.server import WebServer

            async with WebServer(root, {"bootstrap": [peer.url]}) as web:
                url = await _listening(
                    web.start(args.host, args.web_port), args.host, args.web_port, "--web-port"
                )
                print(f"web {url}", flush=True)
                await _until_signalled()
        else:
            await _until_signalled()
        print("shutting down", file=sys.stderr, flush=True)
    return 0


async def _build_web() -> Path:
    """The browser build ``--web`` serves (built, or brought up to date, now)."""
    from .browser.build import build

    try:
        return await asyncio.to_thread(build)
    except RuntimeError as exc:
        fix = "install Node.js (with npm)" if shutil.which("npm") is None else "fix that"
        raise _Refusal(
            f"--web cannot build the browser page: {exc}; {fix}, or run without --web"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise _Refusal(
            f"--web cannot build the browser page: npm failed (exit status {exc.returncode}) to "
            "install the npm package pyodide: check the network and npm, or run without --web"
        ) from exc
    except OSError as exc:
        raise _Refusal(
            f"--web cannot build the browser page: {exc}: set PEER_RELAY_CACHE to a folder "
            "this user may write, or run without --web"
        ) from exc


async def _listening(start: Awaitable[T], host: str, port: int, option: str) -> T:
    """Await ``start``, which binds ``host:port``; a failure becomes a refusal that says why
    and what to do."""
    try:
        return await start
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = (
                f"the port is in use (another peer-relay, or another program, listens there): "
                f"choose another {option}, or {option} 0 for any free port"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "this host has no such address: give --host one of its own, or 0.0.0.0"
        elif exc.errno == errno.EACCES:
            why = (
                f"permission denied (a port below 1024 needs privileges): choose a {option} of "
                "1024 or more"
            )
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host name ({exc.strerror}): give --host an address of this host"
        else:
            why = f"{exc.strerror or exc}"
        raise _Refusal(f"cannot listen on {host}:{port}: {why}") from exc


async def _listen(args: argparse.Namespace) -> int:
    peer = _peer_from_args(args, server=False)
    if args.echo:
        peer.on("request", _echo)
    async with peer:
        print(f"listening as {peer.id.hex()}", file=sys.stderr, flush=True)
        stop = asyncio.ensure_future(_until_signalled())
        reader = asyncio.ensure_future(_print_messages(peer))
        watcher = asyncio.ensure_future(_watch_links(peer, args))
        await asyncio.wait([stop, reader], return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, stop, watcher):
            task.cancel()
    return 0


async def _watch_links(peer: PeerRelay, args: argparse.Namespace) -> None:
    """Say on stderr, one line each time, when this peer loses its last link and when it
    cannot reach any bootstrap peer, and when it is linked again after that. Meanwhile the
    peer dials its bootstrap peers again and again, less and less often (up to once a minute).
    """
    say = _say(args)
    retry = f"{peer.config.bootstrap_retry:g}s"
    urls = list(dict.fromkeys(args.bootstrap))

    def closed(peer_id: bytes, reason: str) -> None:
        if not peer.peers and reason != "shutdown":
            say(
                f"lost the last link (to {peer_id.hex()[:8]}: {reason}); dialling the bootstrap "
                f"peers again in {retry}, then less and less often"
            )

    peer.on("peer-closed", closed)
    told = False
    try:
        while True:
            if peer.peers:
                if told:
                    say(f"linked to the network again (through {peer.peers[0].hex()[:8]})")
                told = False
            elif not told and urls and len(failures := peer.bootstrap_failures()) == len(urls):
                say(
                    f"cannot reach any bootstrap peer: {_reasons(failures)}; it keeps trying, "
                    "less and less often (up to once a minute)"
                )
                told = True
            await asyncio.sleep(4 * _POLL)
    finally:
        peer.off("peer-closed", closed)


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Print a line on stderr, prefixed with the command."""

    def say(text: str) -> None:
        print(f"peer-relay {args.command}: {text}", file=sys.stderr, flush=True)

    return say


def _reasons(failures: list[BootstrapFailure]) -> str:
    return "; ".join(f"{failure.url}: {failure.reason}" for failure in failures)


async def _print_messages(peer: PeerRelay) -> None:
    async for message in peer.messages():
        line = {
            "from": message.sender.hex(),
            "verified": message.verified,
            "hops": message.hops,
            "data": message.data,
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)


def _echo(data: Any, sender: bytes) -> Any:
    """``listen --echo``'s request handler: the reply is what the request carried."""
    return data


async def _send(args: argparse.Namespace) -> int:
    target: bytes = args.id
    async with _peer_from_args(args, server=False) as peer:
        deadline = time.monotonic() + args.timeout
        why = await _join(peer, args, deadline)
        if why is not None:
            return _failed(args, "not sent" if args.no_wait else "not delivered", why)
        if args.no_wait:
            peer.send(target, args.json)
            why = await _handed_over(peer, target, deadline)
            if why is not None:
                return _failed(args, "not sent", why)
            await peer.drain(0)
            print(f"sent to {target.hex()} (--no-wait: not confirmed)", file=sys.stderr)
            return EXIT_OK
        try:
            await peer.deliver(target, args.json, timeout=_remaining(deadline))
        except DeliveryError as exc:
            return _failed(args, "not delivered", exc)
    print(f"delivered to {target.hex()}", file=sys.stderr)
    return EXIT_OK


async def _request(args: argparse.Namespace) -> int:
    async with _peer_from_args(args, server=False) as peer:
        deadline = time.monotonic() + args.timeout
        why = await _join(peer, args, deadline)
        if why is not None:
            return _failed(args, "no reply", why)
        try:
            reply = await peer.request(args.id, args.json, timeout=_remaining(deadline))
        except RemoteError as exc:
            return _failed(args, "remote error", exc, EXIT_REMOTE)
        except DeliveryError as exc:
            return _failed(args, "no reply", exc)
    print(json.dumps(reply, ensure_ascii=False), flush=True)
    return EXIT_OK


def _remaining(deadline: float) -> float:
    """Seconds left of ``--timeout`` (a little at least: joining may overrun it slightly)."""
    return max(deadline - time.monotonic(), 0.05)


async def _join(peer: PeerRelay, args: argparse.Namespace, deadline: float) -> str | None:
    """Wait for a first link; None once there is one, else why there is none: at once when
    every bootstrap peer failed for a reason that waiting cannot mend, else at the deadline."""
    urls = list(dict.fromkeys(args.bootstrap))
    while not peer.peers:
        failures = peer.bootstrap_failures()
        if len(failures) == len(urls) and all(failure.lasting for failure in failures):
            return f"could not join the network: {_reasons(failures)}"
        if time.monotonic() >= deadline:
            if not failures:
                return (
                    f"could not join the network: no link to {', '.join(urls)} within "
                    f"{args.timeout:g}s"
                )
            failed = {failure.url: failure.reason for failure in failures}
            why = "; ".join(f"{url}: {failed.get(url, 'no link yet')}" for url in urls)
            return f"could not join the network within {args.timeout:g}s: {why}"
        await asyncio.sleep(_POLL)
    return None


async def _handed_over(peer: PeerRelay, target: bytes, deadline: float) -> str | None:
    """Wait until what ``send`` queued for ``target`` has left this peer: a message waits
    for a session, whose handshake it then rides in (one round trip for the destination's key
    first), and would be lost if the command exited before. None once it left, else why not."""
    if target == peer.id or not peer.config.sessions:
        return None  # delivered here, or sent at once without a session
    target_hex = target.hex()
    while time.monotonic() < deadline:
        state = next((s for s in peer.inspect()["sessions"] if s["peer"] == target_hex), None)
        if state is not None and state["queued"] == 0 and (state["opening"] or state["sessions"]):
            return None
        await asyncio.sleep(0.01)
    return f"no session with {target_hex[:8]} within the timeout (offline or unreachable)"


def _failed(
    args: argparse.Namespace, what: str, why: str | BaseException, status: int = EXIT_FAILED
) -> int:
    """Report a failure in one line on stderr (with the traceback too under ``-v``)."""
    if isinstance(why, BaseException) and args.verbose:
        traceback.print_exception(why, file=sys.stderr)
    text = str(why) or type(why).__name__
    text = text.removeprefix(f"{what}: ").replace("\n", " ")
    print(f"peer-relay {args.command}: {what}: {text}", file=sys.stderr, flush=True)
    return status


def _id(args: argparse.Namespace) -> int:
    print(_load_identity(args.identity).id.hex())
    return 0


# ----------------------------------------------------------------------------- demo


async def _demo(args: argparse.Namespace) -> int:
    nodes: list[PeerRelay] = []
    rng = random.Random(args.seed)
    out = sys.stdout
    interactive = out.isatty()

    def progress(text: str) -> None:
        if interactive:
            out.write("\r\x1b[2K" + text)
        out.flush()

    print(f"Starting a network of {args.nodes} peers on 127.0.0.1 ...")
    started = time.perf_counter()
    try:
        seed = PeerRelay(port=0, host="127.0.0.1", max_links=args.max_links)
        await seed.start()
        nodes.append(seed)
        for i in range(1, args.nodes):
            boot = rng.choice(nodes)
            peer = PeerRelay(
                port=0, host="127.0.0.1", bootstrap=[boot.url or ""], max_links=args.max_links
            )
            await peer.start()
            nodes.append(peer)
            progress(f"  peers started: {i + 1}/{args.nodes}")
        if not interactive:
            print(f"  peers started: {len(nodes)}/{args.nodes}")
        # Formed once every peer has its links to its nearest neighbours (Config.near_count)
        # and no link opened or closed anywhere for two seconds (a total that stays the same
        # can hide links that come and go), or after --settle seconds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.settle
        target = min(args.nodes - 1, max(2, min(4, args.max_links // 2)))
        last_churn, quiet_since, formed = -1, loop.time(), False
        while not formed and loop.time() < deadline:
            links = [len(n.peers) for n in nodes]
            churn = sum(n.stats["links_opened"] + n.stats["links_closed"] for n in nodes)
            progress(
                f"  forming links: {sum(links) // 2} links, "
                f"{sum(1 for x in links if x >= target)}/{len(nodes)} peers with {target}+ links"
            )
            if churn != last_churn:
                last_churn, quiet_since = churn, loop.time()
            formed = min(links) >= target and loop.time() - quiet_since >= 2.0
            if not formed:
                await asyncio.sleep(0.2)
        links = [len(n.peers) for n in nodes]
        if interactive:
            out.write("\n")
        print(
            f"Network {'formed' if formed else 'still forming'} after "
            f"{time.perf_counter() - started:.1f}s: {sum(links) // 2} links, "
            f"{min(links)}-{max(links)} per peer (mean {sum(links) / len(links):.1f})."
        )
        return await _demo_messages(nodes, args.messages, rng)
    finally:
        await asyncio.gather(*(n.destroy() for n in nodes), return_exceptions=True)


async def _demo_messages(nodes: list[PeerRelay], count: int, rng: random.Random) -> int:
    pairs = [(a, b) for a in nodes for b in nodes if a is not b and b.id not in a.peers]
    if not pairs:
        print("Every peer is linked to every other: no relaying needed. Try more --nodes.")
        return 0
    print(f"\nSending {count} messages between peers that are NOT directly linked:")
    loop = asyncio.get_running_loop()
    waiters: dict[int, asyncio.Future[tuple[int, bool]]] = {}

    async def reader(node: PeerRelay) -> None:
        async for message in node.messages():
            data = message.data
            seq = data.get("demo") if isinstance(data, dict) else None
            fut = waiters.get(seq) if isinstance(seq, int) else None
            if fut is not None and not fut.done():
                fut.set_result((message.hops, message.verified))

    readers = [asyncio.ensure_future(reader(n)) for n in nodes]
    await asyncio.sleep(0)
    times: list[float] = []
    all_hops: list[int] = []
    for seq in range(count):
        a, b = rng.choice(pairs)
        waiters[seq] = loop.create_future()
        start = time.perf_counter()
        a.send(b.id, {"demo": seq, "text": f"hello #{seq}"})
        route = f"{a.id.hex()[:8]} -> {b.id.hex()[:8]}"
        try:
            hops, verified = await asyncio.wait_for(waiters[seq], 5.0)
        except TimeoutError:
            print(f"  #{seq:<3} {route}  LOST")
            continue
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        all_hops.append(hops)
        print(
            f"  #{seq:<3} {route}  arrived in {elapsed * 1000:6.2f} ms over {hops} hops, "
            f"{'sender verified' if verified else 'UNVERIFIED'}"
        )
    for task in readers:
        task.cancel()
    if all_hops:
        print(
            f"\n{len(all_hops)}/{count} delivered; hops mean {sum(all_hops) / len(all_hops):.2f},"
            f" max {max(all_hops)}; mean time {sum(times) / len(times) * 1000:.2f} ms."
        )
    return 0 if len(all_hops) == count else 1


# ----------------------------------------------------------------------------- testbed


def _duration_arg(text: str) -> float:
    """``30ms``, ``0.5s`` or a plain number of milliseconds, in seconds."""
    raw = text.strip().lower()
    scale = 0.001
    if raw.endswith("ms"):
        raw = raw[:-2]
    elif raw.endswith("s"):
        raw, scale = raw[:-1], 1.0
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (like 30ms or 0.5s): {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value


def _share_arg(text: str) -> float:
    """``1%``, ``0.5%`` or a plain number of percent, as a fraction."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage (like 1%): {text!r}") from None
    if not (math.isfinite(value) and 0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must be at least 0% and below 100%, got {text}")
    return value


def _add_testbed_parser(sub: Any) -> None:
    tb = sub.add_parser(
        "testbed",
        help="run real peers on emulated hosts (network namespaces; root)",
        description="Build hosts in network namespaces joined through routers with delay, "
        "jitter and loss, some behind NAT, run real peer-relay processes on them and "
        "measure delivery, hops, latency, direct links and memory. Needs root.",
    )
    tb.add_argument("--hosts", type=int, default=4, help="emulated hosts (default 4)")
    tb.add_argument("--peers", type=int, default=10, help="peer processes per host (default 10)")
    tb.add_argument(
        "--nat",
        choices=("cone", "symmetric", "none"),
        default="none",
        help="kind of NAT in front of the NATed hosts (default none)",
    )
    tb.add_argument(
        "--nated", type=int, default=None, metavar="N", help="hosts behind NAT (default: half)"
    )
    tb.add_argument("--delay", type=_duration_arg, help="one-way delay (default 30ms; --local: 0)")
    tb.add_argument(
        "--jitter", type=_duration_arg, default=0.0, help="delay variation (default 0ms)"
    )
    tb.add_argument("--loss", type=_share_arg, help="packet loss (default 1%%; --local: 0)")
    tb.add_argument("--messages", type=int, default=1000, help="per phase (default 1000)")
    tb.add_argument("--rate", type=float, default=50.0, help="messages per second (default 50)")
    tb.add_argument(
        "--mode",
        choices=("send", "deliver"),
        default="send",
        help="send: fire and forget; deliver: wait for each receipt (default send)",
    )
    tb.add_argument(
        "--busy-pairs", type=int, default=0, metavar="N", help="busy NATed pairs (default 0)"
    )
    tb.add_argument(
        "--busy-messages", type=int, default=80, metavar="N", help="per busy pair (default 80)"
    )
    tb.add_argument(
        "--churn", type=int, default=0, metavar="N", help="peers killed, restarted (default 0)"
    )
    tb.add_argument("--partition", action="store_true", help="cut the hosts in two, then heal")
    tb.add_argument("--turn", action="store_true", help="run coturn (STUN and TURN)")
    tb.add_argument("--stun-only", action="store_true", help="with --turn: give peers STUN only")
    tb.add_argument(
        "--wrtc",
        choices=("nat", "all", "none"),
        default="nat",
        help="peers with WebRTC on: those behind NAT, all or none (default nat)",
    )
    tb.add_argument(
        "--max-links",
        type=int,
        default=None,
        metavar="N",
        help="link budget per peer (default: the peers' own, 20)",
    )
    tb.add_argument("--seed", type=int, default=0, help="seed of pairs, loss and churn (default 0)")
    tb.add_argument("--local", action="store_true", help="all on 127.0.0.1, no namespaces")
    tb.add_argument("--json", action="store_true", help="print the report as JSON")
    tb.add_argument(
        "--plot", metavar="FILE", help="write a figure (needs matplotlib) (default: none)"
    )
    tb.add_argument("--cleanup", action="store_true", help="remove what a killed run left")
    tb.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")


def _testbed(args: argparse.Namespace) -> int:
    """``peer-relay testbed``: refusals (exit 2) and failures (exit 1) in one line."""
    import dataclasses
    import importlib.util

    from .testbed import net
    from .testbed.scenario import Scenario, cleanup_runs, halves, run_scenario

    def refuse(exc: BaseException, status: int) -> int:
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"peer-relay testbed: {exc}", file=sys.stderr, flush=True)
        return status

    try:
        if args.cleanup:
            stale, runs = net.cleanup_stale(), cleanup_runs()
            print(f"removed {stale} stale testbed objects, {runs} run directories", file=sys.stderr)
            return EXIT_OK
        nat = None if args.nat == "none" else args.nat
        nated = args.nated if args.nated is not None else (args.hosts // 2 if nat else 0)
        options = {} if args.max_links is None else {"max_links": args.max_links}
        scenario = Scenario(
            hosts=args.hosts,
            peers=args.peers,
            nat=nat,
            nated=nated,
            shape=net.Shape(
                delay=args.delay if args.delay is not None else (0.0 if args.local else 0.03),
                jitter=args.jitter,
                loss=args.loss if args.loss is not None else (0.0 if args.local else 0.01),
            ),
            turn=args.turn,
            stun_only=args.stun_only,
            wrtc=args.wrtc,
            messages=args.messages,
            rate=args.rate,
            mode=args.mode,
            busy_pairs=args.busy_pairs,
            busy_messages=args.busy_messages,
            churn=args.churn,
            options=options,
            seed=args.seed,
            local=args.local,
        )
        scenario.validate()
        if args.partition:
            scenario = dataclasses.replace(scenario, partition=halves(scenario))
            scenario.validate()
        if not args.local:
            net.check_requirements(turn=args.turn)
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise net.TestbedError("--plot needs matplotlib: pip install matplotlib")
    except net.TestbedError as exc:
        return refuse(exc, EXIT_USAGE)
    try:
        report = run_scenario(scenario, progress=lambda text: print(text, file=sys.stderr))
        if args.plot:
            report.plot(args.plot)
    except KeyboardInterrupt:
        print("peer-relay testbed: interrupted; everything removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return refuse(exc, EXIT_FAILED)
    print(report.to_json() if args.json else report.format(), flush=True)
    return EXIT_OK


# ----------------------------------------------------------------------------- entry


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "id", metavar="ID", type=_peer_id_arg, help="target peer id (40 hex digits)"
    )
    parser.add_argument("json", metavar="JSON", type=_json_arg, help="the message, as JSON")
    parser.add_argument(
        "--timeout",
        type=_timeout_arg,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait in all, joining the network included (default 10); a bootstrap "
        "peer that refuses fails the command at once",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``peer-relay`` command."""
    parser = _Parser(
        prog="peer-relay",
        description="Deliver messages to peers named only by their id, through a relay network.",
        epilog="Run 'peer-relay COMMAND --help' for what a command does and its options.",
    )
    parser.add_argument("--version", action="version", version=f"peer-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run a peer with a WebSocket server",
        description="Run a peer with a WebSocket server that other peers dial: a relay, and a "
        "bootstrap peer for others. Prints its id and URL on stdout, logs its links on stderr, "
        "and runs until Ctrl-C or SIGTERM.",
    )
    _add_peer_options(serve, server=True)
    add_metrics_arguments(serve)

    listen = sub.add_parser(
        "listen",
        help="print each message received as a JSON line",
        description="Join the network through --bootstrap and print each message received on "
        'stdout, as one JSON line: {"from", "verified", "hops", "data"}. When no bootstrap '
        "peer can be reached, or the last link is lost, it says so on stderr and keeps trying.",
    )
    _add_peer_options(listen, server=False, bootstrap_required=True)
    add_metrics_arguments(listen)
    listen.add_argument(
        "--echo",
        action="store_true",
        help="answer each request with what it carried (without it, requests get an error)",
    )

    send = sub.add_parser(
        "send",
        help="deliver one message, wait for its receipt and exit",
        description="Deliver one message, end to end encrypted, and wait for the\n"
        "destination's receipt.",
        epilog=_SEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_peer_options(send, server=False, bootstrap_required=True)
    _add_target_options(send)
    send.add_argument(
        "--no-wait",
        action="store_true",
        help="fire and forget: exit once the message has left this peer, without a receipt",
    )

    request = sub.add_parser(
        "request",
        help="send a request, print the reply as a JSON line and exit",
        description="Send a request to a peer's request handler (see 'peer-relay listen\n"
        "--echo') and print its reply on stdout as one JSON line.",
        epilog=_REQUEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_peer_options(request, server=False, bootstrap_required=True)
    _add_target_options(request)

    ident = sub.add_parser(
        "id",
        help="print the id of an identity file (creating it)",
        description="Print the peer id of the key in --identity FILE, creating the key (mode "
        "0600) if the file does not exist. Give the same file to serve, listen, send or "
        "request to be that peer.",
    )
    ident.add_argument(
        "--identity",
        metavar="FILE",
        required=True,
        help=f"{_IDENTITY_HELP} (required: an id is of use only with its key kept)",
    )
    ident.add_argument(
        "-v", "--verbose", action="count", default=0, help="show the traceback of an error"
    )

    demo = sub.add_parser(
        "demo",
        help="start a local network and watch messages hop through it",
        description="Start a network of peers on 127.0.0.1 in this process, let them link up, "
        "then send messages between peers that are not directly linked and show each one's "
        "hops and time.",
    )
    demo.add_argument("--nodes", type=int, default=20, help="peers to start (default 20)")
    demo.add_argument("--messages", type=int, default=10, help="messages to send (default 10)")
    demo.add_argument("--max-links", type=int, default=6, help="links per peer (default 6)")
    demo.add_argument(
        "--settle", type=float, default=15.0, help="most seconds to form links (default 15)"
    )
    demo.add_argument(
        "--seed", type=int, default=None, help="seed for the random pairs (default: random)"
    )

    sub.add_parser(
        "status",
        help="print a running peer's links, traffic and drops (see 'peer-relay status --help')",
        add_help=False,
    )
    sub.add_parser(
        "simulate",
        help="simulate a large network (see 'peer-relay simulate --help')",
        add_help=False,
    )
    _add_testbed_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["status"]:
        from .status import status_main

        return status_main(args_list[1:])
    if args_list[:1] == ["simulate"]:
        from .sim.cli import main as simulate_main

        status: int = simulate_main(args_list[1:])
        return status
    args = build_parser().parse_args(args_list)
    if args.command == "id":
        try:
            return _id(args)
        except _Refusal as exc:
            return _refused(args, exc)
    if args.command == "testbed":
        return _testbed(args)
    if args.command == "demo":
        if args.nodes < 2:
            print("peer-relay demo: --nodes must be at least 2", file=sys.stderr)
            return 2
        _setup_logging(0, logging.ERROR)
        return asyncio.run(_demo(args))
    if args.compiled:
        from .sim import compiled

        if not compiled.is_compiled():
            return _rerun_compiled(args.command, args_list)
    _setup_logging(
        args.verbose,
        logging.INFO if args.command == "serve" else logging.WARNING,
        args.log_format,
    )
    if args.compiled:
        logging.getLogger("peer_relay.cli").info("running the core compiled by mypyc")
    runners = {"serve": _serve, "listen": _listen, "send": _send, "request": _request}
    try:
        return asyncio.run(runners[args.command](args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Refusal as exc:
        return _refused(args, exc)
    except MetricsError as exc:  # --metrics cannot listen: one line, what to do
        refusal = _Refusal(str(exc))
        refusal.__cause__ = exc
        return _refused(args, refusal)
    except (ValueError, TypeError) as exc:
        # Arguments only the peer can judge (a bootstrap URL, a port, a message too large).
        if args.verbose:
            traceback.print_exc()
        print(f"peer-relay {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if args.verbose:
            return _failed(args, "failed", exc)
        text = str(exc) or type(exc).__name__
        return _failed(args, "failed", f"{text} (run with -v for the traceback)")


def _refused(args: argparse.Namespace, exc: _Refusal) -> int:
    """Report a refusal in one line on stderr (under ``-v``, after the traceback behind it)."""
    if args.verbose:
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
    print(f"peer-relay {args.command}: {exc}", file=sys.stderr, flush=True)
    return exc.status


def _rerun_compiled(command: str, args_list: list[str]) -> int:
    """Build the compiled core if it is not built yet, then become ``peer-relay args_list``
    running on it (the same process id, so signals reach it as before)."""
    from .sim import compiled

    if not compiled.is_built():
        print(f"peer-relay {command}: compiling the core with mypyc (once) ...", file=sys.stderr)
    try:
        target = compiled.build()
    except compiled.CompileError as exc:
        first = str(exc).splitlines()[0]
        print(
            f"peer-relay {command}: cannot compile the core ({first}); run without --compiled",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "peer_relay.cli", *args_list]
    os.execve(sys.executable, argv, compiled.environ(target))


if __name__ == "__main__":
    sys.exit(main())
