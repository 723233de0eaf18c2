"""The bootstrap peers: dialled at the start, and again when this peer is cut off.

Three signs make a peer redial its bootstrap URLs, each on its own back-off:

- it lost every link (:meth:`Bootstrap.lost_all`): from ``bootstrap_retry`` seconds, doubling;
- a refresh finds it cut off (:meth:`Bootstrap.rejoin`): the first dial failed, or a sudden loss
  of links, or too few links after failures; for ``REJOIN_PERIOD`` seconds;
- a refresh finds it on an island (:meth:`Bootstrap.reach_out`): room for links and no one known
  to dial; only the bootstrap peers it is not linked to.
"""

from __future__ import annotations

from collections.abc import Iterable

from .connect import Connector
from .context import Context
from .link import Link
from .links import Links

REJOIN_PERIOD = 600.0
"""Seconds during which the bootstrap peers are redialled after a sudden loss of links."""


class Bootstrap:
    """Owns the bootstrap URLs, whom each led to, and the three redial clocks."""

    def __init__(self, ctx: Context, links: Links, connector: Connector) -> None:
        self.ctx = ctx
        self.links = links
        self.connector = connector
        self.urls: list[str] = []
        self.ids: dict[str, bytes] = {}
        """Whom each bootstrap URL led to."""
        self.at = float("inf")
        """When to redial after losing every link."""
        self.delay = ctx.config.bootstrap_retry
        self.rejoin_until = float("-inf")
        self.rejoin_at = float("-inf")
        self.rejoin_delay = 0.0
        self.closed_before = 0
        self.refreshed_at = float("-inf")
        self.island_at = float("-inf")
        self.island_delay = 0.0

    def start(self, urls: Iterable[str], now: float) -> None:
        """Dial these URLs now, and again whenever every link is lost."""
        self.urls = list(urls)
        self.ids.clear()
        self._dial_all(now)

    def _dial_all(self, now: float) -> None:
        for url in self.urls:
            self.links.dial(url, None, now)

    def linked(self, link: Link) -> None:
        """A link opened: we are not cut off."""
        if link.url is not None and link.url in self.urls:
            self.ids[link.url] = link.peer_id
        self.at = float("inf")
        self.delay = self.ctx.config.bootstrap_retry

    def lost_all(self, now: float) -> None:
        """The last open link closed: redial the bootstrap peers after a delay."""
        ctx = self.ctx
        if not self.links.open and self.urls and not ctx.closed:
            self.at = min(self.at, now + self.delay)
            ctx.next_tick = min(ctx.next_tick, self.at)

    def tick(self, now: float) -> None:
        """Redial if it is time (and still no link), backing off."""
        if now < self.at:
            return
        self.at = float("inf")
        if self.links.open or self.ctx.closed:
            return
        self._dial_all(now)
        self.delay = min(self.delay * 2, 60.0)
        self.at = now + self.delay

    def rejoin(self, now: float) -> None:
        """Redial the bootstrap peers, backing off, for a while when cut off.

        Signs: no link and no dial under way (the bootstrap dial failed); or, with attempts to
        other peers timing out since the last refresh, a third of our links closed at once (a
        partition: once it heals, nothing on our side links to the other, routing cannot
        cross, only a dial can, and a bootstrap URL is the one address we have), or fewer links
        than near neighbours wanted (newcomers that linked only to each other, say, when their
        bootstrap peer let them go).
        """
        cfg = self.ctx.config
        closed = self.ctx.stats.links_closed
        lost = closed - self.closed_before
        self.closed_before = closed
        since = self.refreshed_at
        self.refreshed_at = now
        count = len(self.links.open)
        if not self.urls or now < self.rejoin_until:
            start = False
        elif not count and not self.links.pending():
            # No link, and none coming: the bootstrap dial failed (the redial after losing
            # every link only follows a link that was open).
            start = True
        elif count < cfg.near_count or (lost >= 3 and 3 * lost >= count + lost):
            # Attempts that failed since the last refresh carry an expiry past this threshold.
            threshold = since + 4 * cfg.refresh_interval
            failed = 0
            for until in reversed(self.connector.undialable.entries.values()):
                if until <= threshold:
                    break
                failed += 1
            # Under-linked after a loss or a failure: a newcomer whose bootstrap peer let it go
            # before it learnt anyone (its lookups then have nobody to ask).
            start = failed >= 2 or (count < cfg.near_count and failed + lost >= 1)
        else:
            start = False
        if start:
            self.rejoin_until = now + REJOIN_PERIOD
            self.rejoin_at = now
            self.rejoin_delay = cfg.refresh_interval
        if now < self.rejoin_until and now >= self.rejoin_at:
            self.rejoin_at = now + self.rejoin_delay
            self.rejoin_delay *= 2
            self._dial_all(now)

    def reach_out(self, now: float) -> None:
        """Redial the bootstrap peers we are not linked to, backing off, while on an island.

        The sign: we have room for links and know no one we could dial. Newcomers whose
        bootstrap peer let them go before they learnt anyone else can end up linked only to
        each other: their lookups then ask only each other, and greedy routing from outside
        never finds them. (A network that small is all linked already: nothing to dial.)
        """
        cfg = self.ctx.config
        connector = self.connector
        if not self.urls or not self.links.open or connector.attempts:
            return
        if len(self.links.open) >= cfg.max_links - cfg.spare_links or any(
            connector.dialable(peer_id) for peer_id in connector.candidates
        ):
            self.island_delay = 0.0
            return
        if now < self.island_at:
            return
        self.island_delay = min(2 * self.island_delay or cfg.refresh_interval, REJOIN_PERIOD)
        self.island_at = now + self.island_delay
        for url in self.urls:
            known = self.ids.get(url)
            if known is None or known not in self.links.table:
                self.links.dial(url, None, now)
