#!/usr/bin/env python3
"""How much hostile input one core takes without breaking: a structure-aware frame fuzzer.

A target core is linked in memory to two honest cores (real keys, real signatures) and to an
attacker. The attacker starts from frames peers really exchange (link hellos, proofs, pings and
pongs, signed envelopes of every message type: user, findPeers, foundPeers, handshake offers
and answers, WebRTC signals), mutates them (any value swapped for another type, huge integers,
extreme floats, long strings, lone surrogates, invalid UTF-8, duplicate keys, nesting past
every limit, wrong-length ids, paths of 0 to 21 hops, Buffer-JSON ids, truncation, flipped
bytes), often signs the mutated message again with its own key (so that it passes the
signature check and reaches the handlers), and feeds each frame to ``Core.frame_received`` on
one of its links: a fresh inbound link (waiting for the hello), a link waiting for the proof,
an open authenticated link, a link the target dialled, a WebRTC link before its first frame,
and a link the target is draining. Closed links are opened again, as an attacker reconnects.

    python benchmarks/fuzz.py [--frames 1000000] [--seed 1] [--quick]

How to read it: ``escapes`` must be 0. An escape is an exception out of ``frame_received``
(the core must never raise on remote input); the first of each distinct kind is written under
/tmp with the frame that raised it and the link state it was fed in. ``honest failures`` must be
0 too: a frame the target sent an honest core that strict JSON refuses, a link between the
target and an honest core that closed (the honest cores close it at the first frame of the
target's they refuse; the cause is named where the fuzzer can tell it), or a probe an honest
core sent (one to the other through the target, one to the target) that did not arrive; the
first of each kind is written out too, with the attacker's frame that set it off. ``frames/s``
counts the fuzzer's own work (mutating, signing) with the cores'; it varies with the load.
Every key and choice comes from the seed; with PYTHONHASHSEED set too (the cores hash strings),
a seed gives the same run again on the same code.
Exit status 1 if anything escaped or an honest check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import (
    CloseLink,
    Delivered,
    DialWebSocket,
    Event,
    PeerLinked,
    SendFrame,
    SignalIn,
    StartWebRTC,
)
from peer_relay.identity import Identity, verify_ed25519
from peer_relay.transports.signals import SignalFilter

EPOCH = 1_700_000_000.0
STEP = 0.0005
"""Virtual seconds between two frames: the target's timers fire as they would under a flood."""
PROBE_EVERY = 2_000
"""Frames between two honest probes."""
MAX_KEPT = 8
"""Kinds of failure written out with a reproducer."""
ARENA_FRAMES = 20_000
"""Frames fed to one arena (fresh cores) before the next, in the next config."""
SRC = str(Path(__file__).resolve().parents[1] / "src")

MESSAGE_TYPES = (
    wire.USER,
    wire.FIND_PEERS,
    wire.FOUND_PEERS,
    wire.HANDSHAKE_OFFER,
    wire.HANDSHAKE_ANSWER,
    wire.SIGNAL,
)
KEYS = (
    "to",
    "from",
    "path",
    "nonce",
    "data",
    "auth",
    "route",
    "type",
    "key",
    "sig",
    "ts",
    "pr",
    "v",
    "proof",
    "ping",
    "pong",
    "ws",
    "wrtc",
    "sdp",
    "candidate",
    "sdpMid",
    "sdpMLineIndex",
    "renegotiate",
    "__proto__",
    "",
    "k" * 300,
)
NASTY: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    255,
    256,
    2**31,
    2**53 - 1,
    2**53,
    2**53 + 1,
    -(2**53),
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.5,
    -0.0,
    1.0,
    1e16,
    1e21,
    1e308,
    -1e308,
    5e-324,
    1.7976931348623157e308,
    "",
    "a",
    "é😀\u2028",
    "\x00",
    "x" * 5000,
    "ws://",
    "ws://h:99999",
    "wss://[::1]:443/p?q#f",
    "http://h",
    "ping",
    "offer",
    "answer",
    "Buffer",
    "aa" * 20,
    "AA" * 20,
    "a" * 39,
    "a" * 41,
    "g" * 40,
    "=" * 43,
    [],
    {},
    [[]],
    {"": {}},
    {"type": "Buffer", "data": [7] * 20},
    {"type": "Buffer", "data": [256] * 20},
    {"type": "Buffer", "data": [7] * 19},
    {"type": "Buffer", "data": [True] * 20},
    [{"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"}],
    {"candidate": "candidate:1 1 udp 1 x.local 9 typ host", "sdpMLineIndex": 0},
    {"type": "offer", "sdp": "v=0\r\n" * 20_000},
)
"""Values swapped in anywhere: every JSON type, the integer and float boundaries (2**53,
2**63, 2**64, 1e308, 5e-324, -0.0), long and odd strings, ids of the wrong length or case,
Buffer JSON right and wrong."""

RAW_TEXT: tuple[bytes, ...] = (
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" * 30,
    b"1" * 400,
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-0",
    b"1E5",
    b"9007199254740993",
    b"0.1e1",
    b"1.",
    b"01",
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\\ud83d\\ude00"',
    b'"\\ud800\\ud800"',
    b'"\xed\xa0\x80"',
    b'"\xff\xfe"',
    b'"\xc0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\x01"',
    b'"\\x"',
    b"[1,]",
    b"{",
    b"tru",
    b"\xef\xbb\xbf1",
)
"""JSON text no serialiser writes: numbers beyond 64 bits or a double, lone surrogates
(escaped and raw), invalid UTF-8, control characters, near misses of the grammar."""

DEPTHS = (2, 127, 128, 129, 130, 253, 254, 255, 256, 1023, 1024, 1025, 1100, 5000, 200_000)


class Mutator:
    """Builds valid frames and mutates them, from one seeded random source."""

    def __init__(self, rng: random.Random, target_hex: str, honest: list[str]) -> None:
        self.rng = rng
        self.attacker = Identity(rng.randbytes(32))
        self.attacker_hex = self.attacker.id.hex()
        self.target_hex = target_hex
        self.others = [*honest, rng.randbytes(20).hex()]
        """Other ids worth naming: the honest peers and a stranger."""
        sybils = [Identity(rng.randbytes(32)) for _ in range(3)]
        self.signers = {me.id.hex(): me for me in (self.attacker, *sybils)}
        """Every key the attacker holds. It names its sybils in foundPeers, sends from them
        (through its own link) and answers the target's offers to them: the target dials
        them, or starts WebRTC links to them."""
        self.nonces = 0
        self.splices: list[bytes] = []

    # ------------------------------------------------------------------ valid frames

    def payload(self, kind: str) -> Any:
        """A payload such as a peer sends in a message of type ``kind``."""
        rng = self.rng
        ids = [self.target_hex, *self.signers, *self.others]
        if kind == wire.USER:
            return rng.choice(
                [{"n": rng.randrange(1000), "s": "hi", "l": [1, 2.5, None, True]}, "text", 42]
            )
        if kind == wire.FIND_PEERS:
            return rng.choice(ids)
        if kind == wire.FOUND_PEERS:
            return rng.sample(ids, rng.randint(0, len(ids)))
        if kind in (wire.HANDSHAKE_OFFER, wire.HANDSHAKE_ANSWER):
            return {"ws": rng.choice([None, "ws://attacker:8000"]), "wrtc": rng.random() < 0.5}
        return rng.choice(
            [
                {"type": rng.choice(["offer", "answer"]), "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0"},
                {
                    "candidate": {
                        "candidate": "candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host",
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                    }
                },
                {"renegotiate": True},
            ]
        )

    def envelope(self) -> dict[str, Any]:
        """An envelope (not signed yet) from one of the attacker's ids, to the target or (to be
        relayed) another peer."""
        rng = self.rng
        kind = rng.choice(MESSAGE_TYPES)
        to = self.target_hex if rng.random() < 0.6 or not self.others else rng.choice(self.others)
        sender = self.attacker_hex if rng.random() < 0.6 else rng.choice(list(self.signers))
        self.nonces += 1
        env: dict[str, Any] = {
            "to": to,
            "from": sender,
            "path": [sender] if sender == self.attacker_hex else [sender, self.attacker_hex],
            "nonce": str(self.nonces),
            "data": {"type": kind, "data": self.payload(kind)},
        }
        if rng.random() < 0.1:
            env["route"] = [self.attacker_hex, self.target_hex, to]
        return env

    def sign(self, env: dict[str, Any], now: float) -> None:
        """Sign ``env`` (as mutated) with one of the attacker's keys, as its origin would."""
        try:
            body = wire.canonical(env["data"])
            to, sender, nonce = env["to"], env["from"], env["nonce"]
            message = wire.signed_bytes(to, sender, nonce, int(now * 1000), body)
        except (ValueError, TypeError, KeyError, AttributeError):
            return  # not something an origin can sign: it goes out as it is
        signer = self.signers.get(sender, self.attacker) if type(sender) is str else self.attacker
        signature = signer.sign(message)
        env["auth"] = {
            "key": wire.b64encode(signer.public_key),
            "sig": wire.b64encode(signature),
            "ts": int(now * 1000),
        }

    def hello(self, me: Identity) -> Any:
        """A link hello of ``me``'s: with its key (ours), only its id (0.0.2's), or in hex."""
        rng = self.rng
        form = rng.random()
        if form < 0.7:
            return orjson.loads(wire.hello_frame(me.id, me.public_key, rng.randbytes(16)))
        if form < 0.85:
            return {"type": "Buffer", "data": list(rng.randbytes(20))}
        return rng.randbytes(20).hex()

    # ------------------------------------------------------------------ mutation

    def slots(self, root: Any) -> list[tuple[Any, Any]]:
        """Every (container, key or index) in ``root``, a few hundred at most."""
        out: list[tuple[Any, Any]] = []
        stack = [root]
        while stack and len(out) < 300:
            node = stack.pop()
            if type(node) is dict:
                for key, value in node.items():
                    out.append((node, key))
                    if type(value) in (dict, list):
                        stack.append(value)
            elif type(node) is list:
                for index, value in enumerate(node[:50]):
                    out.append((node, index))
                    if type(value) in (dict, list):
                        stack.append(value)
        return out

    def raw(self, text: bytes) -> str:
        """A placeholder that :meth:`serialise` replaces by ``text``, written as it is."""
        self.splices.append(text)
        return f"\x00splice{len(self.splices) - 1}\x00"

    def deep(self) -> bytes:
        """Arrays or objects nested to one of :data:`DEPTHS` levels, as JSON text."""
        rng = self.rng
        depth = rng.choice(DEPTHS)
        opening, closing = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"":', b"}]")])
        inner = rng.choice([b"1", b"[]", b"{}", b'"x"'])
        return opening * depth + inner + closing * depth

    def nasty(self) -> Any:
        """A value to put anywhere: of :data:`NASTY`, :data:`RAW_TEXT`, nested, or ids."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.55:
            return rng.choice(NASTY)
        if pick < 0.75:
            return self.raw(rng.choice(RAW_TEXT))
        if pick < 0.85:
            return self.raw(self.deep())
        if pick < 0.95:
            value: Any = rng.choice(NASTY)
            for _ in range(rng.choice((1, 2, 126, 127, 128, 129, 200))):
                value = [value] if rng.random() < 0.5 else {"d": value}
            return value
        return self.ids(rng.choice((0, 1, 19, 20, 21, 40)))

    def ids(self, count: int) -> list[Any]:
        """``count`` ids: right, wrong, ours, the target's, as hex or Buffer JSON."""
        rng = self.rng
        pool: list[Any] = [self.target_hex, self.attacker_hex, *self.others, "0" * 40]
        pool += [{"type": "Buffer", "data": list(bytes.fromhex(self.attacker_hex))}, "a" * 39]
        return [rng.choice(pool) for _ in range(count)]

    def readdress(self, env: dict[str, Any]) -> None:
        """New ids where they matter together: the origin (maybe the target itself, or a peer
        the attacker does not hold the key of), the path (0 to 21 hops), the target, a hint."""
        rng = self.rng
        for name in rng.sample(("from", "path", "to", "route"), rng.randint(1, 4)):
            if name in ("path", "route"):
                env[name] = self.ids(rng.choice((0, 1, 2, 19, 20, 21)))
            else:
                env[name] = self.ids(1)[0]

    def mutate(self, obj: Any) -> Any:
        """``obj`` after one to three mutations (done in place where they can be)."""
        rng = self.rng
        holder = [obj]
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            slots = self.slots(holder[0])
            slots.append((holder, 0))  # the whole frame
            node, key = rng.choice(slots)
            op = rng.random()
            if op < 0.45 or (node is holder and op < 0.93):
                node[key] = self.nasty()
            elif op < 0.55 and type(node) is dict:
                del node[key]
            elif op < 0.55:
                node.pop(key)
            elif op < 0.68 and type(node) is dict:
                node[rng.choice(KEYS)] = self.nasty()
            elif op < 0.78 and type(node) is dict:
                # A duplicate key: the first and the second value differ.
                first = self.serialise_value(node[key])
                second = self.serialise_value(self.nasty())
                node[key] = self.raw(first + b"," + orjson.dumps(key) + b":" + second)
            elif op < 0.86 and type(holder[0]) is dict:
                self.readdress(holder[0])
            elif op < 0.93:
                node[key] = self.retype(node[key])
            else:
                holder[0] = [holder[0]] if rng.random() < 0.5 else {"pr": holder[0]}
        return holder[0]

    def retype(self, value: Any) -> Any:
        """The same content as another type: 5 -> "5", "5" -> ["5"], [x] -> {"0": x}..."""
        kind = type(value)
        if kind is dict:
            return list(value.values())
        if kind is list:
            return {str(index): item for index, item in enumerate(value)}
        if kind is str:
            return [value] if self.rng.random() < 0.5 else len(value)
        if kind is bool or value is None:
            return int(bool(value))
        return str(value) if self.rng.random() < 0.5 else float(value)

    def serialise_value(self, value: Any) -> bytes:
        """``value`` as JSON (null if orjson will not write it)."""
        try:
            return orjson.dumps(value)
        except TypeError:  # a cycle or nesting orjson will not write
            return b"null"

    def serialise(self, obj: Any) -> bytes:
        """``obj`` as JSON, with the raw text of every placeholder spliced in."""
        try:
            text = orjson.dumps(obj)
        except TypeError:
            text = b"null"
        for index, splice in enumerate(self.splices):
            text = text.replace(f'"\\u0000splice{index}\\u0000"'.encode(), splice)
        self.splices.clear()
        return text

    def damage(self, frame: bytes) -> bytes | str:
        """Byte-level damage after serialising, to some frames: truncated, flipped, padded."""
        rng = self.rng
        pick = rng.random()
        if pick > 0.3 or not frame:
            return frame
        at = rng.randrange(len(frame))
        if pick < 0.06:
            return frame[:at]
        if pick < 0.12:
            return frame[:at] + bytes([frame[at] ^ (1 << rng.randrange(8))]) + frame[at + 1 :]
        if pick < 0.17:
            return frame[:at] + bytes([rng.randrange(256)]) + frame[at:]
        if pick < 0.21:
            return frame[:at] + frame[at + rng.randint(1, 8) :]
        if pick < 0.25:
            return frame.decode("utf-8", "surrogateescape")  # as text, maybe with surrogates
        if pick < 0.28:
            return b" \t\n\r" + frame + rng.choice((b"", b" ", b"\x00", b"}", b"\n{}"))
        return frame.replace(b'"', b"'", 1)

    def frame(self, kind: str, now: float, proof: bytes | None, me: Identity | None) -> bytes | str:
        """A mutated frame for a link in state ``kind``, whose proof (if one is due) is
        ``proof``, and whose remote the target expects to be ``me`` (if it said whom)."""
        rng = self.rng
        pick = rng.random()
        obj: Any
        if kind in ("hello", "dialled") and pick < 0.6:
            obj = self.hello(me or self.attacker)
        elif kind == "proof" and pick < 0.6 and proof is not None:
            obj = orjson.loads(proof)
        elif pick < 0.08:
            obj = {"pr": {rng.choice(("ping", "pong")): rng.randrange(5)}}
        elif pick < 0.1:
            obj = orjson.loads(wire.proof_frame(rng.randbytes(64)))
        elif pick < 0.12:
            return rng.randbytes(rng.randrange(64))
        else:
            obj = self.envelope()
            # Signed as built (mutations then break the signature, or the auth itself), or as
            # mutated (the attacker signs what it likes: the frame reaches the handlers).
            if rng.random() < 0.4:
                self.sign(obj, now)
            else:
                obj = self.mutate(obj) if rng.random() < 0.85 else obj
                if type(obj) is dict:
                    self.sign(obj, now)
                return self.damage(self.serialise(obj))
        if rng.random() < 0.15:
            return self.damage(self.serialise(obj))  # a valid frame, or only damaged bytes
        return self.damage(self.serialise(self.mutate(obj)))


class Arena:
    """The target, two honest cores linked to it in memory, and the attacker's links to it.

    The honest cores close their link to the target at the first frame of the target's they
    refuse (``max_strikes=1``): the target must never pass on what an honest peer refuses.
    """

    def __init__(self, rng: random.Random, config: Config, now: float) -> None:
        self.now = now
        # Real Ed25519 keys, drawn from the seeded source: a seed gives the same run again.
        self.rng = rng
        self.target = Core(
            Identity(rng.randbytes(32)), config, rng=random.Random(rng.random()), now=now
        )
        strict = Config(max_strikes=1)
        self.honest = [
            Core(Identity(rng.randbytes(32)), strict, rng=random.Random(rng.random()), now=now)
            for _ in range(2)
        ]
        self.mutator = Mutator(rng, self.target.hex, [core.hex for core in self.honest])
        self.attacker = self.mutator.attacker
        self.to_honest: dict[int, tuple[int, int]] = {}
        """Target handle -> (index of the honest core, its handle for the same link)."""
        self.to_target: dict[tuple[int, int], int] = {}
        self.links: dict[int, str] = {}
        """The attacker's links: target handle -> hello, proof, open, dialled, webrtc, draining."""
        self.expected: dict[int, bytes] = {}
        """The id the target expects on the links it started (if it said)."""
        self.outbound: set[int] = set()
        """The links the target started."""
        self.nonces: dict[int, bytes] = {}
        """The nonce of the target's hello on each attacker link."""
        self.proofs: dict[int, bytes] = {}
        """The proof that opens each attacker link waiting for one."""
        self.lost: list[tuple[str, str]] = []
        """What went wrong for the honest cores: (what, details)."""
        self.delivered: list[list[Delivered]] = [[], [], []]
        """What the honest cores and the target delivered (the target last)."""
        self.last_to_honest = [b"", b""]
        self.queue: deque[tuple[Core, int, bytes | str]] = deque()
        self.signals: dict[int, SignalFilter] = {}
        for index in range(len(self.honest)):
            self.link_honest(index)

    # ------------------------------------------------------------------ wiring

    def link_honest(self, index: int) -> None:
        """Link honest core ``index`` to the target (it dials, as a peer that bootstraps)."""
        core = self.honest[index]
        ours = self.target.link_accepted(self.now)
        core.bootstrap(["ws://target"], self.now)
        dial = next(e for e in core.events() if isinstance(e, DialWebSocket))
        self.to_honest[ours] = (index, dial.handle)
        self.to_target[(index, dial.handle)] = ours
        core.link_connected(dial.handle, self.now)
        self.pump()

    def feed(self, handle: int, frame: bytes | str) -> list[Event]:
        """One frame of the attacker's on ``handle``; the target's events it caused."""
        target = self.target
        target.frame_received(handle, frame, self.now)
        events = target.events()
        self.target_events(events)
        self.pump()
        return events

    def pump(self) -> None:
        """Carry every frame between the cores and carry out their events until all is quiet."""
        for _ in range(1000):
            self.target_events(self.target.events())
            for index, core in enumerate(self.honest):
                self.honest_events(index, core.events())
            if not self.queue:
                return
            while self.queue:
                core, handle, frame = self.queue.popleft()
                core.frame_received(handle, frame, self.now)
        raise RuntimeError("the cores never went quiet")

    def target_events(self, events: list[Event]) -> None:
        """Carry out the target's events: as its host, and as the attacker's end."""
        target = self.target
        for event in events:
            if isinstance(event, SendFrame):
                honest = self.to_honest.get(event.handle)
                if honest is not None:
                    index, theirs = honest
                    self.check_strict(event.frame)
                    self.queue.append((self.honest[index], theirs, event.frame))
                    self.last_to_honest[index] = event.frame
                elif event.frame.startswith(b'{"type":"Buffer"'):  # its hello to the attacker
                    self.nonces[event.handle] = (
                        wire.parse_hello(orjson.loads(event.frame)).nonce or b""
                    )
            elif isinstance(event, CloseLink):
                honest = self.to_honest.pop(event.handle, None)
                if honest is not None:
                    self.lost.append((f"the target closed an honest link: {event.reason}", ""))
                    del self.to_target[honest]
                    self.honest[honest[0]].link_closed(honest[1], self.now)
                    target.link_closed(event.handle, self.now)
                elif self.links.get(event.handle) == "open":
                    self.links[event.handle] = "draining"  # the attacker may still send on it
                else:
                    self.links.pop(event.handle, None)
                    target.link_closed(event.handle, self.now)
            elif isinstance(event, DialWebSocket):
                self.started(event.handle, "dialled", event.expected_id)
            elif isinstance(event, StartWebRTC):
                self.started(event.handle, "webrtc", event.peer_id)
            elif isinstance(event, Delivered):
                self.delivered[-1].append(event)
            elif isinstance(event, SignalIn):
                # What a WebRTC link does with a signal first: the filter takes anything.
                self.signals.setdefault(event.handle, SignalFilter(False)).check(event.signal)

    def started(self, handle: int, kind: str, expected: bytes | None) -> None:
        """The target dials the attacker or starts a WebRTC link to it: it connects (two of
        each kind at a time; more are refused)."""
        if sum(1 for state in self.links.values() if state == kind) >= 2:
            self.target.link_closed(handle, self.now, "refused")
            return
        self.links[handle] = kind
        self.outbound.add(handle)
        if expected is not None:
            self.expected[handle] = expected
        self.target.link_connected(handle, self.now)

    def honest_events(self, index: int, events: list[Event]) -> None:
        """Carry out the events of honest core ``index``: as its host."""
        core = self.honest[index]
        for event in events:
            if isinstance(event, SendFrame):
                ours = self.to_target.get((index, event.handle))
                if ours is not None:
                    self.queue.append((self.target, ours, event.frame))
            elif isinstance(event, CloseLink):
                ours = self.to_target.pop((index, event.handle), None)
                if ours is not None:
                    drops = ", ".join(sorted(core.stats.dropped))
                    cause = self.cause(self.last_to_honest[index])
                    self.lost.append(
                        (
                            f"an honest core closed its link to the target: {event.reason}{cause}",
                            f"its drops: {drops}\nthe target's last frame to it: "
                            f"{self.last_to_honest[index]!r}",
                        )
                    )
                    del self.to_honest[ours]
                    self.target.link_closed(ours, self.now)
                    core.link_closed(event.handle, self.now)
            elif isinstance(event, DialWebSocket | StartWebRTC):
                core.link_closed(event.handle, self.now, "refused")
            elif isinstance(event, Delivered):
                self.delivered[index].append(event)

    def check_strict(self, frame: bytes) -> None:
        """A frame the target sends a peer is strict JSON in UTF-8 (a WebSocket text frame that
        is not UTF-8 fails the whole connection, and a peer whose parser reads every member
        refuses what orjson refuses), however lax the target's own reading of it was."""
        try:
            orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            why = str(exc).split(": line ")[0]  # without the position: one kind, one line
            self.lost.append(
                (f"the target sent an honest core a frame strict JSON refuses: {why}", repr(frame))
            )

    def cause(self, frame: bytes) -> str:
        """What the target's last frame to an honest core was, where it tells why the core
        closed its link."""
        try:
            obj = wire.loads(frame, 1 << 30)
        except wire.WireError as exc:
            why = str(exc).split(": line ")[0]
            return f" (the target passed on a frame it should have refused: {why})"
        try:
            env = wire.parse_envelope(obj)
            if env.sender != self.target.hex or env.path != [env.sender]:
                return ""
            auth = wire.parse_auth(env.raw.get("auth"))
            data, _ = wire.canonical_received(env.raw.get("data"))
        except (ValueError, wire.WireError):
            auth = None
        if auth is not None:
            signed = wire.signed_bytes(env.to, env.sender, env.nonce, auth.ts, data)
            if verify_ed25519(self.target.identity.public_key, auth.sig, signed):
                return ""  # the target's own message
        return " (the target passed on a forgery in its own name, sent with an empty path)"

    # ------------------------------------------------------------------ the attacker's links

    def open_link(self, state: str) -> int:
        """A new inbound link of the attacker's, brought to ``state`` (hello, proof or open)."""
        handle = self.target.link_accepted(self.now)
        self.links[handle] = "hello"
        self.pump()
        if state == "hello" or handle not in self.links:
            return handle
        me, mine = self.attacker, self.rng.randbytes(16)
        self.links[handle] = "proof"
        self.feed(handle, wire.hello_frame(me.id, me.public_key, mine))
        self.expect_proof(handle, me, mine)
        if state == "proof" or handle not in self.links:
            return handle
        self.links[handle] = "open"
        self.feed(handle, self.proofs.pop(handle))
        return handle

    def expect_proof(self, handle: int, me: Identity, mine: bytes) -> None:
        """The target answered ``me``'s hello (with nonce ``mine``) on ``handle``: make the
        proof that opens the link."""
        theirs = self.nonces.get(handle, b"")
        signed = wire.link_proof_bytes(
            theirs, mine, self.target.id, me.id, prover_dialled=handle not in self.outbound
        )
        self.proofs[handle] = wire.proof_frame(me.sign(signed))

    def link_in(self, state: str) -> int:
        """A link of the attacker's in ``state``: one left over, else a new one (the links
        the target starts come when they come; meanwhile an open one stands in)."""
        for handle, now_in in self.links.items():
            if now_in == state:
                return handle
        if state in ("dialled", "webrtc", "draining"):
            return self.link_in("open")
        return self.open_link(state)

    def fed(self, handle: int, state: str, frame: bytes | str, events: list[Event]) -> None:
        """Follow what a frame did to the attacker's link ``handle`` (in ``state`` before)."""
        links = self.links
        if state == "draining":
            links.pop(handle, None)
            self.target.link_closed(handle, self.now)  # its transport is gone at last
        elif handle in links and state not in ("open", "webrtc"):
            if any(isinstance(e, PeerLinked) for e in events):
                links[handle] = "open"
            elif any(
                isinstance(e, SendFrame) and e.handle == handle and b'"proof"' in e.frame
                for e in events
            ):
                # The (maybe mutated) hello was taken: the target waits for the proof.
                links[handle] = "proof"
                self.proofs.pop(handle, None)
                try:
                    hello = wire.parse_hello(orjson.loads(frame))
                except (ValueError, wire.WireError):
                    return
                me = self.mutator.signers.get(hello.peer_id.hex())
                if me is not None and hello.key == me.public_key and hello.nonce is not None:
                    self.expect_proof(handle, me, hello.nonce)
        elif state == "webrtc" and any(isinstance(e, PeerLinked) for e in events):
            links[handle] = "open"
        opened = [h for h, s in links.items() if s == "open"]
        if len(opened) > 3:  # the attacker hangs up its oldest: a few links are enough
            del links[opened[0]]
            self.target.link_closed(opened[0], self.now)

    def frame_for(self, handle: int, state: str) -> bytes | str:
        """A mutated frame for the attacker's link ``handle``."""
        expected = self.expected.get(handle)
        me = self.mutator.signers.get(expected.hex()) if expected is not None else None
        return self.mutator.frame(state, self.now, self.proofs.get(handle), me)

    # ------------------------------------------------------------------ the honest side

    def probe(self, number: int) -> None:
        """An honest core sends to the other one through the target, and to the target."""
        a, b = self.honest
        self.delivered = [[], [], []]
        probe = {"probe": number}
        a.send(b.id, probe, self.now)
        a.send(self.target.id, probe, self.now)
        self.pump()
        if not any(d.data == probe and d.sender == a.id for d in self.delivered[1]):
            self.lost.append(("a probe through the target did not arrive", ""))
        if not any(d.data == probe and d.sender == a.id for d in self.delivered[-1]):
            self.lost.append(("a probe to the target did not arrive", ""))

    def relink(self) -> None:
        """Link the honest cores that lost their link to the target again."""
        linked = {index for index, _ in self.to_honest.values()}
        for index in range(len(self.honest)):
            if index not in linked:
                self.link_honest(index)

    def tick(self) -> None:
        """Fire the timers that are due."""
        for core in (self.target, *self.honest):
            due = core.get_timer()
            if due is not None and due <= self.now:
                core.handle_timer(self.now)
        self.pump()


CONFIGS: tuple[tuple[str, Callable[[], Config]], ...] = (
    ("default", lambda: Config(url="ws://target")),
    (
        "webrtc, unsigned allowed",
        lambda: Config(webrtc=True, require_auth=False, strategy="original", max_strikes=1000),
    ),
    (
        "small bounds, not dialable",
        lambda: Config(max_frame=4096, max_hops=5, max_seen=64, max_routes=8, max_links=8),
    ),
)
STATES = ("open",) * 6 + ("hello", "hello", "proof", "proof", "dialled", "webrtc", "draining")


def where(exc: BaseException) -> str:
    """The innermost line of the package in the traceback (where it raised)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(SRC)]
    last = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{os.path.relpath(last.filename, SRC)}:{last.lineno}"


@dataclass
class Results:
    """What a run found."""

    fed: Counter[str] = field(default_factory=Counter)
    """Frames fed, by the state of the link they were fed on."""
    escapes: Counter[str] = field(default_factory=Counter)
    """Exceptions out of the core, by type and the line of the package that raised."""
    honest: Counter[str] = field(default_factory=Counter)
    """Honest failures, by what went wrong."""
    kept: dict[str, str] = field(default_factory=dict)
    """Where the reproducer of the first of each kind is."""
    arenas: int = 0


def run(frames: int, seed: int) -> Results:
    """Feed ``frames`` mutated frames, a new arena (config in turn) every ARENA_FRAMES."""
    rng = random.Random(seed)
    results = Results()
    now = EPOCH
    done = 0
    while done < frames:
        name, make = CONFIGS[results.arenas % len(CONFIGS)]
        results.arenas += 1
        arena = Arena(rng, make(), now)
        for _ in range(min(ARENA_FRAMES, frames - done)):
            done += 1
            now += STEP
            arena.now = now
            state = rng.choice(STATES)
            frame: bytes | str = b""
            try:
                handle = arena.link_in(state)
                state = arena.links.get(handle, "gone")
                frame = arena.frame_for(handle, state)
                results.fed[state] += 1
                arena.fed(handle, state, frame, arena.feed(handle, frame))
                if done % 64 == 0:
                    arena.tick()
                if done % PROBE_EVERY == 0:
                    arena.probe(done)
            except Exception as exc:  # an escape: the core raised
                key = f"{type(exc).__name__} at {where(exc)}"
                results.escapes[key] += 1
                keep(results, key, seed, name, state, frame, exc)
                arena = Arena(rng, make(), now)  # its state may be broken: start over
                results.arenas += 1
                continue
            for what, details in arena.lost:
                key = f"[{name}] {what}"
                results.honest[key] += 1
                keep(results, key, seed, name, state, frame, details)
            if arena.lost:
                arena.lost.clear()
                arena.relink()
        arena.probe(done)
        results.honest.update(f"[{name}] {what}" for what, _ in arena.lost)
    return results


def keep(
    results: Results,
    key: str,
    seed: int,
    config: str,
    state: str,
    frame: bytes | str,
    why: BaseException | str,
) -> None:
    """Write a reproducer for the first failure of each kind (a few kinds at most)."""
    if key not in results.kept and len(results.kept) < MAX_KEPT:
        results.kept[key] = save_reproducer(seed, len(results.kept), config, state, frame, why)


def save_reproducer(
    seed: int, index: int, config: str, state: str, frame: bytes | str, why: BaseException | str
) -> str:
    """Write ``frame`` (as fed) and what went wrong under /tmp; return the description's path."""
    base = Path("/tmp") / f"peer_relay_fuzz_seed{seed}_{index}"
    raw = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
    base.with_suffix(".frame").write_bytes(raw)
    base.with_suffix(".txt").write_text(
        f"config: {config}\nlink state: {state}\n"
        + (
            "fed as text: read the file back with .decode('utf-8', 'surrogatepass')\n"
            if isinstance(frame, str)
            else "fed as bytes\n"
        )
        + f"frame ({len(raw)} bytes, in {base.with_suffix('.frame')}): {raw[:300]!r}\n\n"
        + (why if isinstance(why, str) else "".join(traceback.format_exception(why)))
    )
    return str(base.with_suffix(".txt"))


def report(frames: int, seed: int, wall: float, cpu: float, results: Results) -> None:
    """Print what a run found, with the date and the load it ran under."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    fed = ", ".join(f"{state} {count:,}" for state, count in results.fed.most_common())
    print(f"peer-relay frame fuzzer, {datetime.now().isoformat(timespec='seconds')}")
    print(f"  python {sys.version.split()[0]}, seed {seed}, load average {load}")
    print(f"  frames fed:       {frames:,} ({fed})")
    print(f"  arenas:           {results.arenas}")
    print(f"  wall time:        {wall:.1f} s ({frames / wall:,.0f} frames/s)")
    print(f"  cpu time:         {cpu:.1f} s ({frames / cpu:,.0f} frames per cpu second)")
    for title, counts in (("escapes", results.escapes), ("honest failures", results.honest)):
        print(f"  {title + ':':<18}{sum(counts.values()):,}")
        for key, count in counts.most_common():
            print(f"    {count:>8,}  {key}")
            if key in results.kept:
                print(f"              reproducer: {results.kept[key]}")


def main() -> None:
    """Run the fuzzer as the command line says; exit 1 if anything escaped or failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames to feed")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutator")
    parser.add_argument("--quick", action="store_true", help="20,000 frames: a smoke test")
    args = parser.parse_args()
    frames = 20_000 if args.quick else args.frames
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    results = run(frames, args.seed)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    report(frames, args.seed, wall, cpu, results)
    sys.exit(1 if results.escapes or results.honest else 0)


if __name__ == "__main__":
    main()
