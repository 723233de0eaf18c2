"""Direct links: their states, the hello/proof handshake, duplicate links, close and drain,
strikes for malformed frames.

A link is made by :meth:`Links.accept` (inbound), :meth:`Links.dial` (a WebSocket we open) or
:meth:`Links.start_webrtc`. It opens once the remote has proven its id (or, where unsigned peers
are allowed, named it). What an open or a lost link means for the rest of the node is not
decided here: :class:`Links` reports it through the callbacks its owner wires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import wire
from ..events import CloseLink, DialWebSocket, PeerLinked, PeerUnlinked, StartWebRTC
from ..identity import Verifier, id_for_key
from ..ids import short
from ..table import KBucketTable
from ..wire import WireError
from .context import Context, log
from .link import DRAINING, HELLO, OPEN, PROOF, Link

Evict = Callable[[bytes, float], "Link | None"]
"""``evict(newcomer, now)``: the open link to close so that ``newcomer`` fits, or None."""
Refused = Callable[[bytes, str, float], None]
"""``refused(peer_id, reason, now)``: a link to ``peer_id`` could not be kept."""
Opened = Callable[[Link, float], None]
"""``opened(link, now)``: ``link`` has just opened (and :class:`PeerLinked` gone out)."""
Gone = Callable[[Link, str, bool, float], None]
"""``gone(link, reason, was_open, now)``: ``link`` has left the table of links."""


class Links:
    """Every link of one peer, by handle; the open ones also in a k-bucket table by id."""

    def __init__(
        self,
        ctx: Context,
        verify: Verifier,
        *,
        evict: Evict,
        refused: Refused,
        opened: Opened,
        gone: Gone,
    ) -> None:
        self.ctx = ctx
        self.verify = verify
        self.evict = evict
        self.refused = refused
        self.opened = opened
        self.gone = gone
        self.listing: Callable[[], bytes | None] = lambda: None
        """The list of our links that our proof carries (None: none; see ``neighbours.py``)."""
        self.listed: Callable[[Link, Any, float], None] = lambda link, listed, now: None
        """Takes the list of the remote's links that its proof carried."""
        self.by_handle: dict[int, Link] = {}
        self.open: list[Link] = []
        self.table: KBucketTable[Link] = KBucketTable(ctx.id, ctx.config.k)
        self.next_handle = 1

    def pending(self) -> int:
        """How many links are still in their handshake (or draining)."""
        return len(self.by_handle) - len(self.open)

    def pending_inbound(self) -> int:
        """How many inbound connections are in their hello and proof."""
        return sum(1 for link in self.by_handle.values() if link.inbound_pending)

    def opening(self) -> int:
        """How many links we started (dials, WebRTC links) are still opening."""
        return sum(
            1 for link in self.by_handle.values() if link.state < OPEN and not link.inbound_pending
        )

    def _new(self, outbound: bool, transport: str, deadline: float, now: float) -> Link:
        handle = self.next_handle
        self.next_handle += 1
        self.ctx.wake(now)  # its handshake has a deadline
        link = Link(handle, outbound, transport, deadline)
        link.created = now
        self.by_handle[handle] = link
        return link

    def accept(self, now: float, transport: str, source: str | None) -> int:
        """An inbound connection arrived from ``source``: greet it, or close it at once when
        the handshake budgets leave no room (see :meth:`_admit`)."""
        ctx = self.ctx
        link = self._new(False, transport, now + ctx.config.hello_timeout, now)
        link.source = source
        refusal = "shutdown" if ctx.closed else self._admit(link, now)
        if refusal is not None:
            if refusal != "shutdown":
                ctx.drop(refusal, source or "")
            self.close(link, refusal, now)
        else:
            link.inbound_pending = True
            self._start_hello(link)
        return link.handle

    def admits(self, source: str | None) -> bool:
        """Whether an inbound connection from ``source`` would be taken into a handshake now
        (False: its source holds all the handshakes it may)."""
        if source is None or self.ctx.closed:
            return not self.ctx.closed
        return self._pending_from(source) < self.ctx.config.max_pending_per_source

    def _pending_from(self, source: str) -> int:
        """How many inbound connections from ``source`` are in their hello and proof."""
        return sum(
            1 for link in self.by_handle.values() if link.inbound_pending and link.source == source
        )

    def _admit(self, link: Link, now: float) -> str | None:
        """Make room for a new inbound connection in the handshake budgets, or say why not.

        One source holds at most ``max_pending_per_source`` connections in their handshake.
        When ``max_pending_links`` are in theirs, the oldest one of the source holding most
        makes way, unless that is the newcomer's own source: a few addresses that open idle
        connections cannot keep anyone else out.
        """
        cfg = self.ctx.config
        waiting = [other for other in self.by_handle.values() if other.inbound_pending]
        source = link.source
        mine = 0 if source is None else self._pending_from(source)
        if mine >= cfg.max_pending_per_source:
            return "too-many-pending-source"
        if len(waiting) < cfg.max_pending_links:
            return None
        held: dict[str | None, list[Link]] = {}
        for other in waiting:
            if other.source is not None:
                held.setdefault(other.source, []).append(other)
        heaviest = max(held.values(), key=len, default=[])
        if len(heaviest) <= mine:
            return "too-many-pending"
        self.ctx.drop("pending-evicted", heaviest[0].source or "")
        self.close(heaviest[0], "pending-evicted", now)
        return None

    def dial(self, url: str, expected: bytes | None, now: float) -> None:
        """Open a WebSocket to ``url`` (whose remote must prove ``expected``, if given)."""
        ctx = self.ctx
        if ctx.closed or self.opening() >= ctx.config.max_dialing:
            ctx.drop("too-many-dialing", url)
            return
        link = self._new(True, "ws", now + ctx.config.link_timeout, now)
        link.expected = expected
        link.url = url
        ctx.events.append(DialWebSocket(link.handle, url, expected))

    def start_webrtc(self, peer_id: bytes, initiator: bool, now: float) -> int:
        """Start a WebRTC link to ``peer_id``; return its handle."""
        ctx = self.ctx
        link = self._new(initiator, "webrtc", now + ctx.config.connect_timeout, now)
        link.expected = peer_id
        ctx.events.append(StartWebRTC(link.handle, peer_id, initiator))
        return link.handle

    def connected(self, link: Link, now: float) -> None:
        """An outbound WebSocket is up: greet the remote."""
        link.deadline = now + self.ctx.config.link_timeout
        self._start_hello(link)

    def _start_hello(self, link: Link) -> None:
        ctx = self.ctx
        link.state = HELLO
        link.my_nonce = ctx.rng.randbytes(16)
        ctx.send(link.handle, wire.hello_frame(ctx.id, ctx.identity.public_key, link.my_nonce))

    def handshake(self, link: Link, obj: Any, now: float) -> None:
        """A frame on a WebSocket link that is not open yet: the hello, then the proof.

        Raises WireError for a frame that is neither.
        """
        if link.state == HELLO:
            self._on_hello(link, obj, now)
        elif link.state == PROOF:
            self._on_proof(link, obj, now)
        else:
            self.ctx.drop("frame-before-open")
            self.close(link, "frame-before-open", now)

    def _on_hello(self, link: Link, obj: Any, now: float) -> None:
        ctx = self.ctx
        hello = wire.parse_hello(obj)
        refusal = None
        if hello.peer_id == ctx.id:
            refusal = "self-link"
        elif link.expected is not None and hello.peer_id != link.expected:
            refusal = "unexpected-id"
        elif hello.key is None or hello.nonce is None:
            if ctx.config.require_auth:
                refusal = "unauthenticated-peer"
            else:
                self.establish(link, hello.peer_id, False, now)
        elif id_for_key(hello.key) != hello.peer_id:
            refusal = "key-mismatch"
        else:
            link.remote_key, link.remote_nonce = hello.key, hello.nonce
            link.peer_id = hello.peer_id
            proof = wire.link_proof_bytes(
                hello.nonce, link.my_nonce, hello.peer_id, ctx.id, prover_dialled=link.outbound
            )
            listing = self.listing()
            if listing is not None:
                link.shared_at = now
                link.shares = 1
            ctx.send(link.handle, wire.proof_frame(ctx.identity.sign(proof), listing))
            link.state = PROOF
        if refusal is not None:
            ctx.drop(refusal, hello.peer_id.hex())
            self.close(link, refusal, now)

    def _on_proof(self, link: Link, obj: Any, now: float) -> None:
        ctx = self.ctx
        signature = wire.parse_proof(obj)
        assert link.remote_key is not None
        signed = wire.link_proof_bytes(
            link.my_nonce, link.remote_nonce, ctx.id, link.peer_id, prover_dialled=not link.outbound
        )
        if self.verify(link.remote_key, signature, signed):
            self.establish(link, link.peer_id, True, now)
            listed = obj["pr"].get("links")
            if listed is not None and link.state == OPEN:
                self.listed(link, listed, now)
        else:
            ctx.drop("bad-proof", link.peer_id.hex())
            self.close(link, "bad-proof", now)

    def establish(self, link: Link, peer_id: bytes, authenticated: bool, now: float) -> None:
        """Open ``link`` as the link to ``peer_id``, unless a duplicate or the limits say no."""
        ctx = self.ctx
        if not self._resolve_duplicate(link, peer_id, authenticated, now):
            return
        if len(self.open) >= ctx.config.max_links:
            victim = self.evict(peer_id, now)
            if victim is None:
                self.close(link, "link-limit", now)
                self.refused(peer_id, "link-limit", now)
                return
            self.close(victim, "evicted", now)
        link.peer_id = peer_id
        link.peer_hex = peer_id.hex()
        link.peer_int = int.from_bytes(peer_id, "big")
        link.authenticated = authenticated
        link.opened_at = now
        link.deadline = now + ctx.config.strike_window
        if not self.table.add(peer_id, link):
            self.close(link, "bucket-full", now)
            self.refused(peer_id, "bucket-full", now)
            return
        link.state = OPEN
        link.inbound_pending = False
        self.open.append(link)
        ctx.stats.links_opened += 1
        ctx.events.append(PeerLinked(peer_id, link.transport, authenticated, now - link.created))
        self.opened(link, now)

    def _resolve_duplicate(
        self, link: Link, peer_id: bytes, authenticated: bool, now: float
    ) -> bool:
        """Settle a second link to the same peer; return whether ``link`` may go on opening."""
        existing = self.table.get(peer_id)
        if existing is None:
            return True
        if authenticated != existing.authenticated:
            # One link proved the id and the other only claimed it: the claim is an impostor's
            # (our peers always prove their id, and 0.0.2 peers never can). The proven link
            # stays, whichever came first.
            self.ctx.drop("unproven-duplicate", peer_id.hex())
            self.close(existing if authenticated else link, "duplicate", now)
            return authenticated
        if not authenticated:
            # A 0.0.2 peer keeps its first link in its table and ignores a second one (our id
            # lower) or closes both (ours higher), and a close of either makes it drop the other
            # too: no survivor can be agreed on, and keeping one may keep the ignored one.
            self.close(existing, "duplicate", now)
            self.close(link, "duplicate", now)
            return False
        # Both ends must pick the same survivor. Links dialled in opposite directions: keep the
        # one dialled by the lower id. Same direction: the new one supersedes the old, which the
        # remote evidently gave up on.
        if existing.outbound != link.outbound:
            keep_new = (self.ctx.id < peer_id) == link.outbound
        else:
            keep_new = True
        if not keep_new:
            self.close(link, "duplicate", now)
            return False
        self.close(existing, "superseded", now)
        return True

    def close(self, link: Link, reason: str, now: float) -> None:
        """Close a link we decided to close; an open one drains until the adapter reports it."""
        if link.handle not in self.by_handle or link.state == DRAINING:
            return
        ctx = self.ctx
        ctx.events.append(CloseLink(link.handle, reason))
        was_open = link.state == OPEN
        self.forget(link, reason, now)
        if was_open:
            link.state = DRAINING
            link.deadline = now + ctx.config.link_timeout
            self.by_handle[link.handle] = link
            ctx.wake(now)

    def forget(self, link: Link, reason: str, now: float) -> None:
        """Take ``link`` out of every table (the adapter reported it gone, or we closed it)."""
        del self.by_handle[link.handle]
        link.inbound_pending = False
        if link.state == DRAINING:
            return
        was_open = link.state == OPEN
        if was_open:
            link.awaiting, link.pending, link.ping_due, link.held = [], [], float("inf"), 0
            self.open.remove(link)
            self.table.remove(link.peer_id)
            ctx = self.ctx
            ctx.stats.links_closed += 1
            ctx.events.append(PeerUnlinked(link.peer_id, reason))
            log.debug("%s unlinked %s: %s", short(ctx.hex), short(link.peer_id), reason)
        elif reason != "shutdown":
            log.debug("%s link %d failed: %s", short(self.ctx.hex), link.handle, reason)
        self.gone(link, reason, was_open, now)

    def strike(self, link: Link, exc: WireError, now: float) -> None:
        """A malformed frame on ``link``: a handshake fails; an open link is closed after
        ``max_strikes`` within ``strike_window``."""
        self.ctx.drop(exc.reason, exc.detail)
        if link.state != OPEN:
            self.close(link, f"bad-handshake: {exc.reason}", now)
            return
        self.misbehaved(link, now)

    def misbehaved(self, link: Link, now: float) -> None:
        """Count a strike against open ``link`` (its own frame was malformed or forged, and
        dropped); close it after ``max_strikes`` within ``strike_window``."""
        ctx = self.ctx
        link.strikes += 1
        ctx.wake(now)
        if link.strikes >= ctx.config.max_strikes:
            self.close(link, "misbehaving", now)

    def expire(self, link: Link, now: float) -> None:
        """Deadlines of one link: drained, handshake too slow, strikes forgiven."""
        if link.state == DRAINING and now >= link.deadline:
            del self.by_handle[link.handle]
        elif link.state != OPEN and now >= link.deadline:
            self.ctx.drop("handshake-timeout", str(link.handle))
            self.close(link, "handshake-timeout", now)
        elif link.strikes and now >= link.deadline:
            link.strikes = 0
            link.deadline = now + self.ctx.config.strike_window

    def busy(self) -> bool:
        """Whether a link waits on a deadline (a handshake, a drain, strikes, a ping)."""
        return any(
            link.state != OPEN or link.strikes or link.ping_due != float("inf")
            for link in self.by_handle.values()
        )
