"""One testbed peer: a real :class:`~peer_relay.PeerRelay` in its own process, controlled over
a unix-domain socket with JSON lines.

``python -m peer_relay.testbed.agent --control PATH [--options JSON] [--bootstrap URL ...]
[--port N] [--host ADDR] [--identity FILE]`` starts the peer, then listens on ``PATH`` (the
filesystem is shared across network namespaces, so a driver in the root namespace reaches
agents on every emulated host). Each request is one JSON object on one line, with an ``op``
and an optional ``req`` echoed in its answer; answers are ``{"req": ..., "ok": true, ...}`` or
``{"req": ..., "ok": false, "error": "..."}``. Requests run concurrently (a ``deliver`` does
not hold up a ``status``), so answers may come out of order.

- ``status``: ``id``, ``url``, ``pid``, ``links`` (``peer``, ``state``, ``transport``),
  ``peers`` (open links: id to transport), ``stats``, ``rss_kb`` (VmRSS), ``uptime``.
- ``send`` ``{to, data, seq, mode: "send"|"deliver", timeout}``: the message carries ``seq``
  and the send wall time; ``send`` answers at once, ``deliver`` once the receipt is back
  (``delivered: true``) or not (``delivered: false, error``).
- ``connect`` ``{to, timeout}``: form a direct link (``linked``, ``transport`` or ``error``).
- ``subscribe``: from now on this connection also gets ``{"event": "message", "seq", "from",
  "hops", "verified", "sent", "received"}`` for each message received (those received while
  nobody was subscribed are kept, up to a bound, and sent first).
- ``ice``: the ICE candidate types of the WebRTC links' nominated pairs (TURN or not).
- ``quit``: answers, then destroys the peer and exits 0 (SIGTERM and SIGINT do the same).

A malformed request is answered with an error; it never stops the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import DeliveryError
from ..identity import Identity
from ..node import Message, PeerRelay
from ..status import rss_bytes

MAX_LINE = 1 << 20
"""Longest request line read; a longer one is answered with an error (and skipped)."""
MAX_BACKLOG = 100_000
"""Message events kept while no driver is subscribed."""
TAG = "prt"
"""The key under which a testbed message carries its sequence number and send time."""

_log = logging.getLogger("peer_relay.testbed.agent")


def rss_kb() -> int:
    """This process's resident set size in KiB, 0 where /proc is not there."""
    return (rss_bytes() or 0) // 1024


class RequestError(Exception):
    """A request the agent cannot carry out; its message is the answer's ``error``."""


class Agent:
    """Serves the control protocol for one started peer."""

    def __init__(self, peer: PeerRelay, control: str) -> None:
        self.peer = peer
        self.control = control
        self.started = time.monotonic()
        self.stopped = asyncio.Event()
        self._subscribers: list[asyncio.StreamWriter] = []
        self._backlog: deque[dict[str, Any]] = deque(maxlen=MAX_BACKLOG)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._inbox = peer.messages()  # kept from now on, even before the first read

    async def serve(self) -> None:
        """Listen on the control socket until ``quit`` or a signal, then shut the peer down."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)  # left by a killed predecessor (churn restarts)
        self._server = await asyncio.start_unix_server(self._connection, self.control)
        try:
            await self.stopped.wait()
        finally:
            self._server.close()
            for writer in self._subscribers:
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.peer.destroy()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control)

    # ------------------------------------------------------------------ events

    def record(self, message: Message) -> None:
        """Report one received message to the subscribers (or keep it for the first one)."""
        data = message.data
        tag = data.get(TAG) if isinstance(data, dict) else None
        event: dict[str, Any] = {
            "event": "message",
            "seq": tag.get("seq") if isinstance(tag, dict) else None,
            "sent": tag.get("sent") if isinstance(tag, dict) else None,
            "from": message.sender.hex(),
            "hops": message.hops,
            "verified": message.verified,
            "received": time.time(),
        }
        if not self._subscribers:
            self._backlog.append(event)
            return
        line = _encode(event)
        for writer in list(self._subscribers):
            if writer.is_closing():
                self._subscribers.remove(writer)
            else:
                writer.write(line)

    async def read_messages(self) -> None:
        """Feed every received message to :meth:`record`."""
        async for message in self._inbox:
            self.record(message)

    # ------------------------------------------------------------------ requests

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async for line in _lines(reader):
                if self.stopped.is_set():
                    break
                if line is None:
                    writer.write(_encode(_error(None, f"request longer than {MAX_LINE} bytes")))
                elif line.strip():
                    self._spawn(self._answer(line, writer))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if writer in self._subscribers:
                self._subscribers.remove(writer)
            writer.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        req: Any = None
        try:
            try:
                request = json.loads(line)
            except ValueError as exc:
                raise RequestError(f"not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise RequestError("a request is a JSON object")
            req = request.get("req")
            op = request.get("op")
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(f"unknown op {op!r}; ops are {', '.join(sorted(_OPS))}")
            answer = await handler(self, request, writer)
            out = {"req": req, "ok": True, **answer}
        except RequestError as exc:
            out = _error(req, str(exc))
        except (ValueError, TypeError) as exc:
            out = _error(req, f"{type(exc).__name__}: {exc}")
        except RuntimeError as exc:  # the peer is shutting down
            out = _error(req, str(exc))
        if not writer.is_closing():
            writer.write(_encode(out))

    async def op_status(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """The peer's id, URL, links with their transport, counters and RSS."""
        peer = self.peer
        view = peer.inspect()
        links = [
            {"peer": link["peer"], "state": link["state"], "transport": link["transport"]}
            for link in view.get("links", [])
        ]
        return {
            "id": peer.id.hex(),
            "url": peer.url,
            "pid": os.getpid(),
            "links": links,
            "peers": {p.hex(): peer.link_transport(p) for p in peer.peers},
            "stats": peer.stats,
            "rss_kb": rss_kb(),
            "uptime": time.monotonic() - self.started,
        }

    async def op_send(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """Send (or deliver) one tagged message; see the module's docstring."""
        to = request.get("to")
        if not isinstance(to, str):
            raise RequestError("send needs 'to', a peer id in hex")
        mode = request.get("mode", "send")
        if mode not in ("send", "deliver"):
            raise RequestError(f"mode must be 'send' or 'deliver', got {mode!r}")
        timeout = request.get("timeout", 10.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise RequestError("timeout must be a positive number of seconds")
        sent = time.time()
        payload = {TAG: {"seq": request.get("seq"), "sent": sent}, "data": request.get("data")}
        if mode == "send":
            self.peer.send(to, payload)
            return {"sent": sent}
        try:
            await self.peer.deliver(to, payload, timeout=float(timeout))
        except DeliveryError as exc:
            return {"sent": sent, "delivered": False, "error": str(exc)}
        return {"sent": sent, "delivered": True, "elapsed": time.time() - sent}

    async def op_connect(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """Form a direct link to ``to`` (:meth:`PeerRelay.connect`); ``linked`` says if it
        opened within ``timeout``, ``error`` why not, ``transport`` which it is."""
        to = request.get("to")
        if not isinstance(to, str):
            raise RequestError("connect needs 'to', a peer id in hex")
        timeout = request.get("timeout", 15.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise RequestError("timeout must be a positive number of seconds")
        try:
            await self.peer.connect(to, timeout=float(timeout))
        except (ConnectionError, TimeoutError) as exc:
            return {"linked": False, "error": str(exc) or type(exc).__name__}
        return {"linked": True, "transport": self.peer.link_transport(to)}

    async def op_subscribe(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """Stream message events on this connection, those kept so far first."""
        while self._backlog:
            writer.write(_encode(self._backlog.popleft()))
        if writer not in self._subscribers:
            self._subscribers.append(writer)
        return {}

    async def op_quit(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """Stop: the answer goes out first, then the peer is destroyed and the process exits."""
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return {}

    async def op_ice(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """The ICE candidate pairs in use by this process's WebRTC links: for each nominated,
        succeeded pair, its local and remote candidate types (``host``, ``srflx``, ``prflx``,
        ``relay``: ``relay`` means TURN carries it) and the remote address. Best effort: the
        pairs are found among live objects, as nothing public names a link's pair."""
        module = sys.modules.get("aioice.ice")
        if module is None:  # WebRTC never started here
            return {"pairs": []}
        gc.collect()
        pair_type = module.CandidatePair
        succeeded = pair_type.State.SUCCEEDED
        pairs = [
            {
                "local": obj.local_candidate.type,
                "remote": obj.remote_candidate.type,
                "remote_addr": f"{obj.remote_candidate.host}:{obj.remote_candidate.port}",
            }
            for obj in gc.get_objects()
            if isinstance(obj, pair_type) and obj.nominated and obj.state == succeeded
        ]
        return {"pairs": pairs}

    async def op_ping(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> Any:
        """Answer at once (the driver's readiness probe)."""
        return {"pid": os.getpid()}


_OPS = {
    "status": Agent.op_status,
    "send": Agent.op_send,
    "subscribe": Agent.op_subscribe,
    "quit": Agent.op_quit,
    "ping": Agent.op_ping,
    "ice": Agent.op_ice,
    "connect": Agent.op_connect,
}


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes | None]:
    """The lines read, without their newline; None once for each line longer than
    :data:`MAX_LINE`, whose bytes are skipped to its end."""
    partial = b""
    skipping = False
    while chunk := await reader.read(65536):
        *complete, rest = (partial + chunk).split(b"\n")
        for line in complete:
            if skipping:
                skipping = False  # the end of the long line
            elif len(line) > MAX_LINE:
                yield None
            else:
                yield line
        if len(rest) > MAX_LINE:
            if not skipping:
                yield None
            skipping, rest = True, b""
        partial = rest
    if partial and not skipping:
        yield partial


def _error(req: Any, text: str) -> dict[str, Any]:
    return {"req": req, "ok": False, "error": text}


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


# ----------------------------------------------------------------------------- entry


def _port_arg(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _options_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--options is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--options must be a JSON object")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The agent's command line."""
    parser = _Parser(prog="python -m peer_relay.testbed.agent", description=__doc__)
    parser.add_argument("--control", required=True, metavar="PATH", help="unix socket to serve")
    parser.add_argument(
        "--options", type=_options_arg, default={}, metavar="JSON", help="PeerRelay(**options)"
    )
    parser.add_argument("--bootstrap", action="append", default=[], metavar="URL")
    parser.add_argument(
        "--port", type=_port_arg, default=None, help="port to listen on (0: any; default none)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--identity", metavar="FILE", help="key file (created, mode 0600)")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when the process that started this one goes away",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


async def _watch_parent(parent: int, stopped: asyncio.Event) -> None:
    while not stopped.is_set():
        if os.getppid() != parent:
            _log.warning("parent %d went away: exiting", parent)
            stopped.set()
            return
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> int:
    """Start the peer, serve the control socket until told to stop; the exit status."""
    parent = os.getppid()
    identity = Identity.load_or_create(args.identity) if args.identity else None
    kwargs: dict[str, Any] = {"port": args.port, "host": args.host, "bootstrap": args.bootstrap}
    kwargs.update(args.options)
    peer = PeerRelay(identity=identity, **kwargs)
    agent = Agent(peer, args.control)
    await peer.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stopped.set)
    reader = asyncio.ensure_future(agent.read_messages())
    watcher = (
        asyncio.ensure_future(_watch_parent(parent, agent.stopped))
        if args.exit_with_parent
        else None
    )
    serving = asyncio.ensure_future(agent.serve())
    ready = {"ready": True, "id": peer.id.hex(), "url": peer.url, "pid": os.getpid()}
    while not Path(args.control).exists() and not serving.done():
        await asyncio.sleep(0.01)
    print(json.dumps(ready), flush=True)
    try:
        await serving
    finally:
        reader.cancel()
        if watcher is not None:
            watcher.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one agent; exit 0 on quit, 2 on bad arguments, 1 if the peer cannot start."""
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError) as exc:
        print(f"agent: bad options: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"agent: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
