"""Side by side (issue 16): this package, the original peer-relay 0.0.2 under Node, and bare
WebSocket chains, in one run, rounds alternating between the columns.

The shape is c1 -> c2 -> c3 on 127.0.0.1 (c2 relays; c1 and c3 run no server, so they cannot
link). Columns, each a real run in this process tree:

  ours-unsigned   PeerRelay(sign=False, allow_unsigned=True): plain messages, as 0.0.2 sends
  ours-sealed     PeerRelay() defaults: send() sealed end to end in sessions (authenticated)
  0.0.2-nodeflate peer-relay@0.0.2 in one Node process, ws permessage-deflate off
  0.0.2           the same as shipped (ws 1.1.5 compresses every message)
  ours-compiled   ours-unsigned in a child process importing the copy of the package whose hot
                  modules mypyc compiled (``peer_relay.sim.compiled``: core, table, ids, wire,
                  events, host, sealing; node and transports stay Python), as
                  ``peer-relay serve --compiled`` runs it. Built before the
                  rounds, once per version of the sources (a few minutes; needs a C compiler,
                  else the column is skipped with a note)
  bare-websockets asyncio + websockets + orjson: c2 parses, appends to ``path``, re-serialises,
                  forwards; nothing else (no ids, no signatures, no routing table, no dedup)
  bare-websockets-sansio
                  the same chain on websockets' sans-I/O layer (``ServerProtocol`` and
                  ``ClientProtocol``) driven by plain ``asyncio.Protocol`` objects: frames
                  handled in ``data_received``, written straight to the transport, no task or
                  future per message; websockets at its best, to set against bare-picows
  bare-picows     the same chain on picows (Cython WebSocket layer for asyncio)

For each, and for a small (~24 B) and a 1 KiB payload (a random hex body; 64 of them in turn,
so that compression cannot reuse the previous message whole):

- throughput: c1 streams ``--messages`` to c3 as fast as its flow control allows (batches of
  200, then wait until its link's send buffer is below 256 KiB); msg/s counts only messages
  that arrive, over the time until the last one arrived; the delivered fraction is reported.
- RTT: ping-pong c1 -> c3 -> c1 through c2, ``--pings`` round trips one at a time; p50, p99.

Then memory: ``--peers`` live peers in one fresh process (ours, defaults: sealed sessions) and
the same number of 0.0.2 peers in one fresh Node process (compression off), each listening on
127.0.0.1 and bootstrapped from a random earlier one; RSS growth per peer once the link count
has been stable for 3 s, and delivery of ``--sends`` messages between random pairs.

What it does not show: loopback only (no network latency, no loss, no NAT), one process per
implementation (c1, c2, c3 share one CPU core), small networks, WebSocket links only (no
WebRTC), no churn and no hostile peers, and 0.0.2 without any of the checks that ours makes.

Needs Node.js 20 and npm for the 0.0.2 columns (``peer-relay@0.0.2`` is installed once into
``.cache/npm-original``, as the interop tests do); without them those columns are skipped.
picows is what our own WebSocket links run on; websockets comes with the test dependencies.

    python benchmarks/compare.py [--rounds 5] [--messages 20000] [--pings 2000] [--peers 200]
                                 [--sends 300] [--columns a,b,...] [--sizes small,1KiB]
                                 [--no-memory] [--quick] [--json]

A default run (all eight columns and the memory test) takes about 5-6 minutes on 2 cores;
``--quick`` (1 round, 2,000 messages, 200 pings, 30 peers) about 40 s. Add 1.5-2 minutes before
the rounds whenever ours-compiled has to compile the current sources (the cache is keyed by a
hash of every source file of the package, so any edit means a new build). Progress lines go to
stderr, the summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPILED_CHILD = "PEER_RELAY_COMPARE_COMPILED"
"""Set in the environment of the ours-compiled child, whose PYTHONPATH starts with the compiled
copy of the package: then ``src`` must not go first on the import path."""
if not os.environ.get(COMPILED_CHILD):
    sys.path.insert(0, str(REPO / "src"))

import orjson  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402
from websockets.client import ClientProtocol  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.frames import CloseCode, Frame, Opcode  # noqa: E402
from websockets.http11 import Request, Response  # noqa: E402
from websockets.protocol import State  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402

from peer_relay import PeerRelay  # noqa: E402

try:
    import picows
except ImportError:  # optional: the bare-picows column is skipped
    picows = None  # type: ignore[assignment]

PICOWS_HINT = ".venv/bin/pip install picows"

SIZES = {"small": 4, "1KiB": 1004}
"""Length of the hex body ``b`` in ``{"seq": N, "b": "..."}``: 24 B and 1,024 B as JSON."""
POOL = 64
"""Distinct bodies per size, used in turn."""
BATCH = 200
HIGH_WATER = 256 << 10
PING_TIMEOUT = 5.0
STREAM_TIMEOUT = 60.0

OURS_MODES: dict[str, dict[str, Any]] = {
    "ours-unsigned": {"sign": False, "allow_unsigned": True},
    "ours-sealed": {},
}
COMPILED_MODE = "ours-unsigned"
"""What the ours-compiled column runs, in a child process on the mypyc-compiled modules."""

Result = dict[str, Any]
Raw = bytes | bytearray | memoryview
"""A received frame's payload, as the WebSocket libraries hand it over."""


def bodies(length: int) -> list[str]:
    return [os.urandom((length + 1) // 2).hex()[:length] for _ in range(POOL)]


def summarise(
    messages: int, received: int, elapsed: float, rtts: list[float], lost: int, **extra: Any
) -> Result:
    rtts.sort()
    n = len(rtts)
    return {
        "messages": messages,
        "received": received,
        "delivery": received / messages,
        "msg_per_s": received / elapsed if elapsed > 0 else 0.0,
        "rtt_p50_us": statistics.median(rtts) * 1e6 if rtts else None,
        "rtt_p99_us": rtts[max(int(n * 0.99) - 1, 0)] * 1e6 if rtts else None,
        "pings_lost": lost,
        **extra,
    }


# --------------------------------------------------------------------------- ours


async def ours_unit(mode: str, body_len: int, messages: int, pings: int) -> Result:
    opts = OURS_MODES[mode]
    pool = bodies(body_len)
    # The inner peers need c2.url, so the blocks cannot be merged.
    async with PeerRelay(port=0, host="127.0.0.1", **opts) as c2:  # noqa: SIM117
        async with (
            PeerRelay(bootstrap=[c2.url or ""], **opts) as c1,
            PeerRelay(bootstrap=[c2.url or ""], **opts) as c3,
        ):
            await c1.wait_for_peers(1)
            await c3.wait_for_peers(1)
            await asyncio.sleep(0.5)  # let discovery traffic settle before measuring
            assert c3.id not in c1.peers, "c1 and c3 linked directly"

            received = 0
            last = 0.0
            done = asyncio.Event()

            def on_message(data: object, sender: bytes) -> None:
                nonlocal received, last
                received += 1
                last = time.perf_counter()
                if received == messages:
                    done.set()

            c3.on("message", on_message)
            start = time.perf_counter()
            for i in range(messages):
                c1.send(c3.id, {"seq": i, "b": pool[i % POOL]})
                if i % BATCH == BATCH - 1:
                    await c1.drain(HIGH_WATER)
                    await asyncio.sleep(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), STREAM_TIMEOUT)
            c3.off("message", on_message)
            elapsed = last - start

            rtts: list[float] = []
            lost = 0
            pong: asyncio.Future[None] | None = None
            want = -1

            def echo(data: object, sender: bytes) -> None:
                c3.send(sender, data)

            def on_pong(data: Any, sender: bytes) -> None:
                if pong is not None and not pong.done() and data.get("seq") == want:
                    pong.set_result(None)

            c3.on("message", echo)
            c1.on("message", on_pong)
            loop = asyncio.get_running_loop()
            for i in range(pings):
                pong = loop.create_future()
                want = i
                t0 = time.perf_counter()
                c1.send(c3.id, {"seq": i, "b": pool[i % POOL]})
                try:
                    await asyncio.wait_for(pong, PING_TIMEOUT)
                except TimeoutError:
                    lost += 1
                    continue
                rtts.append(time.perf_counter() - t0)
            drops = sum(c2.stats["dropped"].values())
            return summarise(messages, received, elapsed, rtts, lost, relay_dropped=drops)


# --------------------------------------------------------------------------- bare chains


def envelope(to: str, sender: str, data: Any) -> bytes:
    """What 0.0.2 puts on the wire for ``client.send(to, data)``."""
    return orjson.dumps(
        {
            "to": to,
            "from": sender,
            "path": [sender],
            "nonce": str(random.randrange(10**15)),
            "data": {"type": "user", "data": data},
        }
    )


class ChainEnds:
    """What c1 and c3 do in both bare chains: c3 counts (stream) or echoes (ping-pong)."""

    def __init__(self, messages: int) -> None:
        self.id1, self.id2, self.id3 = (os.urandom(20).hex() for _ in range(3))
        self.messages = messages
        self.received = 0
        self.last = 0.0
        self.done = asyncio.Event()
        self.echo = False
        self.pong: asyncio.Future[None] | None = None
        self.want = -1

    def at_c3(self, raw: Raw) -> bytes | None:
        """c3 got a frame: a reply to send back, or None."""
        msg = orjson.loads(raw)
        if self.echo:
            return envelope(msg["from"], self.id3, msg["data"]["data"])
        self.received += 1
        self.last = time.perf_counter()
        if self.received == self.messages:
            self.done.set()
        return None

    def at_c1(self, raw: Raw) -> None:
        msg = orjson.loads(raw)
        pong = self.pong
        if pong is not None and not pong.done() and msg["data"]["data"]["seq"] == self.want:
            pong.set_result(None)

    async def run(
        self,
        send: Callable[[bytes], Any],
        flow: Callable[[], Any],
        body_len: int,
        pings: int,
    ) -> Result:
        """Stream then ping-pong from c1; ``send`` may return an awaitable (websockets)."""
        pool = bodies(body_len)
        start = time.perf_counter()
        for i in range(self.messages):
            sent = send(envelope(self.id3, self.id1, {"seq": i, "b": pool[i % POOL]}))
            if sent is not None:
                await sent
            if i % BATCH == BATCH - 1:
                await flow()
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), STREAM_TIMEOUT)
        elapsed = self.last - start
        self.echo = True
        rtts: list[float] = []
        lost = 0
        loop = asyncio.get_running_loop()
        for i in range(pings):
            self.pong = loop.create_future()
            self.want = i
            t0 = time.perf_counter()
            sent = send(envelope(self.id3, self.id1, {"seq": i, "b": pool[i % POOL]}))
            if sent is not None:
                await sent
            try:
                await asyncio.wait_for(self.pong, PING_TIMEOUT)
            except TimeoutError:
                lost += 1
                continue
            rtts.append(time.perf_counter() - t0)
        return summarise(self.messages, self.received, elapsed, rtts, lost)


async def bare_websockets_unit(body_len: int, messages: int, pings: int) -> Result:
    ends = ChainEnds(messages)
    conns: dict[str, Any] = {}
    both = asyncio.Event()

    async def relay(ws: Any) -> None:  # c2
        conns[ws.request.path.lstrip("/")] = ws
        if len(conns) == 2:
            both.set()
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = orjson.loads(await ws.recv(decode=False))
                msg["path"].append(ends.id2)
                out = conns.get(msg["to"])
                if out is not None:
                    await out.send(orjson.dumps(msg), text=True)

    async def c3_loop(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                reply = ends.at_c3(await ws.recv(decode=False))
                if reply is not None:
                    await ws.send(reply, text=True)

    async def c1_loop(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                ends.at_c1(await ws.recv(decode=False))

    options: dict[str, Any] = {"compression": None, "ping_interval": None}
    async with ws_serve(relay, "127.0.0.1", 0, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        base = f"ws://127.0.0.1:{port}/"
        async with (
            ws_connect(base + ends.id1, **options) as w1,
            ws_connect(base + ends.id3, **options) as w3,
        ):
            await asyncio.wait_for(both.wait(), 10)
            tasks = [asyncio.create_task(c1_loop(w1)), asyncio.create_task(c3_loop(w3))]

            async def no_flow() -> None:  # send() already waits for the buffer to drain
                return None

            try:
                return await ends.run(lambda f: w1.send(f, text=True), no_flow, body_len, pings)
            finally:
                for task in tasks:
                    task.cancel()


CLOSE_TIMEOUT = 2.0


class SansIOConn(asyncio.Protocol):
    """One end of a connection in the bare-websockets-sansio chain: websockets' sans-I/O
    protocol object driven by a plain ``asyncio.Protocol``. Bytes from the socket go to
    ``receive_data``; complete text messages go to ``on_text`` synchronously; whatever the
    protocol has to send (handshake, frames, pongs, close, EOF) is written to the transport
    at once. No task or future per message."""

    def __init__(
        self,
        ws: ServerProtocol | ClientProtocol,
        on_text: Callable[[SansIOConn, Raw], None],
        on_open: Callable[[SansIOConn, str], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.on_text = on_text
        self.on_open = on_open
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.opened: asyncio.Future[None] = loop.create_future()  # client: handshake done
        self.closed: asyncio.Future[None] = loop.create_future()  # the TCP connection is gone
        self.writable = asyncio.Event()
        self.writable.set()
        self.fragments: list[Raw] | None = None  # a fragmented text message
        self.close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if isinstance(self.ws, ClientProtocol):
            self.ws.send_request(self.ws.connect())
            self.flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        self.flush()  # automatic replies: pong, close, EOF
        for event in ws.events_received():
            if event.__class__ is Frame:
                self.frame(event)
            elif isinstance(event, Request):  # server: the opening handshake
                ws_server: ServerProtocol = ws  # type: ignore[assignment]
                ws_server.send_response(ws_server.accept(event))
                self.flush()
                if ws.state is State.OPEN and self.on_open is not None:
                    self.on_open(self, event.path)
            elif isinstance(event, Response):  # client: the reply to the handshake
                if ws.handshake_exc is not None:
                    self.opened.set_exception(ws.handshake_exc)
                else:
                    self.opened.set_result(None)
        if ws.close_expected():
            self.expect_close()

    def frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT:
            if frame.fin:
                self.on_text(self, frame.data)
            else:
                self.fragments = [frame.data]
        elif opcode is Opcode.CONT and self.fragments is not None:
            self.fragments.append(frame.data)
            if frame.fin:
                whole, self.fragments = b"".join(self.fragments), None
                self.on_text(self, whole)
        # BINARY (and its continuations): these chains send text only. PING, PONG, CLOSE: the
        # protocol object answers them itself (written by flush()).

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self.flush()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; moves the state on if the peer just vanished
        if self.close_timer is not None:
            self.close_timer.cancel()
        if isinstance(self.ws, ClientProtocol) and not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- writing

    def flush(self) -> None:
        transport = self.transport
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():  # SEND_EOF: half-close
                transport.write_eof()
            else:
                transport.close()

    def send(self, data: bytes) -> None:
        ws = self.ws
        if ws.state is not State.OPEN:  # closing: drop, as a closed socket would
            return
        ws.send_text(data)
        transport = self.transport
        for chunk in ws.data_to_send():
            transport.write(chunk)

    def close(self) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self.flush()
            self.expect_close()

    def expect_close(self) -> None:
        """The peer should close the TCP connection now; close it ourselves if it does not."""
        if self.close_timer is None and not self.closed.done():
            loop = asyncio.get_running_loop()
            self.close_timer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)


async def bare_websockets_sansio_unit(body_len: int, messages: int, pings: int) -> Result:
    ends = ChainEnds(messages)
    conns: dict[str, SansIOConn] = {}
    both = asyncio.Event()
    loop = asyncio.get_running_loop()

    def opened(conn: SansIOConn, path: str) -> None:  # c2 accepted a connection
        conns[path.lstrip("/")] = conn
        if len(conns) == 2:
            both.set()

    def relay(conn: SansIOConn, raw: Raw) -> None:  # c2
        msg = orjson.loads(raw)
        msg["path"].append(ends.id2)
        out = conns.get(msg["to"])
        if out is not None:
            out.send(orjson.dumps(msg))

    # c2 keeps writing when a buffer passes the high-water mark (asyncio buffers it), as in
    # bare-picows: c1 waits on its own buffer and c3 reads faster than c2 writes.
    def accept() -> SansIOConn:
        return SansIOConn(ServerProtocol(), relay, opened)

    def at_c3(conn: SansIOConn, raw: Raw) -> None:
        reply = ends.at_c3(raw)
        if reply is not None:
            conn.send(reply)

    def at_c1(conn: SansIOConn, raw: Raw) -> None:
        ends.at_c1(raw)

    server = await loop.create_server(accept, "127.0.0.1", 0)
    clients: list[SansIOConn] = []
    try:
        port = server.sockets[0].getsockname()[1]
        base = f"ws://127.0.0.1:{port}/"
        c1 = SansIOConn(ClientProtocol(parse_uri(base + ends.id1)), at_c1)
        c3 = SansIOConn(ClientProtocol(parse_uri(base + ends.id3)), at_c3)
        await loop.create_connection(lambda: c1, "127.0.0.1", port)
        clients.append(c1)
        await loop.create_connection(lambda: c3, "127.0.0.1", port)
        clients.append(c3)
        await asyncio.wait_for(asyncio.gather(c1.opened, c3.opened), 10)
        await asyncio.wait_for(both.wait(), 10)

        async def flow() -> None:
            while c1.transport.get_write_buffer_size() > HIGH_WATER:
                await c1.writable.wait()
                await asyncio.sleep(0)

        return await ends.run(c1.send, flow, body_len, pings)
    finally:
        # The closing handshake: the clients send close, c2 answers and closes the TCP
        # connection, the clients see EOF; anything left after the timeout is aborted.
        for conn in clients:
            conn.close()
        everyone = [*clients, *conns.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in everyone)), CLOSE_TIMEOUT + 1)
        for conn in everyone:
            if not conn.closed.done():
                conn.transport.abort()
        server.close()
        await server.wait_closed()


async def bare_picows_unit(body_len: int, messages: int, pings: int) -> Result:
    assert picows is not None
    text = picows.WSMsgType.TEXT
    ends = ChainEnds(messages)
    conns: dict[str, Any] = {}
    both = asyncio.Event()

    class Relay(picows.WSListener):  # c2, one per accepted connection
        def __init__(self, peer: str) -> None:
            self.peer = peer

        def on_ws_connected(self, transport: Any) -> None:
            conns[self.peer] = transport
            if len(conns) == 2:
                both.set()

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is not text:
                if frame.msg_type is picows.WSMsgType.CLOSE:
                    transport.disconnect()
                return
            msg = orjson.loads(frame.get_payload_as_memoryview())
            msg["path"].append(ends.id2)
            out = conns.get(msg["to"])
            if out is not None:
                out.send(text, orjson.dumps(msg))

        # c2 keeps writing when a buffer passes the high-water mark (picows queues it): c1
        # waits on its own buffer and c3 reads faster than c2 writes, so it stays bounded.
        def pause_writing(self) -> None:
            pass

        def resume_writing(self) -> None:
            pass

    class End(picows.WSListener):  # c1 or c3
        def __init__(self, c3: bool) -> None:
            self.c3 = c3
            self.writable = asyncio.Event()
            self.writable.set()

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is not text:
                return
            if self.c3:
                reply = ends.at_c3(frame.get_payload_as_memoryview())
                if reply is not None:
                    transport.send(text, reply)
            else:
                ends.at_c1(frame.get_payload_as_memoryview())

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

    def accept(request: Any) -> Any:
        return Relay(request.path.decode().lstrip("/"))

    server = await picows.ws_create_server(accept, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        base = f"ws://127.0.0.1:{port}/"
        c1, c3 = End(False), End(True)
        t1, _ = await picows.ws_connect(lambda: c1, base + ends.id1)
        t3, _ = await picows.ws_connect(lambda: c3, base + ends.id3)
        await asyncio.wait_for(both.wait(), 10)

        async def flow() -> None:
            while t1.underlying_transport.get_write_buffer_size() > HIGH_WATER:
                await c1.writable.wait()
                await asyncio.sleep(0)

        try:
            return await ends.run(lambda f: t1.send(text, f), flow, body_len, pings)
        finally:
            for t in (t1, t3):
                t.disconnect()
            for t in list(conns.values()):
                t.disconnect()
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- 0.0.2 under Node

NODE_JS = r"""
'use strict'
// Runs peer-relay@0.0.2 peers in this one Node process; argv[2] is the JSON config.
const dns = require('dns')
const net = require('net')
const path = require('path')
if (typeof dns.setDefaultResultOrder === 'function') dns.setDefaultResultOrder('ipv4first')
if (typeof net.setDefaultAutoSelectFamily === 'function') net.setDefaultAutoSelectFamily(true)
const crypto = require('crypto')
const cfg = JSON.parse(process.argv[2])

// 0.0.2 builds its sockets with `new WebSocket(url)` and `new WebSocket.Server({port})` from
// ws 1.1.5, whose permessage-deflate is on by default. Swap the module for one that passes
// perMessageDeflate (true: as shipped; false: off) and binds servers to 127.0.0.1 only.
const wsPath = require.resolve('ws', { paths: [path.dirname(require.resolve('peer-relay'))] })
const WS = require(wsPath)
function Patched (address, protocols, options) {
  if (protocols && !Array.isArray(protocols) && typeof protocols === 'object') {
    options = protocols
    protocols = null
  }
  return new WS(address, protocols || [],
    Object.assign({}, options, { perMessageDeflate: cfg.compression }))
}
Object.assign(Patched, WS)
Patched.Server = function (options, callback) {
  return new WS.Server(Object.assign({}, options,
    { host: '127.0.0.1', perMessageDeflate: cfg.compression }), callback)
}
require.cache[wsPath].exports = Patched
const PeerRelay = require('peer-relay')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const immediate = () => new Promise((resolve) => setImmediate(resolve))
const now = () => Number(process.hrtime.bigint()) / 1e9

async function until (cond, what, seconds) {
  const deadline = now() + (seconds || 10)
  while (!cond()) {
    if (now() > deadline) throw new Error('timed out waiting for ' + what)
    await sleep(5)
  }
}

async function listening (peer) {
  await until(() => peer.wsConnector.url != null, 'a server to listen')
  return 'ws://127.0.0.1:' + peer.wsConnector._wss._server.address().port
}

function bodies (length) {
  const out = []
  for (let i = 0; i < 64; i++) {
    out.push(crypto.randomBytes((length + 1) >> 1).toString('hex').slice(0, length))
  }
  return out
}

function percentile (sorted, q) {
  return sorted[Math.max(Math.floor(sorted.length * q) - 1, 0)]
}

async function chain () {
  const pool = bodies(cfg.body_len)
  const c2 = new PeerRelay({ port: 0 })
  const url = await listening(c2)
  const c1 = new PeerRelay({ bootstrap: [url] })
  const c3 = new PeerRelay({ bootstrap: [url] })
  await until(() => c1.peers.count() >= 1 && c3.peers.count() >= 1 && c2.peers.count() >= 2,
    'the chain to link')
  await sleep(500) // let discovery traffic settle before measuring
  if (c1.peers.get(c3.id)) throw new Error('c1 and c3 linked directly')

  const n = cfg.messages
  let received = 0
  let last = 0
  let finished = null
  const done = new Promise((resolve) => { finished = resolve })
  function count () {
    received++
    last = now()
    if (received === n) finished()
  }
  c3.on('message', count)
  const link = c1.peers.toArray()[0].ws
  const start = now()
  for (let i = 0; i < n; i++) {
    c1.send(c3.id, { seq: i, b: pool[i % 64] })
    if (i % 200 === 199) {
      while (link.bufferedAmount > cfg.high_water) await sleep(1)
      await immediate()
    }
  }
  let timer = null
  await Promise.race([done, new Promise((resolve) => {
    timer = setTimeout(resolve, cfg.stream_timeout * 1000)
  })])
  clearTimeout(timer)
  c3.removeListener('message', count)
  const elapsed = last - start

  c3.on('message', (data, from) => c3.send(from, data))
  let pong = null
  let want = -1
  c1.on('message', (data) => {
    if (pong !== null && data.seq === want) {
      const resolve = pong
      pong = null
      resolve(true)
    }
  })
  const rtts = []
  let lost = 0
  for (let i = 0; i < cfg.pings; i++) {
    want = i
    const t0 = now()
    let pingTimer = null
    const ok = await new Promise((resolve) => {
      pong = resolve
      pingTimer = setTimeout(() => resolve(false), cfg.ping_timeout * 1000)
      c1.send(c3.id, { seq: i, b: pool[i % 64] })
    })
    clearTimeout(pingTimer)
    if (ok) rtts.push(now() - t0)
    else lost++
  }
  rtts.sort((a, b) => a - b)
  return {
    messages: n,
    received: received,
    delivery: received / n,
    msg_per_s: elapsed > 0 ? received / elapsed : 0,
    rtt_p50_us: rtts.length ? percentile(rtts, 0.5) * 1e6 : null,
    rtt_p99_us: rtts.length ? percentile(rtts, 0.99) * 1e6 : null,
    pings_lost: lost
  }
}

function links (peers) {
  let total = 0
  for (const p of peers) total += p.peers.count()
  return total
}

async function settle (peers) {
  const start = now()
  let last = -1
  let since = now()
  while (now() - start < cfg.settle_max) {
    const count = links(peers)
    if (count !== last) {
      last = count
      since = now()
    } else if (now() - since >= 3) break
    await sleep(500)
  }
  return now() - start
}

async function memory () {
  global.gc()
  const before = process.memoryUsage().rss
  const peers = []
  const urls = []
  for (let i = 0; i < cfg.peers; i++) {
    const boot = i === 0 ? [] : [urls[Math.floor(Math.random() * urls.length)]]
    const peer = new PeerRelay({ port: 0, bootstrap: boot })
    urls.push(await listening(peer))
    peers.push(peer)
  }
  const settled = await settle(peers)
  global.gc()
  await sleep(200)
  const after = process.memoryUsage().rss
  const seen = new Set()
  for (const peer of peers) {
    peer.on('message', (data) => { if (data && data.probe !== undefined) seen.add(data.probe) })
  }
  for (let s = 0; s < cfg.sends; s++) {
    const a = Math.floor(Math.random() * peers.length)
    let b = Math.floor(Math.random() * (peers.length - 1))
    if (b >= a) b++
    peers[a].send(peers[b].id, { probe: s })
    if (s % 20 === 19) await sleep(10)
  }
  const deadline = now() + 10
  while (seen.size < cfg.sends && now() < deadline) await sleep(50)
  return {
    peers: peers.length,
    rss_before: before,
    rss_settled: after,
    rss_per_peer: (after - before) / peers.length,
    links: links(peers) / peers.length,
    settle_s: settled,
    sent: cfg.sends,
    delivered: seen.size,
    node: process.version
  }
}

(cfg.task === 'memory' ? memory() : chain()).then((result) => {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}, (err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
"""


class Node:
    """Runs ``NODE_JS`` with 0.0.2 on the NODE_PATH; one fresh Node process per unit."""

    def __init__(self) -> None:
        spec = importlib.util.spec_from_file_location(
            "_interop_original", REPO / "tests" / "interop" / "original.py"
        )
        assert spec is not None and spec.loader is not None
        original = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = original  # its dataclasses look their module up
        spec.loader.exec_module(original)
        try:
            self.node_modules = original.ensure_original()
        except original.OriginalUnavailable as exc:
            raise RuntimeError(str(exc).splitlines()[0]) from None
        self.node = shutil.which("node") or "node"
        self.dir = tempfile.mkdtemp(prefix="compare-node-")
        self.script = Path(self.dir) / "compare_0.0.2.js"
        self.script.write_text(NODE_JS)
        self.version = subprocess.run(
            [self.node, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()

    def run(self, cfg: dict[str, Any], timeout: float = 300) -> Result:
        env = dict(os.environ, NODE_PATH=str(self.node_modules))
        env.pop("DEBUG", None)
        cmd = [self.node, "--no-deprecation", "--expose-gc", str(self.script), json.dumps(cfg)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"node exited {proc.returncode}:\n{tail}")
        result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def chain(self, compression: bool, body_len: int, messages: int, pings: int) -> Result:
        return self.run(
            {
                "task": "chain",
                "compression": compression,
                "body_len": body_len,
                "messages": messages,
                "pings": pings,
                "high_water": HIGH_WATER,
                "stream_timeout": STREAM_TIMEOUT,
                "ping_timeout": PING_TIMEOUT,
            }
        )

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def ours_memory(peers: int, sends: int, settle_max: float) -> Result:
    """In a fresh process: ``peers`` default PeerRelays on 127.0.0.1, one network."""
    gc.collect()
    before = rss_bytes()
    nodes: list[PeerRelay] = []
    try:
        for i in range(peers):
            boot = [random.choice(nodes).url or ""] if i else []
            nodes.append(await PeerRelay(port=0, host="127.0.0.1", bootstrap=boot).start())
        loop = asyncio.get_running_loop()
        start = loop.time()
        last, since = -1, loop.time()
        while loop.time() - start < settle_max:
            count = sum(len(n.peers) for n in nodes)
            if count != last:
                last, since = count, loop.time()
            elif loop.time() - since >= 3:
                break
            await asyncio.sleep(0.5)
        settled = loop.time() - start
        gc.collect()
        await asyncio.sleep(0.2)
        after = rss_bytes()
        seen: set[int] = set()

        def on_message(data: Any, sender: bytes) -> None:
            if isinstance(data, dict) and "probe" in data:
                seen.add(data["probe"])

        for node in nodes:
            node.on("message", on_message)
        for s in range(sends):
            a, b = random.sample(nodes, 2)
            a.send(b.id, {"probe": s})
            if s % 20 == 19:
                await asyncio.sleep(0.01)
        deadline = loop.time() + 10
        while len(seen) < sends and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return {
            "peers": peers,
            "rss_before": before,
            "rss_settled": after,
            "rss_per_peer": (after - before) / peers,
            "links": sum(len(n.peers) for n in nodes) / peers,
            "settle_s": settled,
            "sent": sends,
            "delivered": len(seen),
        }
    finally:
        await asyncio.gather(*(n.destroy() for n in nodes), return_exceptions=True)


def ours_compiled_subprocess(target: Path, body_len: int, messages: int, pings: int) -> Result:
    """One unit of ours-unsigned in a fresh process that imports the copy of the package in
    ``target`` (from ``peer_relay.sim.compiled.build``): its hot modules compiled by mypyc, the
    rest (node, transports) the same source as pure Python."""
    from peer_relay.sim import compiled

    cmd = [sys.executable, str(Path(__file__).resolve()), "--compiled-child"]
    cmd += [f"--body-len={body_len}", f"--messages={messages}", f"--pings={pings}"]
    env = dict(compiled.environ(target), **{COMPILED_CHILD: "1"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"compiled child exited {proc.returncode}:\n{tail}")
    result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def compiled_child(body_len: int, messages: int, pings: int) -> Result:
    """In the child of :func:`ours_compiled_subprocess`: check that the compiled modules were
    imported, then run the unit."""
    from peer_relay.sim import compiled

    if not compiled.is_compiled():
        raise SystemExit(f"the compiled core was not imported (peer_relay from {REPO})")
    return in_loop(functools.partial(ours_unit, COMPILED_MODE), body_len, messages, pings)


def ours_memory_subprocess(peers: int, sends: int, settle_max: float) -> Result:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child"]
    cmd += [f"--peers={peers}", f"--sends={sends}", f"--settle-max={settle_max}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"memory child exited {proc.returncode}:\n{tail}")
    result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the run

COLUMNS = [
    "ours-unsigned",
    "ours-sealed",
    "0.0.2-nodeflate",
    "0.0.2",
    "ours-compiled",
    "bare-websockets",
    "bare-websockets-sansio",
    "bare-picows",
]


WIDTH = max(len(c) for c in COLUMNS)


def med(runs: list[Result | None], key: str) -> float | None:
    """Median of ``key`` over the rounds that ran and measured it."""
    values = [r[key] for r in runs if r is not None and r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, width: int) -> str:
    return f"{value:{width},.0f}" if value is not None else "n/a".rjust(width)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def in_loop(unit: Callable[..., Coroutine[Any, Any, Result]], *args: int) -> Result:
    """Run one unit of a Python column in a fresh event loop."""
    return asyncio.run(unit(*args))


def build_units(
    columns: list[str], notes: list[str]
) -> tuple[dict[str, Callable[[int, int, int], Result]], Node | None]:
    units: dict[str, Callable[[int, int, int], Result]] = {}
    node: Node | None = None
    if any(c.startswith("0.0.2") for c in columns):
        try:
            node = Node()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            notes.append(f"0.0.2 columns skipped: {exc}")
    for column in columns:
        if column in OURS_MODES:
            units[column] = functools.partial(in_loop, functools.partial(ours_unit, column))
        elif column.startswith("0.0.2"):
            if node is not None:
                units[column] = functools.partial(node.chain, column == "0.0.2")
        elif column == "ours-compiled":
            target = build_compiled(notes)
            if target is not None:
                units[column] = functools.partial(ours_compiled_subprocess, target)
        elif column == "bare-websockets":
            units[column] = functools.partial(in_loop, bare_websockets_unit)
        elif column == "bare-websockets-sansio":
            units[column] = functools.partial(in_loop, bare_websockets_sansio_unit)
        elif column == "bare-picows":
            if picows is None:
                notes.append(f"bare-picows skipped: picows is not installed (`{PICOWS_HINT}`)")
            else:
                units[column] = functools.partial(in_loop, bare_picows_unit)
    return units, node


def build_compiled(notes: list[str]) -> Path | None:
    """The directory of the mypyc-compiled copy (built now if these sources were not built
    yet: a few minutes), or None with a note if it cannot be built."""
    from peer_relay.sim import compiled

    if not compiled.cache_dir().exists():
        print(
            "  ours-compiled: compiling the hot modules with mypyc (once per version of the "
            "sources, a few minutes) ...",
            file=sys.stderr,
        )
    try:
        return compiled.build()
    except (compiled.CompileError, OSError, subprocess.SubprocessError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = " ".join(lines[:1] + lines[1:][-1:]) or type(exc).__name__  # first and last
        notes.append(f"ours-compiled skipped: cannot build the compiled modules: {why}")
        return None


def ratio(
    results: dict[str, dict[str, list[Result | None]]], size: str, key: str, num: str, den: str
) -> dict[str, float] | None:
    """Ratio of the medians, and the range of the per-round ratios (rounds are paired)."""
    a, b = results.get(num, {}).get(size), results.get(den, {}).get(size)
    top, bottom = med(a or [], key), med(b or [], key)
    if a is None or b is None or top is None or not bottom:
        return None
    per = sorted(
        x[key] / y[key]
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and x.get(key) is not None and y.get(key)
    )
    out = {"ratio": top / bottom}
    if per:
        out.update({"round_min": per[0], "round_max": per[-1]})
    return out


def show(value: dict[str, float] | None) -> str:
    if value is None:
        return "n/a (column missing or failed)"
    text = f"{value['ratio']:.2f}x"
    if "round_min" in value:
        text += f" (rounds {value['round_min']:.2f}-{value['round_max']:.2f})"
    return text


RATIOS = [
    ("throughput", "msg_per_s", "ours-unsigned", "bare-websockets"),
    ("throughput", "msg_per_s", "ours-unsigned", "0.0.2-nodeflate"),
    ("throughput", "msg_per_s", "ours-sealed", "0.0.2-nodeflate"),
    ("throughput", "msg_per_s", "ours-sealed", "ours-unsigned"),
    ("throughput", "msg_per_s", "0.0.2", "0.0.2-nodeflate"),
    ("throughput", "msg_per_s", "ours-compiled", "ours-unsigned"),
    ("throughput", "msg_per_s", "ours-compiled", "bare-websockets"),
    ("throughput", "msg_per_s", "ours-compiled", "0.0.2-nodeflate"),
    ("throughput", "msg_per_s", "bare-picows", "bare-websockets"),
    ("throughput", "msg_per_s", "bare-websockets-sansio", "bare-websockets"),
    ("throughput", "msg_per_s", "bare-picows", "bare-websockets-sansio"),
    ("RTT p50", "rtt_p50_us", "ours-unsigned", "0.0.2-nodeflate"),
    ("RTT p99", "rtt_p99_us", "ours-unsigned", "0.0.2-nodeflate"),
    ("RTT p50", "rtt_p50_us", "ours-sealed", "0.0.2-nodeflate"),
    ("RTT p99", "rtt_p99_us", "ours-sealed", "0.0.2-nodeflate"),
    ("RTT p50", "rtt_p50_us", "ours-compiled", "0.0.2-nodeflate"),
    ("RTT p99", "rtt_p99_us", "ours-compiled", "0.0.2-nodeflate"),
    ("RTT p50", "rtt_p50_us", "bare-picows", "bare-websockets-sansio"),
    ("RTT p99", "rtt_p99_us", "bare-picows", "bare-websockets-sansio"),
]
"""The ratios printed: (label, measure, numerator column, denominator column)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pings", type=int, default=2_000)
    parser.add_argument("--peers", type=int, default=200, help="peers in the memory test")
    parser.add_argument("--sends", type=int, default=300, help="messages in the memory test")
    parser.add_argument("--settle-max", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--columns", default=",".join(COLUMNS))
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory test")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 round, few messages")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compiled-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--body-len", type=int, default=SIZES["small"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        result = asyncio.run(ours_memory(args.peers, args.sends, args.settle_max))
        print(json.dumps(result))
        return
    if args.compiled_child:
        print(json.dumps(compiled_child(args.body_len, args.messages, args.pings)))
        return
    if args.quick:
        args.rounds, args.messages, args.pings = 1, 2_000, 200
        args.peers, args.sends, args.settle_max = 30, 50, 20.0
    columns = args.columns.split(",")
    sizes = args.sizes.split(",")
    bad = (set(columns) - set(COLUMNS)) | (set(sizes) - set(SIZES))
    if bad:
        parser.error(f"unknown column(s) or size(s): {', '.join(sorted(bad))}")
    if args.rounds < 1 or args.messages < 1 or args.pings < 1:
        parser.error("--rounds, --messages and --pings must be positive")

    started = datetime.now()
    load_start = load()
    notes: list[str] = []
    units, node = build_units(columns, notes)
    say = (lambda *a, **k: None) if args.json else print
    for note in notes:
        say(f"note: {note}", file=sys.stderr)
    results: dict[str, dict[str, list[Result | None]]] = {c: {s: [] for s in sizes} for c in units}
    t_start = time.perf_counter()
    try:
        for rnd in range(args.rounds):
            order = list(units)
            order = order[rnd % len(order) :] + order[: rnd % len(order)]  # rotate the start
            for size in sizes:
                for column in order:
                    gc.collect()
                    t0 = time.perf_counter()
                    try:
                        r = units[column](SIZES[size], args.messages, args.pings)
                    except Exception as exc:  # one failed unit must not lose the whole run
                        first = (str(exc) or type(exc).__name__).splitlines()[0]
                        notes.append(f"round {rnd + 1} {size} {column} failed: {first}")
                        say(
                            f"  round {rnd + 1} {size:5} {column:{WIDTH}} FAILED: {exc}",
                            file=sys.stderr,
                        )
                        results[column][size].append(None)
                        continue
                    r["seconds"] = time.perf_counter() - t0
                    results[column][size].append(r)
                    say(
                        f"  round {rnd + 1} {size:5} {column:{WIDTH}} {r['msg_per_s']:9,.0f} msg/s "
                        f"({r['delivery']:.1%}) p50 {fmt(r['rtt_p50_us'], 7)} us p99 "
                        f"{fmt(r['rtt_p99_us'], 7)} us  [{r['seconds']:.1f} s, load {load()}]",
                        file=sys.stderr,
                    )
        memory: dict[str, Result] = {}
        if not args.no_memory:
            say(f"  memory: {args.peers} peers of ours, then of 0.0.2 ...", file=sys.stderr)
            try:
                memory["ours"] = ours_memory_subprocess(args.peers, args.sends, args.settle_max)
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                notes.append(f"memory (ours) failed: {str(exc).splitlines()[0]}")
            if node is not None:
                try:
                    memory["0.0.2-nodeflate"] = node.run(
                        {
                            "task": "memory",
                            "compression": False,
                            "peers": args.peers,
                            "sends": args.sends,
                            "settle_max": args.settle_max,
                        },
                        timeout=600,
                    )
                except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                    notes.append(f"memory (0.0.2) failed: {str(exc).splitlines()[0]}")
    finally:
        if node is not None:
            node.close()
    total = time.perf_counter() - t_start

    header = (
        f"{started:%Y-%m-%d %H:%M}, {os.cpu_count()} cores ({platform_name()}), load at start "
        f"{load_start}, at end {load()}; {args.rounds} alternating rounds of {args.messages:,} "
        f"messages and {args.pings:,} pings per column and size; {total:.0f} s"
    )
    ratios: dict[str, dict[str, dict[str, float] | None]] = {}
    for size in sizes:
        ratios[size] = {
            f"{label} {a} / {b}": ratio(results, size, metric, a, b)
            for label, metric, a, b in RATIOS
        }
    if "ours" in memory and "0.0.2-nodeflate" in memory:
        rss = memory["ours"]["rss_per_peer"] / memory["0.0.2-nodeflate"]["rss_per_peer"]
        ratios["memory"] = {"RSS per peer ours / 0.0.2-nodeflate": {"ratio": rss}}

    if args.json:
        doc = {
            "date": f"{started:%Y-%m-%d %H:%M}",
            "cpus": os.cpu_count(),
            "machine": platform_name(),
            "load_start": load_start,
            "load_end": load(),
            "node": node.version if node else None,
            "picows": getattr(picows, "__version__", None),
            "args": vars(args),
            "notes": notes,
            "results": results,
            "memory": memory,
            "ratios": ratios,
        }
        print(json.dumps(doc, indent=1))
        return

    print(header)
    versions = f"node {node.version}" if node else "no node"
    if picows is not None:
        versions += f", picows {getattr(picows, '__version__', '?')}"
    print(f"  ({versions}; payloads: small 24 B, 1KiB 1,024 B of JSON; medians over rounds)")
    for note in notes:
        print(f"  note: {note}")
    for size in sizes:
        print(f"{size} (throughput: one-way stream c1 -> c2 -> c3; RTT: c1 -> c3 -> c1):")
        for column, per_size in results.items():
            runs = per_size[size]
            done = [r for r in runs if r is not None]
            if not done:
                print(f"  {column:{WIDTH}} failed in every round")
                continue
            delivered = min(r["delivery"] for r in done)
            lost = sum(r["pings_lost"] for r in done)
            extra = f", {lost} pings lost" if lost else ""
            if len(done) < len(runs):
                extra += f", {len(runs) - len(done)} rounds failed"
            print(
                f"  {column:{WIDTH}} {fmt(med(runs, 'msg_per_s'), 9)} msg/s  delivered >= "
                f"{delivered:7.2%}  RTT p50 {fmt(med(runs, 'rtt_p50_us'), 6)} us  "
                f"p99 {fmt(med(runs, 'rtt_p99_us'), 6)} us{extra}"
            )
    if memory:
        print(
            f"memory ({args.peers} live peers in one process, RSS growth once the link count is "
            f"stable; then {args.sends} messages between random pairs, counted for 10 s):"
        )
        for name, m in memory.items():
            print(
                f"  {name:15} {m['rss_per_peer'] / 1000:7,.0f} kB RSS per peer "
                f"({m['rss_before'] / 1e6:.0f} -> {m['rss_settled'] / 1e6:.0f} MB), "
                f"{m['links']:.1f} links per peer ({per_link(m)}), settled in "
                f"{m['settle_s']:.1f} s; "
                f"delivered {m['delivered']} of {m['sent']}"
            )
    print("ratios (ratio of medians; in brackets the range of the per-round ratios):")
    width = max((len(label) for lines in ratios.values() for label in lines), default=0)
    for group, lines in ratios.items():
        for label, value in lines.items():
            if value is not None:  # a column that was skipped or failed: nothing to compare
                print(f"  {group:6} {label:{width}} {show(value)}")


def per_link(m: Result) -> str:
    links = m["links"]
    return f"{m['rss_per_peer'] / links / 1000:,.0f} kB per link end" if links else "no links"


def platform_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return sys.platform


if __name__ == "__main__":
    main()
