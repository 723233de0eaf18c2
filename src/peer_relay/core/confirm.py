"""Hop-by-hop confirmation of user messages: a ping follows them, a pong vouches for them.

Links are ordered streams, so a pong vouches for everything sent before its ping. Pings are
coalesced: one goes ``confirm_delay`` after the first message it covers (at once when half of
``max_unconfirmed`` waits), and one is out per link at a time; messages sent meanwhile wait for
the next one. Pongs go at once. Only our peers answer pings (0.0.2 would take one for a
malformed envelope), so only links whose remote proved its key are confirmed. A link whose
remote does not answer within ``confirm_timeout`` is taken for dead: the owner closes it and
re-routes what it held (see :meth:`Confirmation.tick`), unless our own host was the one late.
"""

from __future__ import annotations

from typing import Any, Final

from .. import wire
from ..wire import WireError
from .context import Context
from .link import OPEN, Link

INF: Final = float("inf")


class Confirmation:
    """Keeps each link's unconfirmed user messages (on the link itself) and its pings."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def track(self, link: Link, frame: bytes, now: float) -> None:
        """Keep a user message just sent on ``link`` until a ping sent after it comes back.

        At most ``max_unconfirmed`` messages and ``max_frame`` bytes are kept per link (the
        first always); the ping goes by ``now + confirm_delay``, or when the outstanding one
        comes back.
        """
        cfg = self.ctx.config
        if not link.authenticated or link.state != OPEN or not cfg.max_unconfirmed:
            return
        pending = link.pending
        if (link.awaiting or pending) and (
            len(link.awaiting) + len(pending) >= cfg.max_unconfirmed
            or link.held + len(frame) > cfg.max_frame
        ):
            return
        if not pending:
            link.ping_at = now + cfg.confirm_delay
        pending.append(frame)
        link.held += len(frame)
        if link.ping_due == INF:
            if self._ready(link, now):
                self._ping(link, now)
            elif len(pending) == 1:
                self.ctx.wake_at(link.ping_at)

    def control(self, link: Link, obj: dict[str, Any], now: float) -> None:
        """A ping or pong of ours on an open link; raise WireError if it is not one."""
        if not link.authenticated:
            raise WireError("not-envelope", "link control from a peer that is not ours")
        kind, number = wire.parse_link_control(obj)
        if kind == "ping":
            self.ctx.send(link.handle, wire.link_control_frame("pong", number))
        elif number == link.ping_seq and link.ping_due != INF:
            link.ping_due = INF
            link.awaiting = []
            link.held = sum(len(frame) for frame in link.pending)
            if link.pending:
                if self._ready(link, now):
                    self._ping(link, now)
                else:
                    self.ctx.wake_at(link.ping_at)

    def tick(self, link: Link, now: float, stalled: bool) -> bool:
        """Send ``link``'s ping if it is due; return whether its remote failed to answer one in
        time (the owner then closes the link).

        ``stalled``: the host ran this tick late (it was blocked), and the answer may be
        waiting unread in its sockets. A ping found overdue then gets ``confirm_timeout / 2``
        more, once, before it counts.
        """
        if link.state != OPEN:
            return False
        if link.ping_due != INF:
            if link.ping_due > now:
                return False
            if stalled and not link.ping_graced:
                link.ping_graced = True
                link.ping_due = now + self.ctx.config.confirm_timeout / 2
                self.ctx.wake_at(link.ping_due)
                return False
            return True
        if link.ping_at <= now:
            self._ping(link, now)
        elif link.ping_at != INF:
            self.ctx.wake_at(link.ping_at)
        return False

    def _ready(self, link: Link, now: float) -> bool:
        """Whether the messages waiting for ``link``'s next ping should have it now."""
        cfg = self.ctx.config
        return (
            link.ping_at <= now
            or 2 * len(link.pending) >= cfg.max_unconfirmed
            or 2 * link.held >= cfg.max_frame
        )

    def _ping(self, link: Link, now: float) -> None:
        ctx = self.ctx
        link.awaiting, link.pending = link.pending, []
        link.ping_at = INF
        link.ping_seq += 1
        link.ping_due = now + ctx.config.confirm_timeout
        link.ping_graced = False
        ctx.wake(now)
        ctx.send(link.handle, wire.link_control_frame("ping", link.ping_seq))

    @staticmethod
    def unconfirmed(link: Link) -> list[bytes]:
        """The messages ``link`` holds that its remote has not confirmed (open links only)."""
        return link.awaiting + link.pending if link.state == OPEN else []
