"""Hop-by-hop confirmation of user messages: a ping follows them, a pong vouches for them.

Links are ordered streams, so a pong vouches for everything sent before its ping. One ping is out
per link at a time; messages sent meanwhile wait for the next one. Only our peers answer pings
(0.0.2 would take one for a malformed envelope), so only links whose remote proved its key are
confirmed. A link whose remote does not answer within ``confirm_timeout`` is taken for dead: the
owner closes it and re-routes what it held (see :meth:`Confirmation.overdue`).
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..wire import WireError
from .context import Context
from .link import OPEN, Link


class Confirmation:
    """Keeps each link's unconfirmed user messages (on the link itself) and its pings."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def track(self, link: Link, frame: bytes, now: float) -> None:
        """Keep a user message just sent on ``link`` until a ping sent after it comes back.

        At most ``max_unconfirmed`` messages and ``max_frame`` bytes are kept per link.
        """
        cfg = self.ctx.config
        if not link.authenticated or link.state != OPEN or not cfg.max_unconfirmed:
            return
        if link.ping_due == float("inf"):
            link.awaiting.append(frame)
            link.held = len(frame)
            self._ping(link, now)
        elif (
            len(link.awaiting) + len(link.pending) < cfg.max_unconfirmed
            and link.held + len(frame) <= cfg.max_frame
        ):
            link.pending.append(frame)
            link.held += len(frame)

    def control(self, link: Link, obj: dict[str, Any], now: float) -> None:
        """A ping or pong of ours on an open link; raise WireError if it is not one."""
        if not link.authenticated:
            raise WireError("not-envelope", "link control from a peer that is not ours")
        kind, number = wire.parse_link_control(obj)
        if kind == "ping":
            self.ctx.send(link.handle, wire.link_control_frame("pong", number))
        elif number == link.ping_seq and link.ping_due != float("inf"):
            link.awaiting, link.pending = link.pending, []
            link.held = sum(len(frame) for frame in link.awaiting)
            if link.awaiting:
                self._ping(link, now)
            else:
                link.ping_due = float("inf")

    def _ping(self, link: Link, now: float) -> None:
        ctx = self.ctx
        link.ping_seq += 1
        link.ping_due = now + ctx.config.confirm_timeout
        ctx.wake(now)
        ctx.send(link.handle, wire.link_control_frame("ping", link.ping_seq))

    @staticmethod
    def overdue(link: Link, now: float) -> bool:
        """Whether ``link``'s remote failed to answer a ping in time."""
        return link.ping_due <= now and link.state == OPEN

    @staticmethod
    def unconfirmed(link: Link) -> list[bytes]:
        """The messages ``link`` holds that its remote has not confirmed (open links only)."""
        return link.awaiting + link.pending if link.state == OPEN else []
