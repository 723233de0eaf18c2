"""A hostile peer, run in its own process by the adversarial tests and benchmarks/hostile.py.

    python tests/adversarial/attacker.py MODE --url WS_URL [options]

It prints one JSON object a line on stdout (``{"event": ...}``), ``done`` last with its
counters, and reads commands on stdin, a line each: ``go`` starts what waits for it
(``--wait``), ``stop`` (or the end of input) ends an attack that would go on. Modes:

- ``idle``: WebSocket connections that complete the upgrade and never send a hello, from
  ``--source`` (127.0.0.2 by default) and the next ``--sources - 1`` loopback addresses, kept
  open and reopened;
- ``flood``: an authenticated peer sending signed ``findPeers`` at ``--rate`` to ``--target``,
  in its own name, in the names of ``--senders`` keys of its own, or in another peer's name
  (``--as-id``, ``--as-key``: a forgery);
- ``probe``: an honest peer asking ``--target`` ``--count`` findPeers at ``--rate`` and counting
  the foundPeers answers;
- ``junk``: an authenticated peer sending ``--mib`` MiB of each junk ``--shapes`` to
  ``--target``, with bad signatures;
- ``offers``: signed handshake-offers to ``--target`` from ``--senders`` fresh keys, naming
  ``--ws-url`` and the ``--bad-url`` URLs, plus ``--repeat`` offers from one sender;
- ``frames``: the frames of ``--frames-file`` (a JSON list of strings) sent in order on a link
  authenticated with ``--key`` (or with no handshake at all: ``--raw``), ``--rounds`` times,
  then ``--linger``.

Links come from ``--source`` (a loopback address; the default one if not given). A link the
target closes is opened again where ``--reconnect`` says so, with the same key (one persistent
attacker) or, with ``--fresh``, a new key each time (a Sybil).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import forge
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from peer_relay import Identity, wire

ATTEMPT_TIMEOUT = 10.0


def emit(event: str, **fields: Any) -> None:
    """One line of the report."""
    print(json.dumps({"event": event, **fields}), flush=True)


class Control:
    """The commands read from stdin: ``go`` and ``stop``."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.stop = asyncio.Event()

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "go":
                self.go.set()
            elif line == "stop" or not line:
                self.stop.set()
                self.go.set()
                return

    async def wait_go(self) -> None:
        await self.go.wait()
        self.go.clear()


async def until_stopped(work: Coroutine[Any, Any, None], control: Control) -> None:
    """Run ``work`` until it ends or ``stop`` comes (a send may block while the victim does
    not read: the attack is cancelled then, not left to notice)."""
    task = asyncio.create_task(work)
    stop = asyncio.create_task(control.stop.wait())
    await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stop):
        pending.cancel()
    await asyncio.gather(task, stop, return_exceptions=True)


async def dial(url: str, source: str = "") -> ClientConnection:
    """A WebSocket connection to ``url`` from local address ``source`` (any if empty)."""
    return await connect(
        url,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=ATTEMPT_TIMEOUT,
        close_timeout=2,
        **({"local_addr": (source, 0)} if source else {}),
    )


async def open_link(args: argparse.Namespace, last: Link | None = None) -> Link:
    """A link from ``--source``: a new one with a fresh key, or in place of ``last`` (closed by
    the target) with the same key unless ``--fresh``."""
    me = last.me if last is not None and not args.fresh else Identity.generate()
    return await Link.open(args.url, me, args.source)


class Link:
    """A link to a peer of ours, opened with the hello and proof of ``me``; a reader task answers
    pings and counts what arrives."""

    pongs = 0
    """Pongs sent, on every link of this process."""

    def __init__(self, ws: ClientConnection, me: Identity, peer_hex: str) -> None:
        self.ws = ws
        self.me = me
        self.peer_hex = peer_hex
        self.received: Counter[str] = Counter()
        """Frames for us by message type, and ``(not for us)``: the frames we are to relay."""
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, me: Identity, source: str = "") -> Link:
        """Connect from ``source`` (a local address; the default one if empty), say hello and
        prove ``me``."""
        ws = await dial(url, source)
        hello = wire.parse_hello(orjson.loads(await ws.recv()))
        mine = os.urandom(16)
        await ws.send(wire.hello_frame(me.id, me.public_key, mine).decode())
        await ws.recv()  # the remote's proof: an attacker does not care
        proof = me.sign(wire.link_proof_bytes(hello.nonce or b"", mine, hello.peer_id, me.id))
        await ws.send(wire.proof_frame(proof).decode())
        return cls(ws, me, hello.peer_id.hex())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                obj = orjson.loads(message)
                pr = obj.get("pr") if type(obj) is dict else None
                if type(pr) is dict and "ping" in pr:
                    await self.ws.send(wire.link_control_frame("pong", pr["ping"]).decode())
                    Link.pongs += 1
                    continue
                data = obj.get("data") if type(obj) is dict else None
                kind = data.get("type") if type(data) is dict else None
                if type(obj) is dict and obj.get("to") == self.me.id.hex():
                    self.received[str(kind)] += 1
                else:
                    self.received["(not for us)"] += 1
        except ConnectionClosed:
            pass
        finally:
            self.close_reason = self.ws.close_reason or f"code {self.ws.close_code}"
            self.closed.set()

    async def send(self, frame: bytes | str) -> bool:
        """Send one frame; False once the link is closed."""
        if self.closed.is_set():
            return False
        try:
            await self.ws.send(frame.decode() if isinstance(frame, bytes) else frame)
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await self.reader


# ----------------------------------------------------------------------------- idle sockets


async def idle(args: argparse.Namespace, control: Control) -> None:
    """Connections that upgrade and then say nothing, kept open, reopened when closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * args.count + 256
    for limit in (max(wanted, hard), hard):  # the hard limit too, where allowed (as root)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(limit, wanted)), limit))
            break
    host, port = args.url.removeprefix("ws://").rsplit(":", 1)
    first = [int(part) for part in (args.source or "127.0.0.2").split(".")]
    sources = [
        ".".join(str(part) for part in [*first[:3], first[3] + i]) for i in range(args.sources)
    ]
    counts: Counter[str] = Counter()
    open_now = 0

    async def one(source: str) -> None:
        nonlocal open_now
        while not control.stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port), local_addr=(source, 0)),
                    ATTEMPT_TIMEOUT,
                )
                counts["connected"] += 1
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write(
                    f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ATTEMPT_TIMEOUT)
                if not head.startswith(b"HTTP/1.1 101"):
                    counts["refused"] += 1
                    continue
                counts["upgraded"] += 1
                open_now += 1
                try:
                    while await reader.read(1 << 16):
                        pass  # the victim's hello, a close frame: never answered
                finally:
                    open_now -= 1
                counts["closed_by_victim"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                counts["failed"] += 1
            finally:
                if writer is not None:
                    writer.close()
            if args.reopen_delay:
                await asyncio.sleep(args.reopen_delay)

    tasks = [asyncio.create_task(one(sources[i % len(sources)])) for i in range(args.count)]
    emit("ready", sources=sources)
    while not control.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(control.stop.wait(), 0.5)
        emit("progress", open=open_now, **counts)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit("done", **counts)


# ----------------------------------------------------------------------------- control flood


async def flood(args: argparse.Namespace, control: Control) -> None:
    """Signed findPeers at ``--rate`` a second, as long as it is not stopped."""
    pool = [Identity.generate() for _ in range(args.senders)] if args.senders > 1 else []
    forged = (args.as_id, base64.urlsafe_b64decode(args.as_key + "==")) if args.as_id else None
    sent = links = 0
    closes: list[str] = []
    link = await open_link(args)
    links += 1
    emit("ready", id=link.me.id.hex())
    if args.wait:
        await control.wait_go()
    start = time.monotonic()

    async def pump() -> None:
        nonlocal link, links, sent
        while True:
            due = int((time.monotonic() - start) * args.rate) - sent
            if due <= 0:
                await asyncio.sleep(0.002)
                continue
            for _ in range(min(due, 200)):
                signer = pool[sent % len(pool)] if pool else link.me
                if forged is None:
                    frame = forge.signed(
                        signer, args.target, wire.FIND_PEERS, args.target, via_hex=link.me.id.hex()
                    )
                else:  # in another's name, naming its key: only the signature is wrong
                    frame = forge.signed(
                        signer,
                        args.target,
                        wire.FIND_PEERS,
                        args.target,
                        sender_hex=forged[0],
                        key=forged[1],
                        via_hex=link.me.id.hex(),
                    )
                if not await link.send(frame):
                    closes.append(link.close_reason or "closed")
                    if not args.reconnect:
                        return
                    link = await open_link(args, link)
                    links += 1
                    break
                sent += 1
            await asyncio.sleep(0)  # let the commands in

    await until_stopped(pump(), control)
    elapsed = time.monotonic() - start
    answers = link.received[wire.FOUND_PEERS]
    await link.close()
    emit("done", sent=sent, seconds=elapsed, links=links, closes=closes, last_answers=answers)


async def probe(args: argparse.Namespace, control: Control) -> None:
    """An honest peer: ``--count`` findPeers at ``--rate``, its foundPeers answers counted."""
    link = await open_link(args)
    emit("ready", id=link.me.id.hex(), key=wire.b64encode(link.me.public_key))
    if args.wait:
        await control.wait_go()
    start = time.monotonic()
    for i in range(args.count):
        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        await link.send(forge.signed(link.me, args.target, wire.FIND_PEERS, args.target))
    deadline = time.monotonic() + args.grace
    while link.received[wire.FOUND_PEERS] < args.count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    emit(
        "done",
        requests=args.count,
        answers=link.received[wire.FOUND_PEERS],
        closed=link.close_reason,
        seconds=time.monotonic() - start,
    )
    await link.close()


# ----------------------------------------------------------------------------- junk


async def junk(args: argparse.Namespace, control: Control) -> None:
    """``--mib`` MiB of each junk shape, sent as fast as the target reads it. ``done`` counts
    the links opened and lists the reasons the target gave for closing them."""
    link = await open_link(args)
    links, closes = 1, []
    emit("ready", id=link.me.id.hex())

    async def relink() -> bool:
        nonlocal link, links
        # A failed send can come before the reader has seen the close frame: wait for it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.closed.wait(), 5.0)
        closes.append(link.close_reason or "closed")
        if not args.reconnect or len(closes) > args.max_links:
            return False
        link = await open_link(args, link)
        links += 1
        return True

    for shape in args.shapes:
        if args.wait:
            emit("shape-ready", shape=shape)
            await control.wait_go()
        if control.stop.is_set() or (link.closed.is_set() and not await relink()):
            break
        frames = forge.JunkFrames(link.me, args.target, shape, args.frame_kib << 10)
        sent = sent_bytes = 0
        closed_before, start = len(closes), time.monotonic()
        while sent_bytes < args.mib << 20 and not control.stop.is_set():
            frame = frames.frame()
            if await link.send(frame):
                sent += 1
                sent_bytes += len(frame)
            elif await relink():
                frames = forge.JunkFrames(link.me, args.target, shape, args.frame_kib << 10)
            else:
                break
        emit(
            "shape-done",
            shape=shape,
            frames=sent,
            bytes=sent_bytes,
            closes=closes[closed_before:],
            seconds=time.monotonic() - start,
        )
    await control.stop.wait()
    if link.closed.is_set():
        closes.append(link.close_reason or "closed")
    emit("done", links=links, closes=closes, open=not link.closed.is_set(), pongs=Link.pongs)
    await link.close()


# ----------------------------------------------------------------------------- offers


async def offers(args: argparse.Namespace, control: Control) -> None:
    """Signed handshake-offers from fresh keys naming URLs we chose, at ``--rate``."""
    link = await open_link(args)
    emit("ready", id=link.me.id.hex())
    plan: list[tuple[Identity, str]] = []
    for i in range(args.senders):
        bad = args.bad_url[i // 2 % len(args.bad_url)] if args.bad_url and i % 2 else None
        plan.append((Identity.generate(), bad or args.ws_url))
    repeater = Identity.generate()
    step = 1 + len(plan) // max(1, args.repeat)
    for i in range(args.repeat):
        plan.insert(i * step, (repeater, args.repeat_url))
    sent = 0
    start = time.monotonic()
    for i, (sender, url) in enumerate(plan):
        if control.stop.is_set():
            break
        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        offer = {"ws": url, "wrtc": False}
        frame = forge.signed(
            sender, args.target, wire.HANDSHAKE_OFFER, offer, via_hex=link.me.id.hex()
        )
        if await link.send(frame):
            sent += 1
    emit("sent", sent=sent, seconds=time.monotonic() - start, repeater=repeater.id.hex())
    await control.stop.wait()
    emit("done", sent=sent, open=not link.closed.is_set(), received=dict(link.received))
    await link.close()


# ----------------------------------------------------------------------------- given frames


async def frames(args: argparse.Namespace, control: Control) -> None:
    """The frames of ``--frames-file``, in order, ``--rounds`` times (on a new link with a
    fresh key whenever the target closed the last), then ``--linger`` seconds of listening."""
    batch: list[str] = json.loads(Path(args.frames_file).read_text())
    if args.raw:
        link = Link(await dial(args.url, args.source), Identity.generate(), "")
    else:
        me = Identity(bytes.fromhex(args.key)) if args.key else Identity.generate()
        link = await Link.open(args.url, me, args.source)
    emit("ready", id=link.me.id.hex(), peer=link.peer_hex)
    if args.wait:
        await control.wait_go()
    sent = 0
    closes: list[str] = []
    for round_ in range(args.rounds):
        if round_:
            # The target closes a link in its own time: a round waits for that (or --linger).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.closed.wait(), args.linger)
            if link.closed.is_set():
                closes.append(link.close_reason or "closed")
                link = await Link.open(args.url, Identity.generate(), args.source)
        for frame in batch:
            if not await link.send(frame):
                break
            sent += 1
    emit("sent", sent=sent)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(link.closed.wait(), args.linger)
    if link.closed.is_set():
        closes.append(link.close_reason or "closed")
    emit(
        "done",
        sent=sent,
        open=not link.closed.is_set(),
        close_reason=link.close_reason,
        closes=closes,
        received=dict(link.received),
    )
    await link.close()


MODES = {
    "idle": idle,
    "flood": flood,
    "probe": probe,
    "junk": junk,
    "offers": offers,
    "frames": frames,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", required=True, help="the WebSocket URL of the peer to attack")
    parser.add_argument("--target", default="", help="hex id the messages are addressed to")
    parser.add_argument("--wait", action="store_true", help="wait for 'go' on stdin first")
    parser.add_argument("--source", default="", help="local address (idle: 127.0.0.2)")
    parser.add_argument("--reconnect", action="store_true", help="relink when closed")
    parser.add_argument("--fresh", action="store_true", help="... with a fresh key each time")
    # idle
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--reopen-delay", type=float, default=0.0)
    # flood, probe, offers
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--as-id", default="", help="flood in this peer's name (hex id) ...")
    parser.add_argument("--as-key", default="", help="... naming its key (base64url; --as-key=K)")
    # junk
    parser.add_argument("--shapes", nargs="+", default=sorted(forge.JUNK))
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--frame-kib", type=int, default=64)
    parser.add_argument("--max-links", type=int, default=1000)
    # offers
    parser.add_argument("--ws-url", default="")
    parser.add_argument("--bad-url", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--repeat-url", default="")
    # frames
    parser.add_argument("--frames-file", default="")
    parser.add_argument("--key", default="", help="private key (hex) to link with")
    parser.add_argument("--raw", action="store_true", help="no hello or proof of our own")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--linger", type=float, default=1.0)
    return parser.parse_args(argv)


async def main(argv: list[str]) -> None:
    args = parse(argv)
    control = Control()
    reader = asyncio.create_task(control.read())
    try:
        await MODES[args.mode](args, control)
    finally:
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
