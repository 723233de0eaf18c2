"""Delivery over sessions: messages, receipts, requests and replies, and their retransmission.

What travels inside a session is one message per envelope: a kind byte, its own id (8 bytes, 0
where it needs none), the id it refers to (8 bytes, 0 where none) and a body, JSON or text:

- ``DATA``: ``send()``'s fire-and-forget data.
- ``DELIVER``: data that wants a ``RECEIPT`` back. ``REQUEST``: data for the request handler,
  answered by a ``RECEIPT`` at once and later by a ``REPLY`` (JSON) or a ``FAULT`` (the
  handler's error, as text), which want receipts of their own.

A message that wants a receipt and gets none within the retransmission timeout (RFC 6298's, from
the round trips measured to that peer, doubling on each miss) is sent again under a new nonce
over a first hop it has not taken yet, so a relay that swallows messages is routed around; its
destination delivers it at most once (duplicates within ``seen_ttl`` get only a receipt), so a
message is sent again only within half of ``seen_ttl`` of its first sending. Past its own
timeout it fails with a reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..events import Delivered, DeliveryResult, Reply, RequestReceived
from ..ids import short
from ..wire import WireError
from .bounded import BoundedMap
from .context import Context

DATA = 1
DELIVER = 2
REQUEST = 3
REPLY = 4
FAULT = 5
RECEIPT = 6
_KNOWN = frozenset((DATA, DELIVER, REQUEST, REPLY, FAULT, RECEIPT))
HEADER = 17
MIN_RTO = 0.2
MAX_RTO = 8.0
BACKOFF = 1.5
"""How much longer each wait for a receipt is than the last (RFC 6298 doubles it; a resend
here takes another way, so a loss says more about a path than about congestion)."""

Seal = Callable[[str, bytes, float, tuple[str, ...], bool], "str | None"]
"""``seal(to_hex, inner, now, avoid, only_new) -> first hop``: send a message through the
peer's session (None: it waits for the session, or has no route; or, ``only_new``, there is
no first hop left that ``avoid`` does not name, and it was not sent)."""
Withdraw = Callable[[str, bytes, float], None]
"""``withdraw(to_hex, inner, now)``: forget a message that still waits for its session."""


_HEADER = struct.Struct(">BQQ")
_IDS = struct.Struct(">QQ")


def inner(kind: int, msg_id: int, ref: int, body: bytes) -> bytes:
    """One message as it travels inside a session."""
    return _HEADER.pack(kind, msg_id, ref) + body


@dataclass(slots=True)
class Outgoing:
    """A message of ours waiting for its receipt (or, for a request, its reply)."""

    to_hex: str
    kind: int
    msg_id: int
    frame: bytes
    deadline: float
    until: float
    """No sending again after this (the destination's duplicate filter would forget it)."""
    started: float = 0.0
    due: float = float("inf")
    """When to send it again; infinite while it waits for a session or once received."""
    first_sent: float = -1.0
    tries: int = 0
    rto: float = 0.0
    hops: list[str] = field(default_factory=list)
    acked: bool = False
    why: str = ""
    """What went wrong last, for the failure's message."""


class Delivery:
    """Owns the messages in flight, the round-trip estimates and the incoming duplicates."""

    def __init__(self, ctx: Context, seal: Seal, withdraw: Withdraw) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self._seal = seal
        self._withdraw = withdraw
        self.outgoing: dict[int, Outgoing] = {}
        self.rtt: BoundedMap[str, tuple[float, float]] = BoundedMap(cfg.max_budgets)
        """Smoothed round trip and its variation to each peer (RFC 6298)."""
        self.seen: BoundedMap[tuple[str, int], tuple[float, list[str]]] = BoundedMap(
            cfg.max_seen, _first
        )
        """Messages that wanted a receipt, received within ``seen_ttl``: delivered once. With
        each, the first hops its receipts took: a copy that comes again (its receipt was
        lost) has its receipt sent another way."""
        self.requests: dict[int, tuple[str, int]] = {}
        """Requests given to the application and not answered yet: token -> (sender, id)."""
        self._next_token = 1
        self._replies = 0
        """Replies among ``outgoing``: they have their own bound (``max_requests``), so that
        the requests of remote peers never hold the slots of our own deliveries."""

    # ------------------------------------------------------------------ from the application

    def send(self, to_hex: str, body: bytes, now: float) -> None:
        """Fire and forget."""
        self._seal(to_hex, inner(DATA, 0, 0, body), now, (), False)

    def start(self, to_hex: str, kind: int, body: bytes, now: float, timeout: float) -> int:
        """Send a message that wants a receipt (``DELIVER``, ``REQUEST``); its token."""
        ctx = self.ctx
        ours = len(self.outgoing) - self._replies
        if ours >= ctx.config.max_deliveries:
            raise RuntimeError(
                f"{ours} deliveries and requests are already waiting for their "
                "receipt (max_deliveries): wait for some to finish, or raise the limit"
            )
        msg_id = self.new_id()
        out = Outgoing(
            to_hex,
            kind,
            msg_id,
            inner(kind, msg_id, 0, body),
            now + timeout,
            now + min(timeout, ctx.config.seen_ttl / 2),
            now,
        )
        self.outgoing[msg_id] = out
        ctx.wake_at(out.deadline)
        self._seal(to_hex, out.frame, now, (), False)
        return msg_id

    def answer(self, token: int, value: bytes | None, error: str | None, now: float) -> bool:
        """Send the reply to request ``token`` (``value``, JSON) or its failure (``error``);
        False if the token is unknown (answered already, or never given)."""
        asked = self.requests.pop(token, None)
        if asked is None:
            return False
        sender_hex, ref = asked
        if sender_hex == self.ctx.hex:
            self._replied(ref, None if value is None else self._read(value, sender_hex), error)
            return True
        kind, body = (REPLY, value) if error is None else (FAULT, error.encode())
        assert body is not None
        msg_id = self.new_id()
        cfg = self.ctx.config
        frame = inner(kind, msg_id, ref, body)
        if self._replies >= cfg.max_requests:
            # As many replies wait for their receipts as requests may wait for the handler
            # (a requester that never confirms must not grow this): sent once, not kept.
            self.ctx.drop("reply-not-kept", sender_hex)
            self._seal(sender_hex, frame, now, (), False)
            return True
        ttl = cfg.seen_ttl / 2
        self.outgoing[msg_id] = Outgoing(sender_hex, kind, msg_id, frame, now + ttl, now + ttl)
        self._replies += 1
        self._seal(sender_hex, frame, now, (), False)
        return True

    def _forget(self, msg_id: int) -> Outgoing:
        """Take a message out of ``outgoing``."""
        out = self.outgoing.pop(msg_id)
        if out.kind in (REPLY, FAULT):
            self._replies -= 1
        return out

    def ask_self(self, body: Any, now: float, timeout: float) -> int:
        """A request to our own id: handed to our own handler, its reply comes straight back."""
        token = self._take_token()
        msg_id = self.new_id()
        out = Outgoing(self.ctx.hex, REQUEST, msg_id, b"", now + timeout, now)
        out.acked = True
        self.outgoing[msg_id] = out
        self.ctx.wake_at(out.deadline)
        self.requests[token] = (self.ctx.hex, msg_id)
        self.ctx.events.append(RequestReceived(token, body, self.ctx.id, 0))
        return msg_id

    def new_id(self) -> int:
        """A fresh message id (the token the application gets)."""
        rng = self.ctx.rng
        msg_id = rng.getrandbits(64) or 1
        while msg_id in self.outgoing:
            msg_id = rng.getrandbits(64) or 1
        return msg_id

    def _take_token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    # ------------------------------------------------------------------ from sessions

    def sent(self, to_hex: str, frame: bytes, hop: str | None, now: float) -> None:
        """A message went out (``hop``: its first hop, None if there was no route)."""
        if frame[0] in (DATA, RECEIPT):
            return
        out = self.outgoing.get(int.from_bytes(frame[1:9], "big"))
        if out is None or out.acked:
            return
        if out.first_sent < 0:
            out.first_sent = now
            out.rto = self._rto(to_hex)
        elif out.due <= now or out.due == float("inf"):
            out.rto = min(out.rto * BACKOFF, MAX_RTO)
        out.tries += 1
        if hop is not None:
            out.hops.append(hop)
        else:
            out.why = "no route"
        out.due = now + out.rto
        self.ctx.wake_at(out.due)

    def failed(self, to_hex: str, frame: bytes, reason: str, now: float) -> None:
        """A message could not be sent (no session): try again later, within its time."""
        if frame[0] in (DATA, RECEIPT):
            self.ctx.drop(reason, to_hex)
            return
        out = self.outgoing.get(int.from_bytes(frame[1:9], "big"))
        if out is None:
            return
        out.why = _explain(reason, to_hex)
        out.due = now + max(out.rto, self.ctx.config.initial_rto)
        self.ctx.wake_at(out.due)

    def received(self, sender_hex: str, frame: bytes, hops: int, now: float) -> None:
        """A message came out of a session (so it is from ``sender_hex`` and unaltered)."""
        ctx = self.ctx
        kind = frame[0] if frame else 0
        if len(frame) < HEADER or kind not in _KNOWN:
            ctx.drop("bad-inner", sender_hex)
            return
        msg_id, ref = _IDS.unpack_from(frame, 1)
        body = frame[HEADER:]
        if kind == RECEIPT:
            self._receipt(sender_hex, ref, now)
            return
        if kind == DATA:
            data = self._read(body, sender_hex)
            if data is not _BAD:
                ctx.stats.delivered += 1
                ctx.events.append(Delivered(data, bytes.fromhex(sender_hex), True, hops))
            return
        key = (sender_hex, msg_id)
        seen = self.seen.entries.get(key)
        receipt = inner(RECEIPT, 0, msg_id, b"")
        if seen is not None:
            ctx.drop("duplicate", sender_hex)
            hop = self._seal(sender_hex, receipt, now, tuple(seen[1]), False)
            if hop is not None:
                seen[1].append(hop)
            return
        hop = self._seal(sender_hex, receipt, now, (), False)
        self.seen.put(key, (now + ctx.config.seen_ttl, [] if hop is None else [hop]))
        sender = bytes.fromhex(sender_hex)
        if kind == FAULT:
            self._replied(ref, None, body.decode("utf-8", "replace")[:1000], sender_hex)
            return
        data = self._read(body, sender_hex)
        if data is _BAD:
            return
        if kind == DELIVER:
            ctx.stats.delivered += 1
            ctx.events.append(Delivered(data, sender, True, hops))
        elif kind == REPLY:
            self._replied(ref, data, None, sender_hex)
        elif len(self.requests) >= ctx.config.max_requests:
            ctx.drop("requests-full", sender_hex)
            self.requests[0] = (sender_hex, msg_id)
            self.answer(0, None, "busy: too many requests are waiting for their handler", now)
        else:
            token = self._take_token()
            self.requests[token] = (sender_hex, msg_id)
            ctx.events.append(RequestReceived(token, data, sender, hops))

    def _read(self, body: bytes, sender_hex: str) -> Any:
        try:
            return wire.loads_data(body, self.ctx.config.max_frame)
        except WireError as exc:
            self.ctx.drop(exc.reason, sender_hex)
            return _BAD

    def _receipt(self, sender_hex: str, ref: int, now: float) -> None:
        out = self.outgoing.get(ref)
        if out is None or out.to_hex != sender_hex:
            self.ctx.drop("stale-receipt", sender_hex)
            return
        if out.tries == 1 and not out.acked:
            self._sample(sender_hex, now - out.first_sent)
        if out.kind == REQUEST:
            out.acked = True
            out.due = float("inf")
            return
        self._forget(ref)
        if out.kind == DELIVER:
            self.ctx.events.append(DeliveryResult(ref, True, ""))

    def _replied(
        self, ref: int, value: Any, error: str | None, sender_hex: str | None = None
    ) -> None:
        out = self.outgoing.get(ref)
        if out is None or out.kind != REQUEST or (sender_hex and out.to_hex != sender_hex):
            self.ctx.drop("stale-reply", sender_hex or "")
            return
        self._forget(ref)
        self.ctx.events.append(Reply(ref, error is None, value, error or "", remote=True))

    # ------------------------------------------------------------------ time

    def _rto(self, peer_hex: str) -> float:
        est = self.rtt.entries.get(peer_hex)
        if est is None:
            return self.ctx.config.initial_rto
        srtt, rttvar = est
        return min(max(srtt + 4 * rttvar, MIN_RTO), MAX_RTO)

    def _sample(self, peer_hex: str, rtt: float) -> None:
        est = self.rtt.entries.get(peer_hex)
        if est is None:
            self.rtt.touch(peer_hex, (rtt, rtt / 2))
        else:
            srtt, rttvar = est
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - rtt)
            self.rtt.touch(peer_hex, (0.875 * srtt + 0.125 * rtt, rttvar))

    def expire(self, now: float) -> None:
        """Send again what got no receipt in time; fail what ran out of time."""
        self.seen.expire(now)
        for msg_id, out in list(self.outgoing.items()):
            if out.deadline <= now:
                self._forget(msg_id)
                self._give_up(out, now)
            elif out.due <= now:
                out.due = float("inf")
                if now >= out.until:
                    continue
                # A first hop not tried yet (all tried: any but the last one); from the third
                # sending on, two at once: a bad relay next to the destination is on many ways.
                hop = self._seal(out.to_hex, out.frame, now, tuple(out.hops), False)
                if hop is not None and out.tries >= 2:
                    # Another first hop not tried yet too: a bad relay next to the destination
                    # lies on many ways.
                    self._seal(out.to_hex, out.frame, now, (*out.hops, hop), True)

    def _give_up(self, out: Outgoing, now: float) -> None:
        ctx = self.ctx
        self._withdraw(out.to_hex, out.frame, now)
        who = short(out.to_hex)
        if out.kind in (REPLY, FAULT):
            ctx.drop("reply-lost", out.to_hex)
            return
        if out.acked:
            why = f"{who} received the request but did not reply in time"
        elif out.why:
            why = out.why
        elif out.tries:
            firsts = len(set(out.hops))
            why = f"no receipt from {who} after {out.tries} attempt(s) over {firsts} first hop(s)"
        else:
            why = (
                f"{who} did not answer within {out.deadline - out.started:g} s: no session "
                "(it may be offline, unreachable, or a peer-relay 0.0.2 node, which has none)"
            )
        ctx.drop("undelivered", out.to_hex)
        if out.kind == DELIVER:
            ctx.events.append(DeliveryResult(out.msg_id, False, why))
        else:
            ctx.events.append(Reply(out.msg_id, False, None, why, remote=False))

    def close(self) -> None:
        """Fail everything still waiting: the peer closes."""
        ctx = self.ctx
        for out in self.outgoing.values():
            if out.kind == DELIVER:
                ctx.events.append(
                    DeliveryResult(
                        out.msg_id, False, "this peer was destroyed before an answer came"
                    )
                )
            elif out.kind == REQUEST:
                ctx.events.append(
                    Reply(
                        out.msg_id,
                        False,
                        None,
                        "this peer was destroyed before an answer came",
                        False,
                    )
                )
        self.outgoing.clear()
        self._replies = 0
        self.requests.clear()

    def next_due(self) -> float | None:
        """The earliest resend or deadline."""
        return min((min(out.due, out.deadline) for out in self.outgoing.values()), default=None)

    def sizes(self) -> dict[str, int]:
        """Sizes for the bounds read-out."""
        return {
            "deliveries": len(self.outgoing),
            "requests_in": len(self.requests),
            "delivered_ids": len(self.seen),
        }


_BAD = object()


def _first(entry: tuple[float, list[str]]) -> float:
    return entry[0]


def _explain(reason: str, to_hex: str) -> str:
    who = short(to_hex)
    if reason == "no-key":
        return (
            f"{who} did not answer (it may be offline, unreachable, or a peer-relay 0.0.2 node, "
            "which has no sessions)"
        )
    if reason == "no-session":
        return f"{who} did not answer the session handshake (offline or unreachable)"
    if reason == "session-queue-full":
        return f"too many messages wait for a session with {who} (max_session_queue)"
    return f"{reason} ({who})"
