"""A man in the middle: a raw peer that holds the only links of honest client-only peers, relays
the envelopes between them, and lets a test read, drop, alter, replay and forge what it relays.

It listens on loopback (a free port), completes the link hello and proof as the accepting side
with a key of its own (and as the dialling side, as ``attacker.Link`` does, for the links it
dials: :meth:`Mitm.dial`), answers the hop-by-hop pings of its peers (so they never take it for
dead), and passes every envelope for one of its peers to :attr:`Mitm.rule`, which says what to
send on instead: by default the envelope relayed as an honest relay would (its id appended to the
path, the rest as written).

Session messages (``{"data": "<base64>", "type": "sealed"}``, see ``core/sessions.py``) are
taken apart with the core's own parsers; :func:`flipped` and :meth:`Mitm.rewrite` make altered
copies. It depends on ``peer_relay``, ``orjson`` and ``websockets`` only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from peer_relay import Identity, wire
from peer_relay.core.sessions import ACCEPT, KEY, KEY_ASK, OPEN, SEALED
from peer_relay.wire import WireError

KINDS = {KEY_ASK: "KEY_ASK", KEY: "KEY", OPEN: "OPEN", ACCEPT: "ACCEPT", SEALED: "SEALED"}
"""The session messages by their first byte."""
PROLOGUE = b"peer-relay session v1"
"""What every session handshake's prologue starts with (the protocol's name and version)."""
MAX_FRAME = 1 << 30


def new_nonce() -> str:
    """A fresh envelope nonce, shaped as our peers write them."""
    return str(int.from_bytes(os.urandom(8), "big") >> 1)


def flipped(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    """``blob`` with the byte at ``index`` XORed with ``mask``."""
    return blob[:index] + bytes((blob[index] ^ mask,)) + blob[index + 1 :]


def sealed_member(blob: bytes) -> dict[str, str]:
    """The ``data`` member of a session message carrying ``blob``."""
    return {"data": base64.b64encode(blob).decode(), "type": wire.SEALED}


@dataclass
class Passing:
    """An envelope that reached the middle over the link of ``src`` (hex id)."""

    src: str
    frame: bytes
    obj: dict[str, Any]
    env: wire.Envelope
    blob: bytes | None
    """The session bytes of a session message, else None."""
    at: float

    @property
    def to(self) -> str:
        return self.env.to

    @property
    def sender(self) -> str:
        return self.env.sender

    @property
    def kind(self) -> int | None:
        """The session message's kind (``KEY_ASK`` ... ``SEALED``), None for other messages."""
        return self.blob[0] if self.blob else None

    @property
    def sid(self) -> int | None:
        """The session id of an OPEN, ACCEPT or SEALED."""
        if self.blob is None or self.kind not in (OPEN, ACCEPT, SEALED):
            return None
        return int.from_bytes(self.blob[1:5], "big")


Rule = Callable[[Passing], list[bytes]]
"""What to send on to ``passing.to`` for an envelope that passes: frames, in order."""


class Mitm:
    """The raw relay in the middle (see the module docstring). Use as ``async with``."""

    def __init__(self, me: Identity | None = None) -> None:
        self.me = me or Identity.generate()
        self.hex = self.me.id.hex()
        self.links: dict[str, Connection] = {}
        """The open links, by the hex id of the peer at their other end."""
        self.frames: list[tuple[str, bytes]] = []
        """Every frame read after a link's handshake, with the peer that sent it."""
        self.seen: list[Passing] = []
        """Every envelope read, in order (those for the middle itself too)."""
        self.pongs = 0
        self.errors: list[str] = []
        """Frames it could not take apart: there should be none, our peers write well."""
        self.rule: Rule = self.honest
        self._server: Server | None = None
        self._dialled: list[tuple[Connection, asyncio.Task[None]]] = []
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> Mitm:
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            0,
            compression=None,
            max_size=None,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for ws, reader in self._dialled:
            with contextlib.suppress(Exception):
                await ws.close()
            with contextlib.suppress(Exception):
                await reader
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    # ------------------------------------------------------------------ links

    async def _serve(self, ws: ServerConnection) -> None:
        try:
            mine = os.urandom(16)
            await ws.send(wire.hello_frame(self.me.id, self.me.public_key, mine).decode())
            hello = wire.parse_hello(orjson.loads(await ws.recv()))
            if hello.nonce is None:
                return
            signed = wire.link_proof_bytes(
                hello.nonce, mine, hello.peer_id, self.me.id, prover_dialled=False
            )
            await ws.send(wire.proof_frame(self.me.sign(signed)).decode())
            await ws.recv()  # the peer's proof: the middle does not care who it is
        except (ConnectionClosed, WireError, orjson.JSONDecodeError):
            return
        await self._read(hello.peer_id.hex(), ws)

    async def dial(self, url: str) -> str:
        """Link to the peer at ``url`` (the dialling side of the hello and proof); return its
        hex id. Its frames are read as those of the links made to the middle."""
        ws = await connect(url, compression=None, max_size=None, ping_interval=None)
        hello = wire.parse_hello(orjson.loads(await ws.recv()))
        mine = os.urandom(16)
        await ws.send(wire.hello_frame(self.me.id, self.me.public_key, mine).decode())
        await ws.recv()  # the peer's proof
        signed = wire.link_proof_bytes(hello.nonce or b"", mine, hello.peer_id, self.me.id)
        await ws.send(wire.proof_frame(self.me.sign(signed)).decode())
        peer = hello.peer_id.hex()
        self.links[peer] = ws
        self._dialled.append((ws, asyncio.create_task(self._read(peer, ws))))
        return peer

    async def _read(self, peer: str, ws: Connection) -> None:
        self.links[peer] = ws
        self._changed.set()
        try:
            async for message in ws:
                frame = message.encode() if isinstance(message, str) else bytes(message)
                await self._on_frame(peer, frame)
        except ConnectionClosed:
            pass
        finally:
            if self.links.get(peer) is ws:
                del self.links[peer]
            self._changed.set()

    async def wait_linked(self, *peers: bytes, timeout: float = 10.0) -> None:
        """Wait until each of ``peers`` holds a link to the middle."""
        deadline = time.monotonic() + timeout
        while not all(peer.hex() in self.links for peer in peers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not linked to the middle after {timeout}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))

    async def send_to(self, peer_hex: str, frame: bytes) -> bool:
        """Send one frame on the link to ``peer_hex``; False if there is none (any more)."""
        ws = self.links.get(peer_hex)
        if ws is None:
            return False
        try:
            await ws.send(frame.decode())
        except ConnectionClosed:
            return False
        return True

    async def _on_frame(self, peer: str, frame: bytes) -> None:
        self.frames.append((peer, frame))
        try:
            obj = orjson.loads(frame)
            if type(obj) is dict and "pr" in obj and "to" not in obj:
                kind, number = wire.parse_link_control(obj)
                if kind == "ping":
                    self.pongs += 1
                    await self.send_to(peer, wire.link_control_frame("pong", number))
                return
            env = wire.parse_envelope(wire.loads_members(frame, MAX_FRAME))
            blob = wire.sealed_blob(env) if wire.data_kind(env) == wire.SEALED else None
        except (WireError, orjson.JSONDecodeError) as exc:
            self.errors.append(f"{peer[:8]}: {exc!r}")
            return
        passing = Passing(peer, frame, obj, env, blob, time.monotonic())
        self.seen.append(passing)
        if passing.to == self.hex or passing.to not in self.links:
            return
        for out in self.rule(passing):
            await self.send_to(passing.to, out)

    # ------------------------------------------------------------------ frames

    def honest(self, passing: Passing) -> list[bytes]:
        """The rule of an honest relay: pass it on, our id appended to its path."""
        return [self.relayed(passing)]

    def relayed(self, passing: Passing) -> bytes:
        """``passing`` as an honest relay passes it on (data as written)."""
        return wire.relay_frame(passing.env, self.hex)

    def rewrite(
        self,
        passing: Passing,
        blob: bytes | None = None,
        *,
        nonce: str | None = None,
        sender: str | None = None,
        to: str | None = None,
    ) -> bytes:
        """``passing`` relayed with its session bytes, envelope nonce, ``from`` or ``to``
        replaced (a session message's envelope is not signed: a relay may write what it
        likes there, and only the session can tell)."""
        obj = dict(passing.obj)
        if blob is not None:
            obj["data"] = sealed_member(blob)
        if nonce is not None:
            obj["nonce"] = nonce
        if to is not None:
            obj["to"] = to
        path = list(obj["path"])
        if sender is not None:
            obj["from"] = sender
            path[0] = sender
        obj["path"] = [*path, self.hex]
        return orjson.dumps(obj)

    def forged(self, to_hex: str, sender_hex: str, blob: bytes) -> bytes:
        """A session message carrying ``blob`` that claims to come from ``sender_hex`` and to
        have been handed to the middle by it."""
        return orjson.dumps(
            {
                "to": to_hex,
                "from": sender_hex,
                "path": [sender_hex, self.hex],
                "nonce": new_nonce(),
                "data": sealed_member(blob),
            }
        )

    def sealed(self, src: str | None = None, kind: int | None = None) -> list[Passing]:
        """The session messages seen so far, from ``src`` and of ``kind`` if given."""
        return [
            p
            for p in self.seen
            if p.blob is not None
            and (src is None or p.src == src)
            and (kind is None or p.kind == kind)
        ]

    def views(self) -> Iterator[bytes]:
        """Every form the middle saw what it read in: each frame as written, and the session
        bytes of each session message decoded from their base64."""
        for _peer, frame in self.frames:
            yield frame
        for passing in self.seen:
            if passing.blob is not None:
                yield passing.blob
