"""The ``peer-relay`` command: serve, listen, send, request, id, demo and simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__, wire
from .errors import DeliveryError, RemoteError
from .identity import Identity
from .ids import parse_id
from .node import PeerRelay

EXIT_OK = 0
EXIT_FAILED = 1
"""Not delivered, no reply, not sent (``--no-wait``), or any other failure at run time."""
EXIT_USAGE = 2
"""Bad arguments: reported at once, before joining the network (argparse's convention)."""
EXIT_REMOTE = 3
"""``request``: the remote request handler failed, or the remote has none."""
EXIT_INTERRUPTED = 130

_SEND_EPILOG = """\
exit status:
  0  delivered: the destination's authenticated receipt came back
     (with --no-wait: the message left this peer; nothing is confirmed)
  1  not delivered within --timeout: could not join the network, or the
     destination did not answer (offline, unreachable, no such id); the
     reason is on stderr
  2  bad arguments (malformed id, JSON that does not parse, --timeout not > 0)
"""

_REQUEST_EPILOG = """\
exit status:
  0  the reply came back; it is printed on stdout as one JSON line
  1  no reply within --timeout: could not join the network, or the
     destination did not answer (offline, unreachable, no such id)
  2  bad arguments (malformed id, JSON that does not parse, --timeout not > 0)
  3  remote error: the destination's request handler failed, or it has
     none (it runs no 'peer-relay listen --echo'); its message is on stderr
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what was wrong, and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


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


def _add_peer_options(
    parser: argparse.ArgumentParser, *, server: bool, bootstrap_required: bool = False
) -> None:
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        required=bootstrap_required,
        metavar="URL",
        help="WebSocket URL of a peer already in the network (repeatable)",
    )
    parser.add_argument("--identity", metavar="FILE", help="key file (created, mode 0600)")
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="admit peers of the original 0.0.2 and unsigned messages (marked unverified)",
    )
    parser.add_argument("--webrtc", action="store_true", help="enable WebRTC links (aiortc)")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN or TURN server for WebRTC (stun:HOST:PORT, turn:HOST:PORT; repeatable)",
    )
    parser.add_argument("--ice-username", metavar="NAME", help="TURN username")
    parser.add_argument("--ice-credential", metavar="SECRET", help="TURN password")
    parser.add_argument(
        "--direct-after",
        type=int,
        default=32,
        metavar="N",
        help="link directly to a peer after N messages with it through relays within 30 s "
        "(default 32; 0: never)",
    )
    parser.add_argument("--max-links", type=int, default=20, help="link budget (default 20)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the core compiled by mypyc: faster (built once per version, minutes; "
        "needs a C compiler and Python's headers)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    if server:
        parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
        parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
        parser.add_argument("--public-url", help="URL to advertise if not ws://HOST:PORT")
        parser.add_argument(
            "--web", action="store_true", help="also serve the browser build and a demo page"
        )
        parser.add_argument("--web-port", type=int, default=0, help="port of --web (0: any)")


def _peer_from_args(args: argparse.Namespace, *, server: bool) -> PeerRelay:
    identity = Identity.load_or_create(args.identity) if args.identity else None
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
        **extra,
    )


def _setup_logging(verbose: int, default: int = logging.WARNING) -> None:
    level = {0: default, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("peer_relay").setLevel(level)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(args: argparse.Namespace) -> int:
    peer = _peer_from_args(args, server=True)
    async with peer:
        print(f"id  {peer.id.hex()}", flush=True)
        print(f"url {peer.url}", flush=True)
        if args.web:
            from .browser.build import build
            from .browser.server import WebServer

            root = await asyncio.to_thread(build)
            async with WebServer(root, {"bootstrap": [peer.url]}) as web:
                print(f"web {await web.start(args.host, args.web_port)}", flush=True)
                await _until_signalled()
        else:
            await _until_signalled()
        print("shutting down", file=sys.stderr, flush=True)
    return 0


async def _listen(args: argparse.Namespace) -> int:
    peer = _peer_from_args(args, server=False)
    if args.echo:
        peer.on("request", _echo)
    async with peer:
        print(f"listening as {peer.id.hex()}", file=sys.stderr, flush=True)
        stop = asyncio.ensure_future(_until_signalled())
        reader = asyncio.ensure_future(_print_messages(peer))
        await asyncio.wait([stop, reader], return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        stop.cancel()
    return 0


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
    """Wait for a first link; None once there is one, else why there is none."""
    try:
        await peer.wait_for_peers(1, timeout=deadline - time.monotonic())
    except TimeoutError:
        urls = ", ".join(args.bootstrap)
        return f"could not join the network: no link to {urls} within {args.timeout:g}s"
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
    identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
    print(identity.id.hex())
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
    tb.add_argument("--nat", choices=("cone", "symmetric", "none"), default="none", help="NAT kind")
    tb.add_argument(
        "--nated", type=int, default=None, metavar="N", help="hosts behind NAT (default: half)"
    )
    tb.add_argument("--delay", type=_duration_arg, help="one way (default 30ms; --local: 0)")
    tb.add_argument("--jitter", type=_duration_arg, default=0.0, help="(default 0ms)")
    tb.add_argument("--loss", type=_share_arg, help="per packet (default 1%%; --local: 0)")
    tb.add_argument("--messages", type=int, default=1000, help="per phase (default 1000)")
    tb.add_argument("--rate", type=float, default=50.0, help="messages per second (default 50)")
    tb.add_argument("--mode", choices=("send", "deliver"), default="send")
    tb.add_argument("--busy-pairs", type=int, default=0, metavar="N", help="busy NATed pairs")
    tb.add_argument("--busy-messages", type=int, default=80, metavar="N", help="per busy pair")
    tb.add_argument("--churn", type=int, default=0, metavar="N", help="peers killed, restarted")
    tb.add_argument("--partition", action="store_true", help="cut the hosts in two, then heal")
    tb.add_argument("--turn", action="store_true", help="run coturn (STUN and TURN)")
    tb.add_argument("--stun-only", action="store_true", help="with --turn: give peers STUN only")
    tb.add_argument("--wrtc", choices=("nat", "all", "none"), default="nat", help="WebRTC on")
    tb.add_argument("--max-links", type=int, default=None, help="link budget per peer")
    tb.add_argument("--seed", type=int, default=0, help="seed of pairs, loss and churn")
    tb.add_argument("--local", action="store_true", help="all on 127.0.0.1, no namespaces")
    tb.add_argument("--json", action="store_true", help="print the report as JSON")
    tb.add_argument("--plot", metavar="FILE", help="write a figure (needs matplotlib)")
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
        help="seconds to wait in all, joining the network included (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``peer-relay`` command."""
    parser = _Parser(
        prog="peer-relay",
        description="Deliver messages to peers named only by their id, through a relay network.",
    )
    parser.add_argument("--version", action="version", version=f"peer-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a peer with a WebSocket server")
    _add_peer_options(serve, server=True)

    listen = sub.add_parser("listen", help="print each message received as a JSON line")
    _add_peer_options(listen, server=False)
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

    ident = sub.add_parser("id", help="print the id of an identity file (creating it)")
    ident.add_argument("--identity", metavar="FILE", help="key file (created, mode 0600)")

    demo = sub.add_parser("demo", help="start a local network and watch messages hop through it")
    demo.add_argument("--nodes", type=int, default=20, help="peers to start (default 20)")
    demo.add_argument("--messages", type=int, default=10, help="messages to send (default 10)")
    demo.add_argument("--max-links", type=int, default=6, help="links per peer (default 6)")
    demo.add_argument("--settle", type=float, default=15.0, help="max seconds to form links")
    demo.add_argument("--seed", type=int, default=None, help="seed for the random pairs")

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
    if args_list[:1] == ["simulate"]:
        from .sim.cli import main as simulate_main

        status: int = simulate_main(args_list[1:])
        return status
    args = build_parser().parse_args(args_list)
    if args.command == "id":
        return _id(args)
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
    _setup_logging(args.verbose, logging.INFO if args.command == "serve" else logging.WARNING)
    if args.compiled:
        logging.getLogger("peer_relay.cli").info("running the core compiled by mypyc")
    runners = {"serve": _serve, "listen": _listen, "send": _send, "request": _request}
    try:
        return asyncio.run(runners[args.command](args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, TypeError) as exc:
        # Arguments only the peer can judge (a bootstrap URL, a port, a message too large).
        if args.verbose:
            traceback.print_exc()
        print(f"peer-relay {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        return _failed(args, "failed", exc)


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
