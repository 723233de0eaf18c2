"""The ``peer-relay`` command: serve, listen, send, id, demo and simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .identity import Identity
from .ids import parse_id
from .node import PeerRelay


def _add_peer_options(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
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
        "--ice-server", action="append", default=[], metavar="URL", help="STUN/TURN URL"
    )
    parser.add_argument("--max-links", type=int, default=20, help="link budget (default 20)")
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
        max_links=args.max_links,
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


async def _send(args: argparse.Namespace) -> int:
    target = parse_id(args.id)
    try:
        data = json.loads(args.json)
    except json.JSONDecodeError as exc:
        print(f"peer-relay send: JSON argument is not valid JSON: {exc}", file=sys.stderr)
        return 2
    peer = _peer_from_args(args, server=False)
    async with peer:
        try:
            await peer.wait_for_peers(1, timeout=args.timeout)
        except TimeoutError:
            print("peer-relay send: could not join the network", file=sys.stderr)
            return 1
        peer.send(target, data)
        await peer.drain(0)
    print(f"sent to {target.hex()}", file=sys.stderr)
    return 0


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
        deadline = time.perf_counter() + args.settle
        target = min(args.nodes - 1, max(2, args.max_links // 2))
        last_total, stable_since = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            links = [len(n.peers) for n in nodes]
            total = sum(links)
            progress(
                f"  forming links: {total // 2} links, "
                f"{sum(1 for x in links if x >= target)}/{len(nodes)} peers with {target}+ links"
            )
            if total != last_total:
                last_total, stable_since = total, time.perf_counter()
            if min(links) >= target and time.perf_counter() - stable_since > 1.0:
                break
            await asyncio.sleep(0.2)
        links = [len(n.peers) for n in nodes]
        if interactive:
            out.write("\n")
        print(
            f"Network formed in {time.perf_counter() - started:.1f}s: "
            f"{sum(links) // 2} links, {min(links)}-{max(links)} per peer "
            f"(mean {sum(links) / len(links):.1f})."
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
            f"{'signature verified' if verified else 'UNVERIFIED'}"
        )
    for task in readers:
        task.cancel()
    if all_hops:
        print(
            f"\n{len(all_hops)}/{count} delivered; hops mean {sum(all_hops) / len(all_hops):.2f},"
            f" max {max(all_hops)}; mean time {sum(times) / len(times) * 1000:.2f} ms."
        )
    return 0 if len(all_hops) == count else 1


# ----------------------------------------------------------------------------- entry


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``peer-relay`` command."""
    parser = argparse.ArgumentParser(
        prog="peer-relay",
        description="Deliver messages to peers named only by their id, through a relay network.",
    )
    parser.add_argument("--version", action="version", version=f"peer-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a peer with a WebSocket server")
    _add_peer_options(serve, server=True)

    listen = sub.add_parser("listen", help="print each message received as a JSON line")
    _add_peer_options(listen, server=False)

    send = sub.add_parser("send", help="deliver one message and exit")
    _add_peer_options(send, server=False)
    send.add_argument("id", help="target peer id (40 hex digits)")
    send.add_argument("json", help="the message, as JSON")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to join (default 10)")

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
    if args.command == "demo":
        if args.nodes < 2:
            print("peer-relay demo: --nodes must be at least 2", file=sys.stderr)
            return 2
        _setup_logging(0, logging.ERROR)
        return asyncio.run(_demo(args))
    _setup_logging(args.verbose, logging.INFO if args.command == "serve" else logging.WARNING)
    runners = {"serve": _serve, "listen": _listen, "send": _send}
    try:
        return asyncio.run(runners[args.command](args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError) as exc:
        print(f"peer-relay {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
