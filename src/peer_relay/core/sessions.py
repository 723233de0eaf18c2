"""Sessions: end-to-end encryption between two of our peers, set up by itself on first use.

Every session message is an ordinary envelope whose data is ``{"type": "sealed", "data": B64}``,
so relays (0.0.2's too) pass it on like any other and see routing fields and ciphertext only.
The bytes under ``B64`` start with one byte saying what they are (see ``docs/sessions.md``):

- ``KEY_ASK`` + our Ed25519 key: "tell me your key" (when we have not seen the peer's key: the
  id is only its hash). ``KEY`` + its Ed25519 key is the answer. Neither needs a signature:
  the key must hash to the sender's id.
- ``OPEN`` + sid (4) + Noise IK message 1, whose payload is the initiator's Ed25519 key, the time
  (ms) and possibly the first message (data rides in the handshake: no extra round trip).
- ``ACCEPT`` + sid + IK message 2, whose payload may carry the responder's first message (a
  receipt, a reply).
- ``SEALED`` + sid + n (8) + ciphertext: a message under the session's keys, nonce ``n``; the
  header is the AEAD's associated data.

Messages cross different paths and arrive out of order: each direction has a sliding replay
window of ``WINDOW`` nonces. A session is replaced by a new handshake after ``session_rekey``
seconds (forward secrecy moves on), forgotten after ``session_idle`` idle seconds, and at most
``max_sessions`` peers have session state (least recently used go first). A peer that gets a
message for a session it does not know (it restarted) says so in a signed ``session-reset``
message naming the first nonce it could not open and when it started; the sender then starts
again, and sends again in the new session what it sealed in the old one since that peer started
(from that nonce on, within ``session_resend`` seconds and the bounds of ``Config``): what no
incarnation of the peer could read, so a restart loses no recent message and none arrives
twice (unless the clocks differ by more than the restart took). Whatever fails is dropped,
counted and reported to the owner (which charges the budgets and strikes), never raised.
"""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..identity import id_for_key, is_weak_key
from ..ids import short
from ..sealing import TAG, Aead, Handshake, SealError, Suite, x25519_public_from_ed25519
from .bounded import BoundedMap
from .config import Config
from .context import Context, log

KEY_ASK = 1
KEY = 2
OPEN = 3
ACCEPT = 4
SEALED = 5
WINDOW = 1024
"""Nonces of the replay window: a message more than this many behind the newest is dropped."""
REKEY_MESSAGES = 1 << 30
"""Messages sent on one session before a new handshake replaces it."""
BACKOFF = 1.5
"""How much longer each wait for an answer is than the last: a resend takes another way, so
a loss says more about a path than about congestion."""
MAX_EARLY = 60_000
"""Largest message that rides in a handshake (a Noise message is at most 65,535 bytes)."""
_PROLOGUE = b"peer-relay session v1"
_HEADER = struct.Struct(">BIQ")
"""A sealed message's header: kind, session id, nonce."""
_SEALED_HEADER = struct.Struct(">IQ")
_WINDOW_MASK = (1 << WINDOW) - 1

Send = Callable[[str, bytes, float, tuple[str, ...], bool], "str | None"]
"""``send(to_hex, data_json, now, avoid, only_new) -> first hop or None``: route a sealed
envelope, avoiding these first hops where another way exists (``only_new``: else not at all)."""


@dataclass(slots=True)
class Session:
    """Keys and counters of one session with one peer."""

    sid: int
    seal: Aead
    open: Aead
    initiator: bool
    created: float
    used: float
    n_out: int = 0
    top: int = -1
    """The highest nonce received."""
    window: int = 0
    """Bit i set: nonce ``top - i`` was received."""
    reply: bytes | None = None
    """The ACCEPT we sent (responder), sent again if the OPEN comes again, until the
    initiator's first sealed message shows it arrived."""
    opener: bytes = b""
    """The initiator's ephemeral key (responder): tells a repeated OPEN from a new one."""
    kept: deque[tuple[int, float, bytes]] = field(default_factory=deque)
    """The latest messages sealed in it (nonce, when, message), to send again after a reset."""
    kept_bytes: int = 0

    def keep(self, n: int, inner: bytes, now: float, cfg: Config) -> None:
        """Remember message ``n`` for ``session_resend`` seconds, within the bounds."""
        kept = self.kept
        keep_for = cfg.session_resend
        if keep_for > 0 and len(inner) <= cfg.session_resend_bytes:
            kept.append((n, now, inner))
            self.kept_bytes += len(inner)
        while kept and (
            len(kept) > cfg.session_resend_count
            or self.kept_bytes > cfg.session_resend_bytes
            or kept[0][1] + keep_for < now
        ):
            self.kept_bytes -= len(kept.popleft()[2])

    def lost(self, first: int, since: float, now: float, keep_for: float) -> list[bytes]:
        """The kept messages of nonce ``first`` or later sealed at ``since`` or later, less
        than ``keep_for`` seconds ago."""
        return [
            inner
            for n, when, inner in self.kept
            if n >= first and when >= since and when + keep_for >= now
        ]


@dataclass(slots=True)
class Opening:
    """A handshake of ours in flight: asking for the key, or waiting for the ACCEPT."""

    sid: int
    handshake: Handshake | None
    frame: bytes
    started: float
    deadline: float
    due: float
    wait: float
    early: bytes | None = None
    hops: list[str] = field(default_factory=list)
    """First hops it went out by: each resend takes one not tried yet, where there is one."""


@dataclass(slots=True)
class Peer:
    """What we hold for one remote peer."""

    hex: str
    sessions: dict[int, Session] = field(default_factory=dict)
    current: Session | None = None
    opening: Opening | None = None
    queue: deque[bytes] = field(default_factory=deque)
    """Messages waiting for a session."""
    reply_slot: list[bytes] | None = None
    """While we answer an OPEN: what we send meanwhile (the first rides in the ACCEPT)."""


class Sessions:
    """Owns every session, handshake and key of remote peers; seals and opens messages."""

    def __init__(
        self,
        ctx: Context,
        suite: Suite | None,
        send: Send,
        *,
        delivered: Callable[[str, bytes, int, float], None],
        sent: Callable[[str, bytes, str | None, float], None],
        failed: Callable[[str, bytes, str, float], None],
        reset: Callable[[str, int, int, float], None],
        fresh: Callable[[str, bytes, int, float], str | None],
    ) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.suite = suite
        self._send = send
        self._delivered = delivered
        self._sent = sent
        self._failed = failed
        self._reset = reset
        self._fresh = fresh
        self.peers: OrderedDict[str, Peer] = OrderedDict()
        """Peers with session state, least recently used first."""
        self.keys: BoundedMap[str, tuple[bytes, bytes]] = BoundedMap(cfg.max_budgets)
        """Ed25519 and X25519 keys of peers, by id (hex), most recently learnt last."""
        self.openings: dict[str, Peer] = {}
        """Peers with a handshake of ours in flight."""
        self.resets: BoundedMap[str, float] = BoundedMap(cfg.max_sessions)
        """When we last told a peer we do not know its session."""
        self.own_key = ctx.identity.public_key

    # ------------------------------------------------------------------ keys

    def learn_key(self, peer_hex: str, public_key: bytes) -> bool:
        """Remember a peer's Ed25519 key (already known to hash to its id); False if unusable."""
        known = self.keys.entries.get(peer_hex)
        if known is not None and known[0] == public_key:
            return True
        x = None if is_weak_key(public_key) else x25519_public_from_ed25519(public_key)
        if x is None:
            return False
        self.keys.touch(peer_hex, (public_key, x))
        return True

    def _static_of(self, peer_hex: str, public_key: bytes) -> bytes | None:
        """The X25519 key of an Ed25519 key, from what we know of ``peer_hex`` when we can."""
        known = self.keys.entries.get(peer_hex)
        if known is not None and known[0] == public_key:
            return known[1]
        return x25519_public_from_ed25519(public_key)

    # ------------------------------------------------------------------ sending

    def send(
        self,
        to_hex: str,
        inner: bytes,
        now: float,
        avoid: tuple[str, ...] = (),
        only_new: bool = False,
    ) -> str | None:
        """Seal ``inner`` for ``to_hex`` and send it (returning its first hop), or queue it
        until a session is open; ``sent`` or ``failed`` reports what became of it."""
        peer = self._peer(to_hex, now)
        if peer.reply_slot is not None:
            peer.reply_slot.append(inner)
            return None
        session = peer.current
        if session is not None:
            cfg = self.ctx.config
            if session.used + cfg.session_idle <= now:
                self._forget_session(peer, session)
                session = None
            elif peer.opening is None and (
                session.created + cfg.session_rekey <= now or session.n_out >= REKEY_MESSAGES
            ):
                self._open(peer, now)
        if session is None:
            self._enqueue(peer, inner, now)
            return None
        hop = self._seal(to_hex, session, inner, now, avoid, only_new)
        if hop is not None or not only_new:
            self._sent(to_hex, inner, hop, now)
        return hop

    def withdraw(self, to_hex: str, inner: bytes, now: float) -> None:
        """Forget ``inner`` if it still waits for a session (its sender gave up on it). If it
        rides in a handshake not answered yet, that handshake is abandoned for a new one."""
        peer = self.peers.get(to_hex)
        if peer is None:
            return
        with contextlib.suppress(ValueError):
            peer.queue.remove(inner)
        opening = peer.opening
        if opening is not None and opening.early == inner:
            peer.opening = None
            del self.openings[to_hex]
            if peer.queue:
                self._open(peer, now)

    def _seal(
        self,
        to_hex: str,
        session: Session,
        inner: bytes,
        now: float,
        avoid: tuple[str, ...],
        only_new: bool = False,
    ) -> str | None:
        n = session.n_out
        session.n_out = n + 1
        session.used = now
        header = _HEADER.pack(SEALED, session.sid, n)
        sealed = header + session.seal.seal(n, header, inner)
        session.keep(n, inner, now, self.ctx.config)
        return self._out(to_hex, sealed, now, avoid, only_new)

    def _out(
        self,
        to_hex: str,
        blob: bytes,
        now: float,
        avoid: tuple[str, ...] = (),
        only_new: bool = False,
    ) -> str | None:
        return self._send(to_hex, wire.sealed_data(blob), now, avoid, only_new)

    def _enqueue(self, peer: Peer, inner: bytes, now: float) -> None:
        if len(peer.queue) >= self.ctx.config.max_session_queue:
            self._failed(peer.hex, inner, "session-queue-full", now)
            return
        peer.queue.append(inner)
        if peer.opening is None:
            self._open(peer, now)

    def _open(self, peer: Peer, now: float) -> None:
        """Start a handshake with ``peer``: at once when we know its key, else ask for it."""
        ctx = self.ctx
        cfg = ctx.config
        sid = ctx.rng.getrandbits(32)
        while sid in peer.sessions:
            sid = ctx.rng.getrandbits(32)
        opening = Opening(sid, None, b"", now, now + cfg.session_timeout, now, cfg.initial_rto)
        peer.opening = opening
        self.openings[peer.hex] = peer
        known = self.keys.entries.get(peer.hex)
        if known is None:
            opening.frame = bytes((KEY_ASK,)) + self.own_key
        else:
            self._write_open(peer, opening, known[1], now)
        self._retry(peer, opening, now)

    def _write_open(self, peer: Peer, opening: Opening, static: bytes, now: float) -> None:
        assert self.suite is not None
        prologue = self._prologue(self.ctx.hex, peer.hex, opening.sid)
        handshake = self.suite.initiator(prologue, static)
        payload = self.own_key + int(now * 1000).to_bytes(8, "big")
        if peer.queue and len(peer.queue[0]) <= MAX_EARLY:
            opening.early = peer.queue.popleft()
            payload += opening.early
        opening.handshake = handshake
        opening.frame = bytes((OPEN,)) + opening.sid.to_bytes(4, "big") + handshake.write(payload)

    def _retry(self, peer: Peer, opening: Opening, now: float) -> None:
        """Send the opening's frame (again, through a first hop it has not taken: a relay that
        swallows handshakes is routed around), and wait longer for an answer next time."""
        resend = bool(opening.hops)
        hop = self._out(peer.hex, opening.frame, now, tuple(opening.hops))
        if hop is not None:
            opening.hops.append(hop)
        if hop is not None and resend:
            # Sent again: another way not tried yet too (a handshake is small, and a bad relay
            # next to its destination lies on many ways).
            more = self._out(peer.hex, opening.frame, now, tuple(opening.hops), True)
            if more is not None:
                opening.hops.append(more)
        if opening.early is not None:
            self._sent(peer.hex, opening.early, hop, now)
        opening.due = now + opening.wait
        opening.wait *= BACKOFF
        self.ctx.wake_at(min(opening.due, opening.deadline))

    def _prologue(self, initiator_hex: str, responder_hex: str, sid: int) -> bytes:
        return (
            _PROLOGUE
            + bytes.fromhex(initiator_hex)
            + bytes.fromhex(responder_hex)
            + sid.to_bytes(4, "big")
        )

    # ------------------------------------------------------------------ receiving

    def receive(self, sender_hex: str, blob: bytes, hops: int, now: float) -> str | None:
        """A sealed envelope's bytes from ``sender_hex``: act on it. Returns None if it was
        good, else the reason it was dropped (counted here; the owner charges whoever sent it)."""
        if not blob:
            return self._drop("bad-sealed", "empty")
        kind = blob[0]
        if kind == SEALED:
            return self._on_sealed(sender_hex, blob, hops, now)
        if kind == OPEN:
            return self._on_open(sender_hex, blob, hops, now)
        if kind == ACCEPT:
            return self._on_accept(sender_hex, blob, hops, now)
        if kind in (KEY_ASK, KEY):
            return self._on_key(sender_hex, kind, blob[1:], now)
        return self._drop("bad-sealed", f"kind {kind}")

    def _on_key(self, sender_hex: str, kind: int, key: bytes, now: float) -> str | None:
        if len(key) != 32 or id_for_key(key).hex() != sender_hex:
            return self._drop("key-mismatch", sender_hex)
        if not self.learn_key(sender_hex, key):
            return self._drop("bad-key", sender_hex)
        if kind == KEY_ASK:
            self._out(sender_hex, bytes((KEY,)) + self.own_key, now)
            return None
        peer = self.peers.get(sender_hex)
        opening = None if peer is None else peer.opening
        if peer is None or opening is None or opening.handshake is not None:
            return self._drop("unasked-key", sender_hex)
        self._write_open(peer, opening, self.keys.entries[sender_hex][1], now)
        opening.wait = self.ctx.config.initial_rto
        opening.hops = []  # a new frame: it follows the way the KEY came (a route hint)
        self._retry(peer, opening, now)
        return None

    def _on_open(self, sender_hex: str, blob: bytes, hops: int, now: float) -> str | None:
        if self.suite is None:
            return self._drop("no-sessions", sender_hex)
        if len(blob) < 5 + self.suite.cost_of_opening() + 40:
            return self._drop("bad-handshake", "short")
        sid = int.from_bytes(blob[1:5], "big")
        message = blob[5:]
        opener = message[:32]
        peer = self.peers.get(sender_hex)
        if peer is not None:
            known = peer.sessions.get(sid)
            if known is not None and known.opener == opener:
                # The initiator did not get our ACCEPT (or not yet): the same again, if kept.
                if known.reply is not None:
                    self._out(sender_hex, known.reply, now)
                return self._drop("repeated-open", sender_hex)
        handshake = self.suite.responder(self._prologue(sender_hex, self.ctx.hex, sid))
        try:
            payload = handshake.read(message)
        except SealError:
            return self._drop("bad-handshake", sender_hex)
        key, ts, early = payload[:32], payload[32:40], payload[40:]
        if (
            len(ts) != 8
            or id_for_key(key).hex() != sender_hex
            or self._static_of(sender_hex, key) != handshake.remote_static()
        ):
            return self._drop("key-mismatch", sender_hex)
        reason = self._fresh(sender_hex, opener, int.from_bytes(ts, "big"), now)
        if reason is not None:
            return self._drop(reason, sender_hex)
        self.learn_key(sender_hex, key)
        peer = self._peer(sender_hex, now)
        slot: list[bytes] = []
        peer.reply_slot = slot
        outbox = self.ctx.events
        before = len(outbox)
        try:
            if early:
                self._delivered(sender_hex, early, hops, now)
        finally:
            peer.reply_slot = None
        # What the early message told the application goes out after the ACCEPT: a host that
        # answers at once (a request) must not overtake the ACCEPT its answer depends on.
        told = outbox[before:]
        del outbox[before:]
        answer = slot[0] if slot and len(slot[0]) <= MAX_EARLY else b""
        try:
            message2 = handshake.write(answer)
        except SealError:  # cannot happen with a handshake that read its message
            outbox.extend(told)
            return self._drop("bad-handshake", sender_hex)
        to_them, from_them = handshake.keys()
        session = Session(sid, to_them, from_them, False, now, now, opener=opener)
        session.reply = bytes((ACCEPT,)) + sid.to_bytes(4, "big") + message2
        self._add(peer, session)
        hop = self._out(sender_hex, session.reply, now)
        rest = slot
        if answer:
            self._sent(sender_hex, answer, hop, now)
            rest = slot[1:]
        for inner in rest:
            self._sent(sender_hex, inner, self._seal(sender_hex, session, inner, now, ()), now)
        self._flush(peer, now)
        outbox.extend(told)
        return None

    def _on_accept(self, sender_hex: str, blob: bytes, hops: int, now: float) -> str | None:
        peer = self.peers.get(sender_hex)
        sid = int.from_bytes(blob[1:5], "big")
        opening = None if peer is None else peer.opening
        if (
            peer is None
            or opening is None
            or opening.handshake is None
            or opening.sid != sid
            or len(blob) < 5 + 32 + TAG
        ):
            return self._drop("unasked-accept", sender_hex)
        # Read on a copy: an altered ACCEPT (any relay that saw the OPEN can write one) must
        # not fail the handshake for the genuine ACCEPT behind it.
        attempt = opening.handshake.copy()
        try:
            early = attempt.read(blob[5:])
            to_them, from_them = attempt.keys()
        except SealError:
            return self._drop("bad-handshake", sender_hex)
        peer.opening = None
        del self.openings[sender_hex]
        session = Session(sid, to_them, from_them, True, now, now)
        self._add(peer, session)
        if early:
            self._delivered(sender_hex, early, hops, now)
        self._flush(peer, now)
        return None

    def _on_sealed(self, sender_hex: str, blob: bytes, hops: int, now: float) -> str | None:
        if len(blob) < 13 + TAG:
            return self._drop("bad-sealed", "short")
        sid, n = _SEALED_HEADER.unpack_from(blob, 1)
        peer = self.peers.get(sender_hex)
        session = None if peer is None else peer.sessions.get(sid)
        if peer is None or session is None:
            if peer is not None and peer.opening is not None and peer.opening.sid == sid:
                # Sent right after its ACCEPT, which has not arrived yet.
                return self._drop("before-accept", sender_hex)
            self._unknown(sender_hex, sid, n, now)
            return self._drop("unknown-session", sender_hex)
        top = session.top
        if n > top:
            pass
        elif top - n >= WINDOW:
            return self._drop("too-old", sender_hex)
        elif session.window >> (top - n) & 1:
            return self._drop("replay", sender_hex)
        try:
            inner = session.open.open(n, blob[:13], blob[13:])
        except SealError:
            return self._drop("bad-ciphertext", sender_hex)
        if n > top:
            shift = n - top
            session.window = ((session.window << shift) | 1) & _WINDOW_MASK
            session.top = n
        else:
            session.window |= 1 << (top - n)
        session.used = now
        session.reply = None
        self.peers.move_to_end(sender_hex)
        self._delivered(sender_hex, inner, hops, now)
        return None

    def _unknown(self, sender_hex: str, sid: int, n: int, now: float) -> None:
        """Tell ``sender_hex`` (at most once a second) that we do not know session ``sid``,
        from nonce ``n`` on."""
        last = self.resets.entries.get(sender_hex)
        if last is not None and now - last < 1.0:
            return
        self.resets.touch(sender_hex, now)
        self._reset(sender_hex, sid, n, now)

    def reset(
        self,
        peer_hex: str,
        sid: int,
        now: float,
        lost: tuple[int, float] | None = None,
    ) -> None:
        """``peer_hex`` told us (signed) that it does not know session ``sid``: forget it, so
        that the next message opens a new one. ``lost`` is (first nonce it could not open,
        when it started): the recent messages sealed from both on, which no incarnation of it
        read, are sent again in the new session."""
        peer = self.peers.get(peer_hex)
        session = None if peer is None else peer.sessions.get(sid)
        if peer is None or session is None:
            return
        self._forget_session(peer, session)
        keep_for = self.ctx.config.session_resend
        again = [] if lost is None else session.lost(lost[0], lost[1], now, keep_for)
        log.debug(
            "%s: %s forgot session %08x; %d sent again",
            short(self.ctx.hex),
            short(peer_hex),
            sid,
            len(again),
        )
        for inner in again:
            self.send(peer_hex, inner, now)

    # ------------------------------------------------------------------ state

    def _peer(self, peer_hex: str, now: float) -> Peer:
        peers = self.peers
        peer = peers.get(peer_hex)
        if peer is None:
            peer = peers[peer_hex] = Peer(peer_hex)
            if len(peers) > self.ctx.config.max_sessions:
                self._evict(next(iter(peers.values())), "session-evicted", now)
        else:
            peers.move_to_end(peer_hex)
        return peer

    def _add(self, peer: Peer, session: Session) -> None:
        sessions = peer.sessions
        old = sessions.get(session.sid)
        if old is not None:
            self._forget_session(peer, old)
        sessions[session.sid] = session
        if len(sessions) > 3:
            oldest = min(sessions.values(), key=lambda s: s.created)
            self._forget_session(peer, oldest)
        current = peer.current
        if current is None or current.created <= session.created:
            peer.current = session

    def _forget_session(self, peer: Peer, session: Session) -> None:
        peer.sessions.pop(session.sid, None)
        if peer.current is session:
            peer.current = max(peer.sessions.values(), key=lambda s: s.created, default=None)

    def _flush(self, peer: Peer, now: float) -> None:
        session = peer.current
        queue = peer.queue
        while session is not None and queue:
            inner = queue.popleft()
            self._sent(peer.hex, inner, self._seal(peer.hex, session, inner, now, ()), now)

    def _evict(self, peer: Peer, reason: str, now: float) -> None:
        del self.peers[peer.hex]
        self.openings.pop(peer.hex, None)
        self.ctx.drop(reason, peer.hex)
        pending = list(peer.queue)
        if peer.opening is not None and peer.opening.early is not None:
            pending.insert(0, peer.opening.early)
        for inner in pending:
            self._failed(peer.hex, inner, reason, now)

    def _drop(self, reason: str, detail: str) -> str:
        self.ctx.drop(reason, detail)
        return reason

    def expire(self, now: float) -> None:
        """Send handshakes again that got no answer, fail those out of time, forget idle
        sessions."""
        for peer in list(self.openings.values()):
            opening = peer.opening
            assert opening is not None
            if opening.deadline <= now:
                peer.opening = None
                del self.openings[peer.hex]
                pending = list(peer.queue)
                peer.queue.clear()
                if opening.early is not None:
                    pending.insert(0, opening.early)
                reason = "no-session" if opening.handshake is not None else "no-key"
                self.ctx.drop(reason, peer.hex)
                for inner in pending:
                    self._failed(peer.hex, inner, reason, now)
            elif opening.due <= now:
                self._retry(peer, opening, now)
        idle = self.ctx.config.session_idle
        peers = self.peers
        while peers:
            peer = next(iter(peers.values()))
            if peer.opening is not None or peer.queue:
                break
            last = max((s.used for s in peer.sessions.values()), default=-1.0)
            if last + idle > now:
                break
            del peers[peer.hex]

    def next_due(self) -> float | None:
        """The earliest retry or deadline of a handshake in flight."""
        due = [min(p.opening.due, p.opening.deadline) for p in self.openings.values() if p.opening]
        return min(due, default=None)

    def queued(self) -> int:
        """Messages waiting for a session, all peers together."""
        return sum(len(peer.queue) for peer in self.openings.values())

    def sizes(self) -> dict[str, int]:
        """Sizes for the bounds read-out."""
        return {
            "sessions": len(self.peers),
            "session_queue": max((len(p.queue) for p in self.peers.values()), default=0),
            "peer_keys": len(self.keys),
        }

    def readout(self) -> list[dict[str, Any]]:
        """Every peer with session state, for diagnostics."""
        return [
            {
                "peer": peer.hex,
                "sessions": len(peer.sessions),
                "opening": peer.opening is not None,
                "queued": len(peer.queue),
            }
            for peer in self.peers.values()
        ]
