"""Direct paths: a peer we exchange many messages with through relays gets a direct link.

Every message of the application to or from a peer is counted; once ``direct_after`` of them
fell within ``direct_window`` seconds while no link to that peer exists, a connection attempt
starts in the background, as any other (a relayed offer; WebRTC when both do it, else a dial of
whichever end listens). Messages keep taking the relayed path until the link opens, so an
upgrade that fails costs nothing but its offer; the peer is then left alone for a while like any
undialable peer, and tried again if the traffic goes on.

A busy peer's link is kept by the population: it gives way last when room is needed, and a
busy newcomer may take the place of a link that carries no such traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bounded import BoundedMap
from .connect import Connector
from .context import Context
from .links import Links

BUSY_FOR = 2.0
"""A peer stays busy this many ``direct_window`` after its last counted message."""


@dataclass(slots=True)
class Tally:
    """Messages exchanged with one peer in the current window."""

    start: float
    count: int
    busy_until: float


class DirectPaths:
    """Counts the application's messages per peer and asks for direct links to busy peers."""

    def __init__(self, ctx: Context, links: Links, connector: Connector) -> None:
        self.ctx = ctx
        self.links = links
        self.connector = connector
        limit = max(1, ctx.config.max_sessions)
        window = ctx.config.direct_window
        self.tallies: BoundedMap[bytes, Tally] = BoundedMap(
            limit, lambda t: max(t.busy_until, t.start + window)
        )
        """Peer -> its tally; the least recently active go first (``max_sessions`` at most)."""
        self.upgrades = 0
        """Attempts started because of traffic (for stats and tests)."""

    def note(self, peer_id: bytes, now: float) -> None:
        """One message of the application went to or came from ``peer_id``."""
        cfg = self.ctx.config
        after = cfg.direct_after
        if after <= 0 or peer_id == self.ctx.id:
            return
        window = cfg.direct_window
        tally = self.tallies.entries.get(peer_id)
        if tally is None:
            tally = Tally(now, 0, 0.0)
        elif now - tally.start > window:
            tally = Tally(now, 0, tally.busy_until)  # busy until then still: traffic goes on
        tally.count += 1
        tally.busy_until = now + BUSY_FOR * window if tally.count >= after else tally.busy_until
        self.tallies.touch(peer_id, tally)
        if tally.count < after or peer_id in self.links.table:
            return
        connector = self.connector
        if (
            connector.dialable(peer_id)
            and len(connector.attempts) < max(cfg.max_connecting, 1)
            and connector.would_link(peer_id, now)
        ):
            self.upgrades += 1
            connector.start(peer_id, now, user=False)

    def busy(self, peer_id: bytes, now: float) -> bool:
        """Whether ``peer_id`` carried ``direct_after`` of our messages lately."""
        tally = self.tallies.entries.get(peer_id)
        return tally is not None and tally.busy_until > now

    def expire(self, now: float) -> None:
        """Forget peers that are no longer busy (in order of their last activity)."""
        self.tallies.expire(now)
