"""The node's state machine: link handshakes, routing, duplicate filtering, discovery, population.

Sans-I/O: the core never touches a socket, starts a task, reads a clock or draws its own random
numbers. It is fed events (a link opened, a frame arrived, the application sends, time is now T)
and answers with :mod:`peer_relay.events` values, drained with :meth:`Core.events`. Every
time-dependent call takes ``now`` in seconds (wall-clock based, because signed messages carry a
timestamp); :meth:`Core.get_timer` tells when :meth:`Core.handle_timer` is next due.

Nothing from the network raises out of this module: a frame that cannot be used is dropped,
counted in :attr:`Core.stats` under a reason, and logged at debug level. Misuse by the programmer
(a malformed id, a payload that is not JSON) raises ``ValueError`` or ``TypeError`` at once.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from sys import intern
from typing import Any, Literal

from . import wire
from .events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DialWebSocket,
    Event,
    PeerLinked,
    PeerUnlinked,
    SendFrame,
    SignalIn,
    StartWebRTC,
)
from .identity import Identity, Verifier, id_for_key, verify_ed25519
from .ids import ID_BYTES, bucket_index, hex_from_wire, parse_id, short
from .table import KBucketTable
from .wire import Envelope, WireError

_log = logging.getLogger("peer_relay.core")

Strategy = Literal["spread", "original"]


@dataclass(frozen=True, slots=True)
class Config:
    """Every bound and policy of a node, with safe defaults."""

    url: str | None = None
    """The WebSocket URL other peers should dial; None for a peer that cannot be dialled."""
    webrtc: bool = False
    """Whether this peer can form WebRTC links."""
    k: int = 20
    """Bucket size of the routing table and of the candidate table."""
    max_links: int = 20
    """Most direct links kept open; extra ones push out the least useful link."""
    max_pending_links: int = 32
    """Most links still in their opening handshake."""
    max_connecting: int = 8
    """Most connection attempts (relayed handshakes) in flight at once."""
    connect_timeout: float = 10.0
    link_timeout: float = 10.0
    """Seconds a new link has to complete its hello and proof."""
    max_hops: int = wire.MAX_HOPS
    max_frame: int = 1 << 20
    """Largest frame accepted or sent, in bytes."""
    seen_ttl: float = 120.0
    """Seconds a message id stays in the duplicate filter (at least twice ``replay_window``)."""
    max_seen: int = 65_536
    """Most message ids held by each duplicate filter."""
    max_queue: int = 1024
    """Most messages waiting for a first link."""
    max_routes: int = 1024
    """Most reverse paths remembered (each at most ``max_hops`` ids)."""
    route_ttl: float = 60.0
    """Seconds a reverse path learnt from a verified message is used as a route hint."""
    max_undialable: int = 1024
    redundancy: int = 1
    """How many next hops each message is forwarded to."""
    detour: bool = True
    """Forward even when no link is closer to the target than we are (else drop: no route)."""
    require_auth: bool = True
    """Refuse peers that cannot prove their id and messages that are not signed."""
    sign: bool = True
    """Sign the messages this peer originates."""
    replay_window: float = 60.0
    """Seconds a signed message's timestamp may differ from our clock."""
    refresh_interval: float = 15.0
    tick_interval: float = 1.0
    near_links: int = 4
    """Links to the peers nearest our own id that eviction never touches."""
    link_grace: float = 20.0
    """Seconds a new link is safe from eviction."""
    spare_links: int = 4
    """Links our own population leaves free for peers that dial us (nearest neighbours excepted):
    a full peer must evict to accept anyone, so headroom keeps joins cheap."""
    max_strikes: int = 8
    """Malformed frames tolerated from one link per ``strike_window`` before it is closed."""
    strike_window: float = 60.0
    confirm_timeout: float = 3.0
    """Seconds a peer of ours has to answer the ping that follows user messages we send it.
    Past that the link is taken for dead (a crashed peer stays silent until the transport's
    keepalive notices, tens of seconds later), closed, and the messages go another way."""
    max_unconfirmed: int = 64
    """Most user messages per link kept for re-routing until the remote confirms them, and at
    most ``max_frame`` bytes of them (0: no confirmation at all)."""
    control_rate: float = 50.0
    """Discovery and handshake requests answered per second (burst: twice that)."""
    bootstrap_retry: float = 5.0
    """First delay before dialling the bootstrap peers again after losing every link."""
    strategy: Strategy = "spread"
    """Population policy: ``spread`` (Kademlia-style) or ``original`` (0.0.2's)."""

    @property
    def near_count(self) -> int:
        """How many nearest-neighbour links are wanted and protected: at most half the budget."""
        return min(self.near_links, self.max_links // 2)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) in (int, float) and value < 0:
                raise ValueError(f"{f.name} must not be negative")
        if self.k < 1 or self.max_links < 1 or self.redundancy < 1 or self.max_frame < 64:
            raise ValueError("k, max_links, redundancy and max_frame must be positive")
        if self.seen_ttl < 2 * self.replay_window:
            raise ValueError("seen_ttl must be at least twice replay_window")


@dataclass
class Stats:
    """Counters of what a node did. ``dropped`` counts dropped frames by reason."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    originated: int = 0
    delivered: int = 0
    relayed: int = 0
    rerouted: int = 0
    links_opened: int = 0
    links_closed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dropped"] = dict(self.dropped)
        return out


_DIALING, _HELLO, _PROOF, _OPEN, _DRAINING = range(5)
# _DRAINING: we closed an open link; frames the remote sent before it saw the close are still
# delivered or relayed until the adapter reports the link gone (or its deadline passes).


class _Link:
    __slots__ = (
        "authenticated",
        "awaiting",
        "deadline",
        "expected",
        "handle",
        "held",
        "my_nonce",
        "opened_at",
        "outbound",
        "peer_hex",
        "peer_id",
        "peer_int",
        "pending",
        "ping_due",
        "ping_seq",
        "remote_key",
        "remote_nonce",
        "rtc_described",
        "state",
        "strikes",
        "transport",
        "url",
    )

    def __init__(self, handle: int, outbound: bool, transport: str, deadline: float) -> None:
        self.handle = handle
        self.outbound = outbound
        self.transport = transport
        self.state = _DIALING
        self.deadline = deadline
        self.expected: bytes | None = None
        self.peer_id = b""
        self.peer_hex = ""
        self.peer_int = 0
        self.my_nonce = b""
        self.remote_key: bytes | None = None
        self.remote_nonce = b""
        self.authenticated = False
        self.opened_at = 0.0
        self.strikes = 0
        self.rtc_described = False  # a WebRTC link that was handed the remote's description
        self.url: str | None = None  # the URL we dialled
        # User messages sent on the link and not yet confirmed: those the outstanding ping
        # (number ping_seq, due back by ping_due) covers, and those sent after it.
        self.awaiting: list[bytes] = []
        self.pending: list[bytes] = []
        self.held = 0  # their bytes
        self.ping_seq = 0
        self.ping_due = float("inf")


@dataclass(slots=True)
class _Attempt:
    deadline: float
    user: bool
    webrtc_handle: int | None = None


class Core:
    """One peer's decisions. See the module docstring for the contract."""

    def __init__(
        self,
        identity: Identity,
        config: Config | None = None,
        *,
        rng: random.Random,
        now: float,
        verify: Verifier = verify_ed25519,
    ) -> None:
        self.config = cfg = config or Config()
        self.identity = identity
        self.id = identity.id
        self.hex = identity.id.hex()
        self._int = int.from_bytes(identity.id, "big")
        self._rng = rng
        self._verify = verify
        self._key_b64 = wire.b64encode(identity.public_key)
        self.url = cfg.url
        self.stats = Stats()
        self._events: list[Event] = []
        self._next_handle = 1
        self._links: dict[int, _Link] = {}
        self._open: list[_Link] = []
        self._table: KBucketTable[_Link] = KBucketTable(self.id, cfg.k)
        self._candidates: KBucketTable[float] = KBucketTable(self.id, cfg.k)
        self._undialable: OrderedDict[bytes, float] = OrderedDict()
        self._connecting: dict[bytes, _Attempt] = {}
        self._answered: OrderedDict[bytes, float] = OrderedDict()
        self._rtc_by_peer: dict[bytes, int] = {}
        # Message ids (origin and nonce) are remembered as their hash: a third of the memory of
        # the text, and unforgeable collisions (str hashes are keyed per process).
        self._seen: OrderedDict[int, float] = OrderedDict()
        self._delivered: OrderedDict[int, tuple[float, int]] = OrderedDict()
        # Every signed message at or below (ts, key) is refused: those forgotten to keep the
        # duplicate filter bounded are all there (a heap over _delivered gives the lowest first).
        self._replay_floor: tuple[int, int] = (-1, 0)
        self._by_ts: list[tuple[int, int]] = []
        self._routes: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()
        self._queue: deque[tuple[str, bytes, bool]] = deque()
        self._bootstrap: list[str] = []
        self._bootstrap_ids: dict[str, bytes] = {}  # whom each bootstrap URL led to
        self._bootstrap_at = float("inf")
        self._bootstrap_delay = cfg.bootstrap_retry
        self._tokens = 2 * cfg.control_rate
        self._tokens_at = now
        self._next_tick = now + cfg.tick_interval * rng.random()
        self._next_refresh = now + cfg.refresh_interval * (0.5 + rng.random())
        self._closed = False

    # ------------------------------------------------------------------ outputs and timers

    def events(self) -> list[Event]:
        """Take every pending output, in order."""
        out, self._events = self._events, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None once closed."""
        return None if self._closed else self._next_tick

    def handle_timer(self, now: float) -> None:
        """Expire what has expired and run periodic maintenance.

        It ticks every ``tick_interval`` while something waits on a deadline (a handshake, an
        attempt, a ping, a draining link, strikes to forgive), else only at the next refresh:
        an idle peer costs its host nothing between refreshes.
        """
        if self._closed or now < self._next_tick:
            return
        cfg = self.config
        self._next_tick = float("inf")
        self._expire(now)
        for link in list(self._links.values()):
            if link.ping_due <= now and link.state == _OPEN:
                self._unresponsive(link, now)
            elif link.state == _DRAINING and now >= link.deadline:
                del self._links[link.handle]
            elif link.state != _OPEN and now >= link.deadline:
                self._drop("handshake-timeout", str(link.handle))
                self._close(link, "handshake-timeout", now)
            elif link.strikes and now >= link.deadline:
                link.strikes = 0
                link.deadline = now + cfg.strike_window
        for peer_id, attempt in list(self._connecting.items()):
            if now >= attempt.deadline:
                self._fail_attempt(peer_id, "timeout", now)
        if now >= self._bootstrap_at:
            self._redial_bootstrap(now)
        if now >= self._next_refresh:
            self._next_refresh = now + cfg.refresh_interval * (0.75 + 0.5 * self._rng.random())
            self._refresh(now)
        busy = bool(self._connecting) or any(
            link.state != _OPEN or link.strikes or link.ping_due != float("inf")
            for link in self._links.values()
        )
        after = now + cfg.tick_interval if busy else self._next_refresh
        # Remembered message ids are forgotten within an eighth of their lifetime of expiring.
        heads = [next(iter(self._seen.values()))] if self._seen else []
        if self._delivered:
            heads.append(next(iter(self._delivered.values()))[0])
        for expiry in heads:
            after = min(after, max(expiry, now + cfg.seen_ttl / 8))
        self._next_tick = min(self._next_tick, after, max(self._bootstrap_at, now))

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[key]
        delivered = self._delivered
        while delivered:
            key, (expiry, _ts) = next(iter(delivered.items()))
            if expiry > now:
                break
            del delivered[key]
        routes = self._routes  # in the order they were learnt, so of their expiry
        while routes:
            to_hex, (until, _path) = next(iter(routes.items()))
            if until > now:
                break
            del routes[to_hex]
        for table in (self._undialable, self._answered):
            while table:
                key_id, until = next(iter(table.items()))
                if until > now:
                    break
                del table[key_id]

    # ------------------------------------------------------------------ application API

    @property
    def peers(self) -> list[bytes]:
        """Ids of the open direct links."""
        return [link.peer_id for link in self._open]

    def link_transport(self, peer_id: bytes) -> str | None:
        """The transport of the open link to ``peer_id``, if any."""
        link = self._table.get(peer_id)
        return None if link is None else link.transport

    def set_url(self, url: str | None) -> None:
        """Set the WebSocket URL this peer advertises (known once its server listens)."""
        self.url = url

    def bootstrap(self, urls: Iterable[str], now: float) -> None:
        """Dial these WebSocket URLs now, and again whenever every link is lost."""
        self._bootstrap = list(urls)
        self._bootstrap_ids.clear()
        for url in self._bootstrap:
            self._dial(url, None, now)

    def send(self, to: object, data: Any, now: float) -> None:
        """Send ``data`` (any I-JSON value) to peer ``to``; raise at once if either is malformed."""
        target = parse_id(to)
        self._ensure_open()
        if target == self.id:
            wire.canonical(data)
            self.stats.delivered += 1
            self._events.append(Delivered(data, self.id, True, 0))
            return
        self._originate(target.hex(), wire.USER, data, True, now)

    def connect(self, peer: object, now: float) -> None:
        """Ask ``peer`` for a direct link; a :class:`ConnectResult` reports the outcome."""
        peer_id = parse_id(peer)
        self._ensure_open()
        if peer_id == self.id:
            raise ValueError("cannot connect to our own id")
        if peer_id in self._table:
            self._events.append(ConnectResult(peer_id, True, "already linked"))
            return
        attempt = self._connecting.get(peer_id)
        if attempt is not None:
            attempt.user = True
            return
        self._start_attempt(peer_id, now, user=True)

    def disconnect(self, peer: object, now: float) -> bool:
        """Close the direct link to ``peer``; return whether there was one."""
        peer_id = parse_id(peer)
        link = self._table.get(peer_id)
        if link is None:
            return False
        self._close(link, "disconnect", now)
        return True

    def close(self, now: float) -> None:
        """Close every link; the core does nothing more afterwards."""
        if self._closed:
            return
        for link in list(self._links.values()):
            self._close(link, "shutdown", now)
        for peer_id in list(self._connecting):
            self._fail_attempt(peer_id, "shutdown", now)
        self._queue.clear()
        self._closed = True

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("this peer has been destroyed")

    # ------------------------------------------------------------------ links

    def link_accepted(self, now: float, transport: str = "ws") -> int:
        """An inbound connection arrived; returns its handle (already sent its hello)."""
        handle = self._new_handle(now)
        link = _Link(handle, False, transport, now + self.config.link_timeout)
        self._links[handle] = link
        if self._closed or self._pending_links() > self.config.max_pending_links:
            self._close(link, "too-many-pending" if not self._closed else "shutdown", now)
            return handle
        self._start_hello(link)
        return handle

    def link_connected(self, handle: int, now: float) -> None:
        """Outbound link ``handle`` (a dial or a WebRTC link) is open."""
        link = self._links.get(handle)
        if link is None or link.state != _DIALING:
            return
        if link.transport == "webrtc":
            # The channel is open here, which does not mean the remote took it: the original's
            # browser build never does in current Chromium, and messages sent on such a link are
            # lost. Greet the remote on it; the link opens on the remote's first frame.
            link.state = _HELLO
            link.deadline = now + self.config.link_timeout
            self._send_frame(link, self._rtc_greeting(link, now))
        else:
            link.deadline = now + self.config.link_timeout
            self._start_hello(link)

    def link_closed(self, handle: int, now: float, reason: str = "closed") -> None:
        """Link ``handle`` closed (or a dial failed) on the adapter's side."""
        link = self._links.get(handle)
        if link is not None:
            # Messages the remote did not confirm may have died with it: they go another way
            # (a copy that did arrive is dropped as a duplicate by its destination).
            unconfirmed = link.awaiting + link.pending if link.state == _OPEN else []
            self._forget(link, reason, now)
            for frame in unconfirmed:
                self._reroute(frame, now)

    def frame_received(self, handle: int, frame: bytes | str, now: float) -> None:
        """One frame arrived on link ``handle``."""
        link = self._links.get(handle)
        if link is None:
            return
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(frame)
        try:
            obj = wire.loads(frame, self.config.max_frame)
            if link.state < _OPEN and link.transport != "webrtc":
                self._link_frame(link, obj, now)
                return
            if type(obj) is dict and "pr" in obj and "to" not in obj:
                self._link_control(link, obj, now)
                return
            env = wire.parse_envelope(obj, self.config.max_hops)
        except WireError as exc:
            self._strike(link, exc, now)
            return
        if link.state < _OPEN:
            # The remote's first frame on a WebRTC link (see link_connected). Its id is proven if
            # the description that carried its DTLS fingerprint was signed.
            assert link.expected is not None
            self._establish(link, link.expected, link.authenticated, now)
            if link.state != _OPEN:
                return
        if env.to == self.hex:
            self._receive(env, link, now)
            return
        key = message_key(env.sender, env.nonce)
        seen = self._seen
        if key in seen:
            self._drop("duplicate", env.nonce)
            return
        seen[key] = now + self.config.seen_ttl
        if len(seen) > self.config.max_seen:
            seen.popitem(last=False)
        self._forward(env, now)

    def frame_undeliverable(self, handle: int, frame: bytes, now: float) -> None:
        """The adapter could not send ``frame`` on link ``handle`` (closing, gone or full).

        The link leaves routing, and an envelope goes out on the next best link instead of being
        lost; anything else (a hello, a proof) is dropped.
        """
        link = self._links.get(handle)
        if link is not None and link.state == _OPEN:
            self._close(link, "send failed", now)
        self._reroute(frame, now)

    def _reroute(self, frame: bytes, now: float) -> None:
        """Send an envelope we already sent once on the best link left (a ping never came back,
        or the link failed); anything that is not an envelope is dropped."""
        try:
            obj = wire.loads(frame, self.config.max_frame)
            env = wire.parse_envelope(obj, self.config.max_hops)
        except WireError:
            return
        hops = self._next_hops(env.to, env.path, env.raw.get("route"))
        if not hops:
            self._drop("no-route", env.to)
            return
        self.stats.rerouted += 1
        self._send_frame(hops[0], frame)
        if _is_user(obj):
            self._confirm(hops[0], frame, now)

    def _link_control(self, link: _Link, obj: dict[str, Any], now: float) -> None:
        """A ping or pong of ours on an open link (see :meth:`_confirm`); raise WireError."""
        if not link.authenticated:
            raise WireError("not-envelope", "link control from a peer that is not ours")
        kind, number = wire.parse_link_control(obj)
        if kind == "ping":
            self._send_frame(link, wire.link_control_frame("pong", number))
        elif number == link.ping_seq and link.ping_due != float("inf"):
            link.awaiting, link.pending = link.pending, []
            link.held = sum(len(frame) for frame in link.awaiting)
            if link.awaiting:
                self._send_ping(link, now)
            else:
                link.ping_due = float("inf")

    def _confirm(self, link: _Link, frame: bytes, now: float) -> None:
        """Keep a user message just sent on ``link`` until a ping sent after it comes back.

        Links are ordered streams, so a pong vouches for everything sent before its ping. One
        ping is out per link at a time; messages sent meanwhile wait for the next one. Only our
        peers answer pings (0.0.2 would take one for a malformed envelope).
        """
        if not link.authenticated or link.state != _OPEN or not self.config.max_unconfirmed:
            return
        if link.ping_due == float("inf"):
            link.awaiting.append(frame)
            link.held = len(frame)
            self._send_ping(link, now)
        elif (
            len(link.awaiting) + len(link.pending) < self.config.max_unconfirmed
            and link.held + len(frame) <= self.config.max_frame
        ):
            link.pending.append(frame)
            link.held += len(frame)

    def _send_ping(self, link: _Link, now: float) -> None:
        link.ping_seq += 1
        link.ping_due = now + self.config.confirm_timeout
        self._wake(now)
        self._send_frame(link, wire.link_control_frame("ping", link.ping_seq))

    def _unresponsive(self, link: _Link, now: float) -> None:
        """The remote did not answer a ping in time: close the link, re-route what it held."""
        self._drop("unresponsive", link.peer_hex)
        frames = link.awaiting + link.pending
        self._close(link, "unresponsive", now)
        for frame in frames:
            self._reroute(frame, now)

    def _new_handle(self, now: float) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._wake(now)  # its handshake has a deadline
        return handle

    def _wake(self, now: float) -> None:
        """Something waits on a deadline now: tick within ``tick_interval``."""
        at = now + self.config.tick_interval
        if at < self._next_tick:
            self._next_tick = at

    def _pending_links(self) -> int:
        return len(self._links) - len(self._open)

    def _dial(self, url: str, expected: bytes | None, now: float) -> None:
        if self._closed or self._pending_links() >= self.config.max_pending_links:
            self._drop("too-many-pending", url)
            return
        handle = self._new_handle(now)
        link = _Link(handle, True, "ws", now + self.config.link_timeout)
        link.expected = expected
        link.url = url
        self._links[handle] = link
        self._events.append(DialWebSocket(handle, url, expected))

    def _start_hello(self, link: _Link) -> None:
        link.state = _HELLO
        link.my_nonce = self._rng.randbytes(16)
        frame = wire.hello_frame(self.id, self.identity.public_key, link.my_nonce)
        self._send_frame(link, frame)

    def _link_frame(self, link: _Link, obj: Any, now: float) -> None:
        """A frame on a link that is not open yet: the hello, then the proof."""
        if link.state == _HELLO:
            hello = wire.parse_hello(obj)
            refusal = None
            if hello.peer_id == self.id:
                refusal = "self-link"
            elif link.expected is not None and hello.peer_id != link.expected:
                refusal = "unexpected-id"
            elif hello.key is None or hello.nonce is None:
                if self.config.require_auth:
                    refusal = "unauthenticated-peer"
                else:
                    self._establish(link, hello.peer_id, False, now)
            elif id_for_key(hello.key) != hello.peer_id:
                refusal = "key-mismatch"
            else:
                link.remote_key, link.remote_nonce = hello.key, hello.nonce
                link.peer_id = hello.peer_id
                proof = wire.link_proof_bytes(
                    hello.nonce, link.my_nonce, hello.peer_id, self.id, prover_dialled=link.outbound
                )
                self._send_frame(link, wire.proof_frame(self.identity.sign(proof)))
                link.state = _PROOF
            if refusal is not None:
                self._drop(refusal, hello.peer_id.hex())
                self._close(link, refusal, now)
        elif link.state == _PROOF:
            signature = wire.parse_proof(obj)
            assert link.remote_key is not None
            signed = wire.link_proof_bytes(
                link.my_nonce,
                link.remote_nonce,
                self.id,
                link.peer_id,
                prover_dialled=not link.outbound,
            )
            if self._verify(link.remote_key, signature, signed):
                self._establish(link, link.peer_id, True, now)
            else:
                self._drop("bad-proof", link.peer_id.hex())
                self._close(link, "bad-proof", now)
        else:
            self._drop("frame-before-open")
            self._close(link, "frame-before-open", now)

    def _establish(self, link: _Link, peer_id: bytes, authenticated: bool, now: float) -> None:
        cfg = self.config
        existing = self._table.get(peer_id)
        if existing is not None and not (authenticated and existing.authenticated):
            # A 0.0.2 peer keeps its first link in its table and ignores a second one (our id
            # lower) or closes both (ours higher), and a close of either makes it drop the other
            # too: no survivor can be agreed on, and keeping one may keep the ignored one.
            self._close(existing, "duplicate", now)
            self._close(link, "duplicate", now)
            return
        if existing is not None:
            # Both ends must pick the same survivor. Links dialled in opposite directions: keep
            # the one dialled by the lower id. Same direction: the new one supersedes the old,
            # which the remote evidently gave up on.
            if existing.outbound != link.outbound:
                keep_new = (self.id < peer_id) == link.outbound
            else:
                keep_new = True
            if not keep_new:
                self._close(link, "duplicate", now)
                return
            self._close(existing, "superseded", now)
        if len(self._open) >= cfg.max_links:
            victim = self._eviction_victim(peer_id, now)
            if victim is None:
                self._close(link, "link-limit", now)
                self._fail_attempt(peer_id, "link-limit", now)
                return
            self._close(victim, "evicted", now)
        link.peer_id = peer_id
        link.peer_hex = peer_id.hex()
        link.peer_int = int.from_bytes(peer_id, "big")
        link.authenticated = authenticated
        link.opened_at = now
        link.deadline = now + cfg.strike_window
        if not self._table.add(peer_id, link):
            self._close(link, "bucket-full", now)
            self._fail_attempt(peer_id, "bucket-full", now)
            return
        link.state = _OPEN
        self._open.append(link)
        self._candidates.add(peer_id, now, replace_oldest=True)
        self._undialable.pop(peer_id, None)
        self.stats.links_opened += 1
        if link.url is not None and link.url in self._bootstrap:
            self._bootstrap_ids[link.url] = peer_id
        self._bootstrap_at = float("inf")
        self._bootstrap_delay = cfg.bootstrap_retry
        self._events.append(PeerLinked(peer_id, link.transport, authenticated))
        attempt = self._connecting.pop(peer_id, None)
        if attempt is not None and attempt.user:
            self._events.append(ConnectResult(peer_id, True, "linked"))
        _log.debug("%s linked %s over %s", short(self.hex), short(peer_id), link.transport)
        if link.outbound or cfg.strategy != "spread" or len(self._open) <= cfg.near_count:
            # Ask the new link for its links nearest us, as 0.0.2 does on every link. ``spread``
            # asks on the links it dialled (it wanted them) and while it has few: a peer that
            # dialled us is mostly a newcomer that knows less than we do.
            self._originate(link.peer_hex, wire.FIND_PEERS, self.hex, True, now)
        while self._queue:
            to_hex, frame, confirm = self._queue.popleft()
            self._route_new(to_hex, frame, confirm, now)

    def _close(self, link: _Link, reason: str, now: float) -> None:
        """Close a link we decided to close; an open one drains until the adapter reports it."""
        if link.handle not in self._links or link.state == _DRAINING:
            return
        self._events.append(CloseLink(link.handle, reason))
        was_open = link.state == _OPEN
        self._forget(link, reason, now)
        if was_open:
            link.state = _DRAINING
            link.deadline = now + self.config.link_timeout
            self._links[link.handle] = link
            self._wake(now)

    def _forget(self, link: _Link, reason: str, now: float) -> None:
        del self._links[link.handle]
        if link.state == _DRAINING:
            return
        if link.state == _OPEN:
            link.awaiting, link.pending, link.ping_due, link.held = [], [], float("inf"), 0
            self._open.remove(link)
            self._table.remove(link.peer_id)
            self.stats.links_closed += 1
            self._events.append(PeerUnlinked(link.peer_id, reason))
            _log.debug("%s unlinked %s: %s", short(self.hex), short(link.peer_id), reason)
            if not self._open and self._bootstrap and not self._closed:
                self._bootstrap_at = min(self._bootstrap_at, now + self._bootstrap_delay)
                self._next_tick = min(self._next_tick, self._bootstrap_at)
        else:
            if reason not in ("shutdown",):
                _log.debug("%s link %d failed: %s", short(self.hex), link.handle, reason)
            target = link.expected
            if target is not None and target in self._connecting:
                self._fail_attempt(target, reason, now)
        if self._rtc_by_peer.get(link.expected or link.peer_id) == link.handle:
            del self._rtc_by_peer[link.expected or link.peer_id]

    def _strike(self, link: _Link, exc: WireError, now: float) -> None:
        self._drop(exc.reason, exc.detail)
        if link.state != _OPEN:
            self._close(link, f"bad-handshake: {exc.reason}", now)
            return
        link.strikes += 1
        self._wake(now)
        if link.strikes >= self.config.max_strikes:
            self._close(link, "misbehaving", now)

    def _redial_bootstrap(self, now: float) -> None:
        self._bootstrap_at = float("inf")
        if self._open or self._closed:
            return
        for url in self._bootstrap:
            self._dial(url, None, now)
        self._bootstrap_delay = min(self._bootstrap_delay * 2, 60.0)
        self._bootstrap_at = now + self._bootstrap_delay

    # ------------------------------------------------------------------ sending and routing

    def _send_frame(self, link: _Link, frame: bytes) -> None:
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame)
        self._events.append(SendFrame(link.handle, frame))

    def _drop(self, reason: str, detail: str = "") -> None:
        self.stats.dropped[reason] += 1
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s dropped: %s %s", short(self.hex), reason, detail)

    def _originate(
        self, to_hex: str, kind: str, payload: Any, has_payload: bool, now: float
    ) -> None:
        body: dict[str, Any] = {"type": kind, "data": payload} if has_payload else {"type": kind}
        data = wire.canonical(body)
        nonce = str(self._rng.getrandbits(63))
        auth = None
        if self.config.sign:
            ts = int(now * 1000)
            signature = self.identity.sign(wire.signed_bytes(to_hex, self.hex, nonce, ts, data))
            auth = {"key": self._key_b64, "sig": wire.b64encode(signature), "ts": ts}
        route = self._routes.get(to_hex)
        hint = route[1] if route is not None and route[0] > now else None
        frame = wire.origin_frame(to_hex, self.hex, nonce, data, auth, hint)
        if len(frame) > self.config.max_frame:
            raise ValueError(f"message of {len(frame)} bytes exceeds max_frame")
        self.stats.originated += 1
        if not self._open:
            if len(self._queue) >= self.config.max_queue:
                self._drop("queue-full", to_hex)
            else:
                self._queue.append((to_hex, frame, kind == wire.USER))
            return
        self._route_new(to_hex, frame, kind == wire.USER, now)

    def _route_new(self, to_hex: str, frame: bytes, confirm: bool, now: float) -> None:
        route = self._routes.get(to_hex)
        hint = route[1] if route is not None and route[0] > now else None
        hops = self._next_hops(to_hex, (self.hex,), hint)
        if not hops:
            self._drop("no-route", to_hex)
        for link in hops:
            self._send_frame(link, frame)
            if confirm:
                self._confirm(link, frame, now)

    def _forward(self, env: Envelope, now: float) -> None:
        if len(env.path) >= self.config.max_hops:
            self._drop("too-many-hops", env.nonce)
            return
        if self.hex in env.path:
            self._drop("loop", env.nonce)
            return
        hazard = wire.hazard_to_original(env)
        if hazard is not None:
            self._drop("unsafe-for-original", hazard)
            return
        hops = self._next_hops(env.to, env.path, env.raw.get("route"))
        if not hops:
            self._drop("no-route", env.to)
            return
        frame = wire.relay_frame(env, self.hex)
        self.stats.relayed += 1
        confirm = _is_user(env.raw)
        for link in hops:
            self._send_frame(link, frame)
            if confirm:
                self._confirm(link, frame, now)

    def _next_hops(
        self, to_hex: str, path: list[str] | tuple[str, ...], route: Any = None
    ) -> list[_Link]:
        """Links to forward a message for ``to_hex`` to, best first (empty: no route).

        ``route`` is a route hint: the reversed path of a message the target sent, carried by
        replies so that they reach peers that greedy routing cannot find yet (a newcomer known
        only to its bootstrap peer). A hop on the hint is followed when linked; else greedy.
        """
        if type(route) is list and 0 < len(route) <= self.config.max_hops:
            hinted = self._follow_hint(route, path)
            if hinted is not None:
                return [hinted]
        target = int(to_hex, 16)
        redundancy = self.config.redundancy
        if redundancy == 1:
            best: _Link | None = None
            best_d = -1
            for link in self._open:
                d = link.peer_int ^ target
                if (best is None or d < best_d) and link.peer_hex not in path:
                    best, best_d = link, d
            ranked = [] if best is None else [best]
        else:
            ranked = sorted(
                (link for link in self._open if link.peer_hex not in path),
                key=lambda link: link.peer_int ^ target,
            )[:redundancy]
            best_d = ranked[0].peer_int ^ target if ranked else -1
        if not ranked:
            return ranked
        if best_d == 0:
            return ranked[:1]
        if best_d >= self._int ^ target and not self.config.detour:
            return []
        return ranked

    def _follow_hint(self, route: list[Any], path: list[str] | tuple[str, ...]) -> _Link | None:
        """The linked hop farthest along a route hint after us, if any (else: greedy).

        Taking the farthest linked hop, the target itself when linked, short-cuts the hint.
        """
        try:
            position = route.index(self.hex)
        except ValueError:
            position = -1
        table = self._table
        for index in range(len(route) - 1, position, -1):
            hop = route[index]
            if type(hop) is not str or len(hop) != 40:
                return None
            if hop in path:
                continue
            try:
                link = table.get(bytes.fromhex(hop))
            except ValueError:
                return None
            if link is not None:
                return link
        return None

    # ------------------------------------------------------------------ messages for us

    def _receive(self, env: Envelope, link: _Link, now: float) -> None:
        cfg = self.config
        try:
            kind, payload, has_payload = wire.message_body(env)
        except WireError as exc:
            self._drop(exc.reason, exc.detail)
            return
        key = message_key(env.sender, env.nonce)
        if key in self._delivered:
            self._drop("duplicate", env.nonce)
            return
        ts = -1
        raw_auth = env.raw.get("auth")
        if raw_auth is not None:
            try:
                auth = wire.parse_auth(raw_auth)
            except WireError as exc:
                self._drop(exc.reason, exc.detail)
                return
            if id_for_key(auth.key).hex() != env.sender:
                self._drop("key-mismatch", env.sender)
                return
            if abs(auth.ts - now * 1000) >= cfg.replay_window * 1000:
                self._drop("expired", env.nonce)
                return
            if (auth.ts, key) <= self._replay_floor:
                self._drop("replay", env.nonce)
                return
            try:
                data, body = wire.canonical_received(env.raw["data"])
            except ValueError:
                self._drop("bad-signature", "data cannot be canonicalised")
                return
            signed = wire.signed_bytes(env.to, env.sender, env.nonce, auth.ts, data)
            if not self._verify(auth.key, auth.sig, signed):
                self._drop("bad-signature", env.sender)
                return
            if body is not env.raw["data"]:
                payload = body.get("data")  # big integers read as the doubles that were signed
            ts = auth.ts
            verified = True
        elif cfg.require_auth:
            self._drop("unsigned", env.sender)
            return
        else:
            verified = False
        delivered = self._delivered
        delivered[key] = (now + cfg.seen_ttl, ts)
        by_ts = self._by_ts
        heapq.heappush(by_ts, (ts, key))
        if len(delivered) > cfg.max_seen:
            # Forget the message dated earliest, not the one received first: the floor rises as
            # little as it can, and one message dated late in the window (from any signer) cannot
            # lift the floor above every honest clock and make honest messages look replayed.
            while True:
                oldest = heapq.heappop(by_ts)
                entry = delivered.get(oldest[1])
                if entry is not None and entry[1] == oldest[0]:
                    del delivered[oldest[1]]
                    break
            self._replay_floor = max(self._replay_floor, oldest)
        elif len(by_ts) > 2 * len(delivered) + 64:
            self._by_ts = [(entry_ts, k) for k, (_expiry, entry_ts) in delivered.items()]
            heapq.heapify(self._by_ts)
        if env.path and env.path[0] == env.sender:
            routes = self._routes
            # Interned: the same few ids recur in every peer's routes.
            routes[env.sender] = (now + cfg.route_ttl, [intern(hop) for hop in reversed(env.path)])
            routes.move_to_end(env.sender)
            if len(routes) > cfg.max_routes:
                routes.popitem(last=False)
        sender = bytes.fromhex(env.sender)
        if kind == wire.USER:
            self.stats.delivered += 1
            self._events.append(Delivered(payload, sender, verified, len(env.path)))
        elif kind == wire.FIND_PEERS:
            self._on_find_peers(sender, payload, now)
        elif kind == wire.FOUND_PEERS:
            self._on_found_peers(payload, now)
        elif kind == wire.HANDSHAKE_OFFER:
            self._on_offer(sender, payload if has_payload else None, now)
        elif kind == wire.HANDSHAKE_ANSWER:
            self._on_answer(sender, payload, verified, now)
        elif kind == wire.SIGNAL:
            self._on_signal(sender, payload, verified, now)
        else:
            self._drop("unknown-type", kind[:32])

    def _take_token(self, now: float) -> bool:
        rate = self.config.control_rate
        self._tokens = min(2 * rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            self._drop("rate-limited")
            return False
        self._tokens -= 1
        return True

    def _on_find_peers(self, sender: bytes, payload: Any, now: float) -> None:
        """Answer with the ids we know nearest the asked one.

        ``spread`` lists only its open links: each is alive and one hop from us, so the asker can
        reach it through us (see :meth:`_populate`). ``original`` also lists candidates, as 0.0.2.
        """
        target_hex = hex_from_wire(payload)
        if target_hex is None:
            self._drop("bad-data", "findPeers without an id")
            return
        if not self._take_token(now):
            return
        k = self.config.k
        t = int(target_hex, 16)
        if self.config.strategy == "spread":
            links = heapq.nsmallest(k + 1, self._open, key=lambda link: link.peer_int ^ t)
            nearest = [link.peer_hex for link in links if link.peer_id != sender][:k]
        else:
            known = {link.peer_id for link in self._open}
            known.update(self._candidates.closest(bytes.fromhex(target_hex), k))
            known.discard(sender)
            ids = sorted(known, key=lambda i: int.from_bytes(i, "big") ^ t)[:k]
            nearest = [i.hex() for i in ids]
        self._originate(sender.hex(), wire.FOUND_PEERS, nearest, True, now)

    def _on_found_peers(self, payload: Any, now: float) -> None:
        if type(payload) is not list:
            self._drop("bad-data", "foundPeers is not a list")
            return
        introducer = self._found_peers_sender(now)
        introducers = self._introducers
        if introducers is None:
            introducers = self._introducers = OrderedDict()
        limit = _INTRODUCERS_PER_K * self.config.k
        linked = {link.peer_hex for link in self._open}
        linked.add(self.hex)
        add = self._candidates.add
        for entry in payload[: self.config.k]:
            if type(entry) is str and len(entry) == 40 and entry.islower():
                hex_id = entry  # the common case, as our peers and 0.0.2 write ids
                try:
                    peer_id = bytes.fromhex(entry)
                except ValueError:
                    continue
            else:
                parsed = hex_from_wire(entry)
                if parsed is None:
                    continue
                hex_id, peer_id = parsed, bytes.fromhex(parsed)
            if hex_id in linked:
                continue
            add(peer_id, now, replace_oldest=True)
            if introducer is not None and introducer != hex_id:
                introducers[peer_id] = introducer
                introducers.move_to_end(peer_id)
                if len(introducers) > limit:
                    introducers.popitem(last=False)
        if self.config.strategy == "spread":
            asked = self._asked
            if asked is not None and introducer is not None:
                sender = bytes.fromhex(introducer)
                if sender in asked:
                    asked[sender] = 0.0
            self._lookup_step(now)
        self._populate(now)

    def _lookup_step(self, now: float) -> None:
        """Ask the nearest candidates not asked yet in this round for their links nearest us.

        An iterative lookup by messages alone (at most two questions out at once): near links
        are dialled once it settles, instead of linking every step of the way and evicting the
        steps later.
        """
        asked = self._asked
        if asked is None:
            asked = self._asked = OrderedDict()
        budget = _LOOKUP_PARALLEL - sum(1 for due in asked.values() if due > now)
        if budget <= 0:
            return
        table = self._table
        for peer_id in self._nearest_candidates(self.config.near_count + 2):
            if peer_id in asked or peer_id in table:
                continue
            self._hint_via_introducer(peer_id, now)
            self._originate(peer_id.hex(), wire.FIND_PEERS, self.hex, True, now)
            asked[peer_id] = now + _LOOKUP_TIMEOUT
            if len(asked) > 4 * _LOOKUP_PARALLEL + self.config.near_count:
                asked.popitem(last=False)
            budget -= 1
            if budget <= 0:
                return

    def _lookup_pending(self, now: float) -> bool:
        """Whether a question of the lookup round is still out."""
        asked = self._asked
        return asked is not None and any(due > now for due in asked.values())

    def _found_peers_sender(self, now: float) -> str | None:
        """The sender (hex) of the foundPeers being handled, if known.

        :meth:`_receive` has just stored its reverse path as the newest route; an entry that is
        not brand new means the path did not start at the sender, and the sender stays unknown.
        """
        routes = self._routes
        if not routes:
            return None
        sender = next(reversed(routes))
        return sender if routes[sender][0] == now + self.config.route_ttl else None

    def _on_offer(self, sender: bytes, payload: Any, now: float) -> None:
        # An offer from a peer we think is linked is still answered: the asker has no link (its
        # close may not have reached us yet), and a duplicate link is resolved when it opens.
        if not self._take_token(now):
            return
        pending = sender in self._connecting
        if pending and sender > self.id:
            return  # Both asked at once: the peer with the higher id answers.
        answered = self._answered
        answered[sender] = now + self.config.connect_timeout
        answered.move_to_end(sender)
        if len(answered) > self.config.max_connecting * 4:
            answered.popitem(last=False)
        if (
            self.url is None
            and not self.config.webrtc
            and type(payload) is dict
            and type(payload.get("ws")) is str
        ):
            # We cannot be dialled, but the asker can: dial it instead.
            self._dial(payload["ws"], sender, now)
        self._originate(
            sender.hex(),
            wire.HANDSHAKE_ANSWER,
            {"ws": self.url, "wrtc": self.config.webrtc},
            True,
            now,
        )

    def _on_answer(self, sender: bytes, payload: Any, verified: bool, now: float) -> None:
        attempt = self._connecting.get(sender)
        if attempt is None or sender in self._table:
            self._drop("unexpected-answer", sender.hex())
            return
        if type(payload) is not dict:
            self._drop("bad-data", "handshake-answer is not an object")
            return
        ws = payload.get("ws")
        if payload.get("wrtc") is True and self.config.webrtc:
            if attempt.webrtc_handle is None:
                # It may be linking to us already (we answered its offer before asking): then
                # this attempt waits for that link instead of crossing it with a second one.
                inbound = self._rtc_by_peer.get(sender)
                if inbound is None:
                    inbound = self._start_webrtc(sender, True, now)
                attempt.webrtc_handle = inbound
        elif type(ws) is str and ws.startswith(("ws://", "wss://")) and len(ws) < 2048:
            self._dial(ws, sender, now)
        elif self.url is not None:
            # It may dial us (it saw our URL in the offer); wait for that until timeout. A 0.0.2
            # peer (unsigned) ignores an offer's URL, but dials the URL of any answer it gets.
            if not verified:
                answer = {"ws": self.url, "wrtc": False}
                self._originate(sender.hex(), wire.HANDSHAKE_ANSWER, answer, True, now)
        else:
            self._fail_attempt(sender, "unreachable", now)

    def _start_webrtc(self, peer_id: bytes, initiator: bool, now: float) -> int:
        handle = self._new_handle(now)
        link = _Link(handle, initiator, "webrtc", now + self.config.connect_timeout)
        link.expected = peer_id
        self._links[handle] = link
        self._rtc_by_peer[peer_id] = handle
        self._events.append(StartWebRTC(handle, peer_id, initiator))
        return handle

    def _on_signal(self, sender: bytes, payload: Any, verified: bool, now: float) -> None:
        if not self.config.webrtc:
            self._drop("unexpected-signal", "webrtc is off")
            return
        handle = self._rtc_by_peer.get(sender)
        kind = payload.get("type") if type(payload) is dict and "sdp" in payload else None
        is_offer = kind == "offer"
        if handle is not None and is_offer and sender in self._answered:
            stale = self._links.get(handle)
            if stale is not None and stale.outbound and stale.state == _DIALING:
                # Glare: each side answered the other's handshake and started a link as the
                # initiator. The lower id's link goes on; the other side answers it instead.
                if self.id < sender:
                    self._drop("webrtc-glare", sender.hex())
                    return
                attempt = self._connecting.pop(sender, None)
                self._close(stale, "glare", now)  # without failing the attempt: it goes on
                if attempt is not None:
                    attempt.webrtc_handle = None
                    self._connecting[sender] = attempt
                handle = self._rtc_by_peer.get(sender)
            elif (
                stale is not None
                and stale.rtc_described
                and not stale.outbound
                and stale.state != _OPEN
            ):
                # A second offer: the remote gave up on the attempt our link answers (its timeout
                # may be shorter than ours) and asked again. Answer it on a new link; the old one
                # would take the offer as a renegotiation and drop it.
                self._close(stale, "superseded", now)
                handle = self._rtc_by_peer.get(sender)
        if handle is None:
            if sender not in self._answered or sender in self._table:
                self._drop("unexpected-signal", sender.hex())
                return
            if self._pending_links() >= self.config.max_pending_links:
                self._drop("too-many-pending", sender.hex())
                return
            handle = self._start_webrtc(sender, False, now)
            attempt = self._connecting.get(sender)
            if attempt is not None and attempt.webrtc_handle is None:
                attempt.webrtc_handle = handle  # our own attempt waits for this link
        if kind in ("offer", "answer"):
            link = self._links.get(handle)
            if link is not None and not link.rtc_described:
                # The link applies the first description only: the DTLS fingerprint in it is
                # what the remote proves its id with, so the link is as authentic as its message.
                link.rtc_described = True
                link.authenticated = verified
        self._events.append(SignalIn(handle, payload))

    def _rtc_greeting(self, link: _Link, now: float) -> bytes:
        """The first frame on a WebRTC link: findPeers to the remote (as 0.0.2 sends on a link).

        Built as :meth:`_originate` builds messages, but sent on this link, which is not open yet.
        """
        assert link.expected is not None
        to_hex = link.expected.hex()
        data = wire.canonical({"type": wire.FIND_PEERS, "data": self.hex})
        nonce = str(self._rng.getrandbits(63))
        auth = None
        if self.config.sign:
            ts = int(now * 1000)
            signature = self.identity.sign(wire.signed_bytes(to_hex, self.hex, nonce, ts, data))
            auth = {"key": self._key_b64, "sig": wire.b64encode(signature), "ts": ts}
        self.stats.originated += 1
        return wire.origin_frame(to_hex, self.hex, nonce, data, auth)

    def send_signal(self, handle: int, signal: Any, now: float) -> None:
        """Relay a WebRTC signal of link ``handle`` to its remote."""
        link = self._links.get(handle)
        if link is None or link.expected is None or self._closed:
            return
        self._originate(link.expected.hex(), wire.SIGNAL, signal, True, now)

    # ------------------------------------------------------------------ discovery and population

    def _start_attempt(self, peer_id: bytes, now: float, *, user: bool) -> None:
        self._connecting[peer_id] = _Attempt(now + self.config.connect_timeout, user)
        self._wake(now)
        offer = {"ws": self.url, "wrtc": self.config.webrtc}
        self._originate(peer_id.hex(), wire.HANDSHAKE_OFFER, offer, True, now)

    def _fail_attempt(self, peer_id: bytes, reason: str, now: float) -> None:
        attempt = self._connecting.pop(peer_id, None)
        if attempt is None:
            return
        if attempt.webrtc_handle is not None:
            link = self._links.get(attempt.webrtc_handle)
            if link is not None:
                self._close(link, reason, now)
        if reason != "shutdown":
            # Back off from a peer that did not answer, cannot be reached or refused us.
            if reason in ("timeout", "unreachable"):
                self._candidates.remove(peer_id)
            undialable = self._undialable
            undialable[peer_id] = now + 4 * self.config.refresh_interval
            if len(undialable) > self.config.max_undialable:
                undialable.popitem(last=False)
        if attempt.user:
            self._events.append(ConnectResult(peer_id, False, reason))

    # Refresh state (see _refresh and _rejoin); class defaults until first set.
    _near_signature: tuple[bytes, ...] = ()
    _quiet_rounds = 0
    _refreshed_at = float("-inf")
    _closed_before = 0
    _rejoin_until = float("-inf")
    _rejoin_at = float("-inf")
    _rejoin_delay = 0.0
    _island_at = float("-inf")
    _island_delay = 0.0

    def _refresh(self, now: float) -> None:
        """Periodic discovery and repair.

        ``original`` asks its nearest link about its neighbourhood, as 0.0.2. ``spread`` starts a
        lookup round for its neighbourhood (only every fourth time while its near links stay the
        same), asks about one empty bucket, redials its bootstrap peers after a sudden loss (see
        :meth:`_rejoin`), and populates.
        """
        cfg = self.config
        me = self._int
        if cfg.strategy != "spread":
            if self._open:
                near_link = min(self._open, key=lambda link: link.peer_int ^ me)
                self._originate(near_link.peer_hex, wire.FIND_PEERS, self.hex, True, now)
            self._populate(now)
            return
        self._rejoin(now)
        self._reach_out(now)
        if not self._open:
            return
        near = heapq.nsmallest(cfg.near_count, self._open, key=lambda link: link.peer_int ^ me)
        signature = tuple(link.peer_id for link in near)
        if signature != self._near_signature:
            self._near_signature = signature
            self._quiet_rounds = 0
        else:
            self._quiet_rounds += 1
        if self._quiet_rounds % _QUIET_ROUNDS == 0:
            # A new lookup round: ask the nearest link and one more near one; their answers
            # lead to nearer peers, asked in turn (see _lookup_step).
            ask = {near[0], self._rng.choice(near)}
            asked = self._asked
            if asked is None:
                asked = self._asked = OrderedDict()
            asked.clear()
            for link in sorted(ask, key=lambda link: link.peer_int ^ me):
                asked[link.peer_id] = now + _LOOKUP_TIMEOUT
                self._originate(link.peer_hex, wire.FIND_PEERS, self.hex, True, now)
        filled = {bucket_index(me, link.peer_int) for link in self._open}
        deepest = min(filled)
        empty = [i for i in range(deepest + 1, 160) if i not in filled]
        if empty:
            index = self._rng.choice(empty[-8:])
            target = self._random_id_in_bucket(index)
            via = self._next_hops(target.hex(), (self.hex,))
            if via:
                self._originate(via[0].peer_hex, wire.FIND_PEERS, target.hex(), True, now)
        self._populate(now)

    def _rejoin(self, now: float) -> None:
        """Redial the bootstrap peers, backing off, for a while when cut off.

        Signs: no link and no dial under way (the bootstrap dial failed); or, with attempts to
        other peers timing out since the last refresh, a third of our links closed at once (a
        partition: once it heals, nothing on our side links to the other, routing cannot
        cross, only a dial can, and a bootstrap URL is the one address we have), or fewer links
        than near neighbours wanted (newcomers that linked only to each other, say, when their
        bootstrap peer let them go).
        """
        cfg = self.config
        closed = self.stats.links_closed
        lost = closed - self._closed_before
        self._closed_before = closed
        since = self._refreshed_at
        self._refreshed_at = now
        count = len(self._open)
        if not self._bootstrap or now < self._rejoin_until:
            start = False
        elif not count and not self._pending_links():
            # No link, and none coming: the bootstrap dial failed (the redial after losing
            # every link only follows a link that was open).
            start = True
        elif count < cfg.near_count or (lost >= 3 and 3 * lost >= count + lost):
            # Attempts that failed since the last refresh carry an expiry past this threshold.
            threshold = since + 4 * cfg.refresh_interval
            failed = 0
            for until in reversed(self._undialable.values()):
                if until <= threshold:
                    break
                failed += 1
            # Under-linked after a loss or a failure: a newcomer whose bootstrap peer let it go
            # before it learnt anyone (its lookups then have nobody to ask).
            start = failed >= 2 or (count < cfg.near_count and failed + lost >= 1)
        else:
            start = False
        if start:
            self._rejoin_until = now + _REJOIN_PERIOD
            self._rejoin_at = now
            self._rejoin_delay = cfg.refresh_interval
        if now < self._rejoin_until and now >= self._rejoin_at:
            self._rejoin_at = now + self._rejoin_delay
            self._rejoin_delay *= 2
            for url in self._bootstrap:
                self._dial(url, None, now)

    def _reach_out(self, now: float) -> None:
        """Redial the bootstrap peers we are not linked to, backing off, while on an island.

        The sign: we have room for links and know no one we could dial. Newcomers whose
        bootstrap peer let them go before they learnt anyone else can end up linked only to
        each other: their lookups then ask only each other, and greedy routing from outside
        never finds them. (A network that small is all linked already: nothing to dial.)
        """
        cfg = self.config
        if not self._bootstrap or not self._open or self._connecting:
            return
        if len(self._open) >= cfg.max_links - cfg.spare_links or any(
            self._dialable(peer_id) for peer_id in self._candidates
        ):
            self._island_delay = 0.0
            return
        if now < self._island_at:
            return
        self._island_delay = min(2 * self._island_delay or cfg.refresh_interval, _REJOIN_PERIOD)
        self._island_at = now + self._island_delay
        for url in self._bootstrap:
            known = self._bootstrap_ids.get(url)
            if known is None or known not in self._table:
                self._dial(url, None, now)

    def _random_id_in_bucket(self, index: int) -> bytes:
        flip = 1 << index
        low = self._rng.getrandbits(index) if index else 0
        value = ((self._int ^ flip) >> index << index) | low
        return value.to_bytes(ID_BYTES, "big")

    # Who listed each candidate in a foundPeers (its hex id). An offer to the candidate travels
    # through that peer as a route hint, so it arrives even where greedy routing cannot yet
    # find the candidate (a newcomer, a neighbourhood still forming). Made on first use; the
    # 4 * k most recent only (an introducer matters while the news is fresh).
    _introducers: OrderedDict[bytes, str] | None = None
    # Peers asked for our neighbourhood in this lookup round: when their answer is due, 0.0
    # once it came. Made on first use; a few entries.
    _asked: OrderedDict[bytes, float] | None = None

    def _hint_via_introducer(self, peer_id: bytes, now: float) -> None:
        """Make the next message to ``peer_id`` go through the linked peer that named it."""
        introducers = self._introducers
        via = None if introducers is None else introducers.get(peer_id)
        if via is None or bytes.fromhex(via) not in self._table:
            return
        peer_hex = peer_id.hex()
        routes = self._routes
        known = routes.get(peer_hex)
        if known is None or known[0] <= now or len(known[1]) > 2:
            routes[peer_hex] = (now + self.config.route_ttl, [via, peer_hex])
            routes.move_to_end(peer_hex)
            if len(routes) > self.config.max_routes:
                routes.popitem(last=False)

    def _populate(self, now: float) -> None:
        """Start connection attempts toward the links the population policy wants.

        See :meth:`_wanted` for what it wants.
        """
        cfg = self.config
        if self._closed:
            return
        free = cfg.max_connecting - len(self._connecting)
        room = cfg.max_links - len(self._open) - len(self._connecting)
        if free <= 0:
            return
        for peer_id in self._wanted(free, room, now):
            self._hint_via_introducer(peer_id, now)
            self._start_attempt(peer_id, now, user=False)

    def _dialable(self, peer_id: bytes) -> bool:
        return (
            peer_id not in self._table
            and peer_id not in self._connecting
            and peer_id not in self._undialable
            and peer_id not in self._answered
        )

    def _nearest_candidates(self, n: int) -> list[bytes]:
        """The ``n`` candidates nearest our own id, nearest first (walks the low buckets only)."""
        out: list[bytes] = []
        if n <= 0:
            return out
        cand = self._candidates
        me = self._int
        for index in cand.bucket_sizes():
            ids = sorted(cand.bucket(index), key=lambda i: int.from_bytes(i, "big") ^ me)
            out.extend(ids[: n - len(out)])
            if len(out) >= n:
                break
        return out

    def _wanted(self, free: int, room: int, now: float) -> list[bytes]:
        """Up to ``free`` candidates to dial now, given ``room`` unused links.

        ``original`` wants the 15 ids nearest its own while it has room. ``spread`` wants:

        1. its ``near_count`` nearest neighbours, even with no room (a farther link gives way),
           once no question of its lookup round is out;
        2. while it has room, one link in every bucket it knows peers in, farthest first;
        3. while more than ``spare_links`` are unused, a second link in the far buckets whose
           links cover one half of the bucket only: the other half gives one more bit per hop.
        """
        cfg = self.config
        if cfg.strategy == "original":
            nearest = self._nearest_candidates(15)
            return [p for p in nearest if self._dialable(p)][: min(free, room)]
        if self._lookup_pending(now):
            wanted = []
        else:
            wanted = [p for p in self._nearest_candidates(cfg.near_count) if self._dialable(p)]
            del wanted[free:]
        fill = min(free, len(wanted) + room)
        extra = min(free, len(wanted) + room - cfg.spare_links)
        if fill <= len(wanted):
            return wanted
        me = self._int
        halves: dict[int, int] = {}  # bucket -> mask of the halves covered: 1, 2 or 3
        for peer_int in [link.peer_int for link in self._open] + [
            int.from_bytes(p, "big") for p in (*self._connecting, *wanted)
        ]:
            index = (peer_int ^ me).bit_length() - 1
            halves[index] = halves.get(index, 0) | 1 << _half_bit(peer_int, index)
        cand = self._candidates
        occupied = sorted(cand.bucket_sizes(), reverse=True)
        rng = self._rng
        for index in occupied:
            if index in halves:
                continue
            choices = [p for p in cand.bucket(index) if self._dialable(p)]
            if choices:
                pick = rng.choice(choices)
                wanted.append(pick)
                halves[index] = 1 << _half_bit(int.from_bytes(pick, "big"), index)
                if len(wanted) >= fill:
                    return wanted
        if len(wanted) >= extra:
            return wanted
        for index in occupied:
            mask = halves.get(index, 3)
            if mask == 3 or index == 0:
                continue
            missing = 0 if mask == 2 else 1
            choices = [
                p
                for p in cand.bucket(index)
                if _half_bit(int.from_bytes(p, "big"), index) == missing and self._dialable(p)
            ]
            if choices:
                wanted.append(rng.choice(choices))
                halves[index] = 3
                if len(wanted) >= extra:
                    break
        return wanted

    def _eviction_victim(self, newcomer: bytes, now: float) -> _Link | None:
        """The open link to close so that ``newcomer`` fits, or None to refuse the newcomer.

        The links to our ``near_count`` nearest neighbours (the newcomer among them, if near) are
        never closed. Of the others, one past its grace period goes first (young links are a
        newcomer's lifeline), then the most crowded (its bucket holds the most links, then its
        half of the bucket does), then the oldest.

        Closing a link of our neighbourhood (the buckets up to one past the farthest near link)
        or one alone in its bucket harms a route, and as buckets are symmetric, the peer at the
        other end often wants it back. Such a link goes only for a peer that cannot look
        elsewhere: a nearest neighbour, one the application asked for, or one that dialled us
        without an offer (a newcomer's bootstrap link). A peer that offered first is refused
        instead and tries another candidate.
        """
        cfg = self.config
        if cfg.strategy == "original":
            return None
        me = self._int
        ranked = sorted(self._open, key=lambda link: link.peer_int ^ me)
        protect = min(cfg.near_count, len(ranked))
        new_int = int.from_bytes(newcomer, "big")
        new_near = protect > 0 and new_int ^ me < ranked[protect - 1].peer_int ^ me
        if new_near:
            protect -= 1
        region = (ranked[protect - 1].peer_int ^ me).bit_length() + _NEAR_MARGIN if protect else -1
        counts: dict[int, int] = {}
        for link in ranked:
            index = (link.peer_int ^ me).bit_length() - 1
            half = 2 * index + _half_bit(link.peer_int, index)
            counts[index] = counts.get(index, 0) + 1
            counts[~half] = counts.get(~half, 0) + 1
        best: _Link | None = None
        best_key: tuple[bool, bool, int, int, float] | None = None
        for link in ranked[protect:]:
            index = (link.peer_int ^ me).bit_length() - 1
            half = 2 * index + _half_bit(link.peer_int, index)
            key = (
                index >= region and counts[index] >= 2,
                now - link.opened_at >= cfg.link_grace,
                counts[index],
                counts[~half],
                -link.opened_at,
            )
            if best_key is None or key > best_key:
                best, best_key = link, key
        if best_key is None or best_key[0] or new_near:
            victim = best
        elif newcomer in self._connecting:
            victim = best if self._connecting[newcomer].user else None
        else:
            victim = None if newcomer in self._answered else best
        return victim


_NEAR_MARGIN = 1
"""Buckets past the farthest near link still counted as our neighbourhood by eviction."""
_INTRODUCERS_PER_K = 4
"""Introducers remembered, per ``k``."""
_QUIET_ROUNDS = 4
"""While the near links stay the same, a lookup round runs every this many refreshes."""
_REJOIN_PERIOD = 600.0
"""Seconds during which the bootstrap peers are redialled after a sudden loss of links."""
_LOOKUP_PARALLEL = 2
"""Questions of a lookup round out at once."""
_LOOKUP_TIMEOUT = 2.0
"""Seconds an unanswered lookup question holds back the dialling of near links."""


def message_key(sender_hex: str, nonce: str) -> int:
    """How duplicate filters remember a message: the hash of its origin and nonce."""
    return hash((sender_hex, nonce))


def _is_user(envelope: dict[str, Any]) -> bool:
    """Whether an envelope carries an application message (``data.type`` is ``user``)."""
    data = envelope.get("data")
    return type(data) is dict and data.get("type") == wire.USER


def _half_bit(peer_int: int, index: int) -> int:
    """Which half of bucket ``index`` an id falls in: the bit after the one that differs."""
    return (peer_int >> (index - 1)) & 1 if index > 0 else 0
