"""Connection attempts: relayed handshake offers and answers, WebRTC signals, glare.

A peer that wants a direct link to another sends it a ``handshake-offer`` through the network
(our URL, whether we do WebRTC). The answer says how to link: we dial its URL, or start WebRTC
(whose signals are relayed the same way), or wait for it to dial us. An attempt ends when the
link opens, or fails (timeout, unreachable, refused) and the peer is left alone for a while.
Offers and discovery requests are answered within the per-source budgets
(:mod:`~peer_relay.core.budgets`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import wire
from ..events import ConnectResult, SignalIn
from ..table import KBucketTable
from .bounded import BoundedMap, TokenBucket, expires_at
from .budgets import ControlBudgets
from .context import Context
from .inbox import Received
from .link import DIALING, OPEN, Link
from .links import Links
from .routing import Router


@dataclass(slots=True)
class Attempt:
    """A connection attempt in flight."""

    deadline: float
    user: bool
    """The application asked for it (it gets a :class:`ConnectResult`)."""
    webrtc_handle: int | None = None


class Connector:
    """Owns the attempts in flight, the peers we answered, the peers to leave alone for a
    while, and which WebRTC link belongs to which peer."""

    def __init__(
        self,
        ctx: Context,
        links: Links,
        router: Router,
        candidates: KBucketTable[float],
        budgets: ControlBudgets,
        now: float,
    ) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.links = links
        self.router = router
        self.candidates = candidates
        self.budgets = budgets
        self.attempts: dict[bytes, Attempt] = {}
        self.answered: BoundedMap[bytes, float] = BoundedMap(4 * cfg.max_connecting, expires_at)
        """Peers whose offer we answered (-> until when we expect their link)."""
        self.undialable: BoundedMap[bytes, float] = BoundedMap(cfg.max_undialable, expires_at)
        """Peers an attempt to failed (-> until when they are left alone)."""
        self.rtc_by_peer: dict[bytes, int] = {}
        self.dial_backs = TokenBucket(
            cfg.max_connecting / max(cfg.connect_timeout, 1e-3), cfg.max_connecting, now
        )
        """Dials that offers ask of a peer that cannot be dialled (see :meth:`_dial_back`)."""
        self.would_link: Callable[[bytes, float], bool] = lambda peer_id, now: True
        """Whether a link to this peer would be kept if it opened now (the core wires in the
        population's answer)."""

    def dialable(self, peer_id: bytes) -> bool:
        """Whether an attempt to ``peer_id`` may start now."""
        return (
            peer_id not in self.links.table
            and peer_id not in self.attempts
            and peer_id not in self.undialable.entries
            and peer_id not in self.answered.entries
        )

    # ---------------------------------------------------------------- our attempts

    def start(self, peer_id: bytes, now: float, *, user: bool) -> None:
        """Offer ``peer_id`` a link."""
        ctx = self.ctx
        self.attempts[peer_id] = Attempt(now + ctx.config.connect_timeout, user)
        ctx.wake(now)
        offer: dict[str, Any] = {"ws": ctx.url, "wrtc": ctx.config.webrtc}
        if peer_id < ctx.id and peer_id.hex() in self.budgets.refused_offers.entries:
            # We refused its offer (a budget was spent): it may be waiting for our answer and
            # ignore our offer, as the higher id answers when both ask. Ask it to answer.
            offer["unanswered"] = True
        self.router.originate(peer_id.hex(), wire.HANDSHAKE_OFFER, offer, now)

    def fail(self, peer_id: bytes, reason: str, now: float) -> None:
        """End the attempt to ``peer_id`` (if any) and back off from that peer."""
        attempt = self.attempts.pop(peer_id, None)
        if attempt is None:
            return
        if attempt.webrtc_handle is not None:
            link = self.links.by_handle.get(attempt.webrtc_handle)
            if link is not None:
                self.links.close(link, reason, now)
        if reason != "shutdown":
            # Back off from a peer that did not answer, cannot be reached or refused us.
            if reason in ("timeout", "unreachable"):
                self.candidates.remove(peer_id)
            self.undialable.put(peer_id, now + 4 * self.ctx.config.refresh_interval)
        if attempt.user:
            self.ctx.events.append(ConnectResult(peer_id, False, reason))

    def timeouts(self, now: float) -> None:
        """Fail the attempts past their deadline."""
        for peer_id, attempt in list(self.attempts.items()):
            if now >= attempt.deadline:
                self.fail(peer_id, "timeout", now)

    def linked(self, peer_id: bytes) -> None:
        """A link to ``peer_id`` opened: its attempt succeeded."""
        self.undialable.entries.pop(peer_id, None)
        attempt = self.attempts.pop(peer_id, None)
        if attempt is not None and attempt.user:
            self.ctx.events.append(ConnectResult(peer_id, True, "linked"))

    def link_gone(self, link: Link, reason: str, was_open: bool, now: float) -> None:
        """A link left: a link that never opened fails its attempt."""
        if not was_open:
            target = link.expected
            if target is not None and target in self.attempts:
                self.fail(target, reason, now)
        peer_id = link.expected or link.peer_id
        if self.rtc_by_peer.get(peer_id) == link.handle:
            del self.rtc_by_peer[peer_id]

    def expire(self, now: float) -> None:
        """Forget answers and back-offs whose time is over."""
        self.undialable.expire(now)
        self.answered.expire(now)
        self.budgets.refused_offers.expire(now)

    # ---------------------------------------------------------------- their offers and answers

    def on_offer(self, msg: Received, now: float) -> None:
        """Answer a peer that asks for a link."""
        sender, payload = msg.sender, msg.payload if msg.has_payload else None
        # An offer from a peer we think is linked is still answered: the asker has no link (its
        # close may not have reached us yet), and a duplicate link is resolved when it opens.
        ctx = self.ctx
        if not self.budgets.spend(sender.hex(), msg.via, now):
            return
        if (
            sender in self.attempts
            and sender > ctx.id
            and not (type(payload) is dict and payload.get("unanswered") is True)
        ):
            return  # Both asked at once: the peer with the higher id answers.
        if ctx.url is None and not ctx.config.webrtc and not self._dial_back(sender, payload, now):
            return
        self.answered.touch(sender, now + ctx.config.connect_timeout)
        answer = {"ws": ctx.url, "wrtc": ctx.config.webrtc}
        self.router.originate(sender.hex(), wire.HANDSHAKE_ANSWER, answer, now)
        if sender in self.attempts and self._unreachable(payload):
            # Both asked at once and we answered: our own offer gets no answer (the lower id
            # waits for ours), and this offer says already that neither can reach the other.
            self.fail(sender, "unreachable", now)

    def _unreachable(self, offer: Any) -> bool:
        """Whether an offer shows that no link can open: we cannot be dialled, it names no URL
        to dial, and WebRTC is not on at both ends."""
        ctx = self.ctx
        return (
            ctx.url is None
            and type(offer) is dict
            and not (type(offer.get("ws")) is str and wire.is_ws_url(offer["ws"]))
            and not (offer.get("wrtc") is True and ctx.config.webrtc)
        )

    def _dial_back(self, sender: bytes, payload: Any, now: float) -> bool:
        """We cannot be dialled, so dial the URL of ``sender``'s offer (if it has one); False (a
        counted drop) when we will not.

        An offer can name any address, so one is followed only to a ``ws``/``wss`` URL, once per
        sender while its answer stands, and from a peer we are connecting to (within
        ``max_dialing``) or one we would keep a link to (within half of ``max_dialing`` and
        ``max_connecting`` dials per ``connect_timeout``): nobody can make us dial hosts of its
        choosing at will, nor keep us from the links we asked for.
        """
        ctx = self.ctx
        cfg = ctx.config
        url = payload.get("ws") if type(payload) is dict else None
        if url is None:
            return True  # neither can dial the other: the answer says so
        if type(url) is not str or not wire.is_ws_url(url):
            ctx.drop("offer-bad-url", sender.hex())
            return False
        if sender in self.answered.entries:
            ctx.drop("offer-repeated", sender.hex())
            return False
        if sender in self.attempts:
            # We asked for this link ourselves: only our own dial budget applies.
            if self.links.opening() >= cfg.max_dialing:
                ctx.drop("too-many-dialing", sender.hex())
                return False
        elif not self.would_link(sender, now):
            ctx.drop("offer-unwanted", sender.hex())
            return False
        elif self.links.opening() >= cfg.max_dialing // 2 or not self.dial_backs.take(now):
            ctx.drop("too-many-dialing", sender.hex())
            # Should we ask it for a link ourselves meanwhile, we must ask for an answer.
            self.budgets.refused_offers.touch(sender.hex(), now + cfg.connect_timeout)
            return False
        self.links.dial(url, sender, now)
        return True

    def on_answer(self, msg: Received, now: float) -> None:
        """Follow the answer to our offer: dial, start WebRTC, or wait to be dialled."""
        ctx = self.ctx
        sender, payload = msg.sender, msg.payload
        attempt = self.attempts.get(sender)
        if attempt is None or sender in self.links.table:
            ctx.drop("unexpected-answer", sender.hex())
            return
        if type(payload) is not dict:
            ctx.drop("bad-data", "handshake-answer is not an object")
            return
        ws = payload.get("ws")
        if payload.get("wrtc") is True and ctx.config.webrtc:
            if attempt.webrtc_handle is None:
                # It may be linking to us already (we answered its offer before asking): then
                # this attempt waits for that link instead of crossing it with a second one.
                inbound = self.rtc_by_peer.get(sender)
                if inbound is None:
                    inbound = self.start_webrtc(sender, True, now)
                attempt.webrtc_handle = inbound
        elif type(ws) is str and ws.startswith(("ws://", "wss://")) and len(ws) < 2048:
            self.links.dial(ws, sender, now)
        elif ctx.url is not None:
            # It may dial us (it saw our URL in the offer); wait for that until timeout. A 0.0.2
            # peer (unsigned) ignores an offer's URL, but dials the URL of any answer it gets.
            if not msg.verified:
                answer = {"ws": ctx.url, "wrtc": False}
                self.router.originate(sender.hex(), wire.HANDSHAKE_ANSWER, answer, now)
        else:
            self.fail(sender, "unreachable", now)

    # ---------------------------------------------------------------- WebRTC

    def start_webrtc(self, peer_id: bytes, initiator: bool, now: float) -> int:
        """Start a WebRTC link to ``peer_id``; return its handle."""
        handle = self.links.start_webrtc(peer_id, initiator, now)
        self.rtc_by_peer[peer_id] = handle
        return handle

    def send_signal(self, handle: int, signal: Any, now: float) -> None:
        """Relay a WebRTC signal of link ``handle`` to its remote."""
        link = self.links.by_handle.get(handle)
        if link is None or link.expected is None or self.ctx.closed:
            return
        self.router.originate(link.expected.hex(), wire.SIGNAL, signal, now)

    def on_signal(self, msg: Received, now: float) -> None:
        """Hand a relayed signal to the WebRTC link it belongs to (starting one for an offer
        from a peer we answered)."""
        ctx = self.ctx
        sender, payload = msg.sender, msg.payload
        if not ctx.config.webrtc:
            ctx.drop("unexpected-signal", "webrtc is off")
            return
        kind = payload.get("type") if type(payload) is dict and "sdp" in payload else None
        handle = self.rtc_by_peer.get(sender)
        if handle is not None and kind == "offer" and sender in self.answered.entries:
            if not self._settle_second_offer(sender, handle, now):
                return
            handle = self.rtc_by_peer.get(sender)
        if handle is None:
            if sender not in self.answered.entries or sender in self.links.table:
                ctx.drop("unexpected-signal", sender.hex())
                return
            if self.links.opening() >= ctx.config.max_dialing:
                ctx.drop("too-many-dialing", sender.hex())
                return
            handle = self.start_webrtc(sender, False, now)
            attempt = self.attempts.get(sender)
            if attempt is not None and attempt.webrtc_handle is None:
                attempt.webrtc_handle = handle  # our own attempt waits for this link
        if kind in ("offer", "answer"):
            link = self.links.by_handle.get(handle)
            if link is not None and not link.rtc_described:
                # The link applies the first description only: the DTLS fingerprint in it is
                # what the remote proves its id with, so the link is as authentic as its message.
                link.rtc_described = True
                link.authenticated = msg.verified
        ctx.events.append(SignalIn(handle, payload))

    def _settle_second_offer(self, sender: bytes, handle: int, now: float) -> bool:
        """An offer from a peer that has a WebRTC link with us already: glare or a retry.
        Return False if the offer is to be dropped."""
        stale = self.links.by_handle.get(handle)
        if stale is not None and stale.outbound and stale.state == DIALING:
            # Glare: each side answered the other's handshake and started a link as the
            # initiator. The lower id's link goes on; the other side answers it instead.
            if self.ctx.id < sender:
                self.ctx.drop("webrtc-glare", sender.hex())
                return False
            attempt = self.attempts.pop(sender, None)
            self.links.close(stale, "glare", now)  # without failing the attempt: it goes on
            if attempt is not None:
                attempt.webrtc_handle = None
                self.attempts[sender] = attempt
        elif (
            stale is not None and stale.rtc_described and not stale.outbound and stale.state != OPEN
        ):
            # A second offer: the remote gave up on the attempt our link answers (its timeout
            # may be shorter than ours) and asked again. Answer it on a new link; the old one
            # would take the offer as a renegotiation and drop it.
            self.links.close(stale, "superseded", now)
        return True
