"""The bootstrap peers: dialled at the start, and again on one clock whenever this peer is cut
off.

The clock has one deadline and one back-off, armed for the most urgent of three reasons:

- ``cut-off``: no open link (the last one closed, or a bootstrap dial failed with nothing else
  open or under way): every bootstrap peer is dialled after ``bootstrap_retry`` seconds, then
  after twice that each time, up to a minute, until a link opens;
- ``rejoin`` (a refresh saw a sudden loss of links, or too few after failures, see
  :meth:`Bootstrap.rejoin`): the bootstrap peers we are not linked to, at once and then after
  ``refresh_interval`` doubling, for ``REJOIN_PERIOD`` seconds: after a partition heals, only a
  dial can cross it, and a bootstrap URL is the one address we have;
- ``island`` (a refresh found room for links and no one to dial, see :meth:`Bootstrap.reach_out`):
  the bootstrap peers we are not linked to, at once and then after ``refresh_interval``
  doubling up to ``REJOIN_PERIOD``, while that lasts.
"""

from __future__ import annotations

from collections.abc import Iterable

from .connect import Connector
from .context import Context
from .link import Link
from .links import Links

REJOIN_PERIOD = 600.0
"""Seconds during which the bootstrap peers are redialled after a sudden loss of links."""
MAX_RETRY = 60.0
"""Longest back-off between redials while cut off."""

CUT_OFF, REJOIN, ISLAND = "cut-off", "rejoin", "island"
_URGENCY = {None: 0, ISLAND: 1, REJOIN: 2, CUT_OFF: 3}


class Bootstrap:
    """Owns the bootstrap URLs, whom each led to, and the one redial clock."""

    def __init__(self, ctx: Context, links: Links, connector: Connector) -> None:
        self.ctx = ctx
        self.links = links
        self.connector = connector
        self.urls: list[str] = []
        self.ids: dict[str, bytes] = {}
        """Whom each bootstrap URL led to."""
        self.reason: str | None = None
        """Why the clock runs: ``cut-off``, ``rejoin``, ``island``, or None."""
        self.due = float("inf")
        """When the bootstrap peers are dialled next."""
        self.delay = 0.0
        """The back-off after that dial."""
        self.rejoin_until = float("-inf")
        self.closed_before = 0
        self.refreshed_at = float("-inf")

    def start(self, urls: Iterable[str], now: float) -> None:
        """Dial these URLs now, and again whenever this peer is cut off."""
        self.urls = list(urls)
        self.ids.clear()
        for url in self.urls:
            self.links.dial(url, None, now)

    def _arm(self, reason: str, due: float, delay: float) -> None:
        """Run the clock for ``reason`` unless a more urgent reason already runs it."""
        if _URGENCY[reason] < _URGENCY[self.reason]:
            return
        if reason == self.reason and reason != ISLAND:
            return  # already on it, backing off
        self.reason, self.due, self.delay = reason, due, delay
        ctx = self.ctx
        ctx.next_tick = min(ctx.next_tick, due)

    def _stop(self) -> None:
        self.reason, self.due, self.delay = None, float("inf"), 0.0

    def linked(self, link: Link, now: float) -> None:
        """A link opened: we are not cut off (a rejoin window still open goes on)."""
        if link.url is not None and link.url in self.urls:
            self.ids[link.url] = link.peer_id
        if self.reason == CUT_OFF:
            self._stop()
            if now < self.rejoin_until:
                interval = self.ctx.config.refresh_interval
                self._arm(REJOIN, now + interval, interval)

    def link_gone(self, link: Link, was_open: bool, now: float) -> None:
        """A link left: the last open one, or a failed bootstrap dial with nothing else open
        or under way, cuts us off."""
        if not self.urls or self.ctx.closed or self.links.open:
            return
        if was_open or (link.url in self.urls and not self.links.pending()):
            retry = self.ctx.config.bootstrap_retry
            self._arm(CUT_OFF, now + retry, retry)

    def tick(self, now: float) -> None:
        """Dial if the clock says so, and back off."""
        if now < self.due:
            return
        reason = self.reason
        if reason == CUT_OFF:
            if self.links.open:
                self._stop()
                return
            self._dial_unlinked(now)
            self.delay = min(self.delay * 2, MAX_RETRY)
            self.due = now + self.delay
        elif reason == REJOIN:
            if now >= self.rejoin_until:
                self._stop()
                return
            self._dial_unlinked(now)
            self.due = now + self.delay
            self.delay *= 2
        elif reason == ISLAND:
            if not self._on_island():
                self._stop()
                return
            self._dial_unlinked(now)
            self.due = now + self.delay
            self.delay = min(2 * self.delay, REJOIN_PERIOD)
        else:
            self.due = float("inf")

    def _dial_unlinked(self, now: float) -> None:
        table = self.links.table
        for url in self.urls:
            known = self.ids.get(url)
            if known is None or known not in table:
                self.links.dial(url, None, now)

    def rejoin(self, now: float) -> None:
        """Start a rejoin window when a refresh finds this peer cut off from part of the
        network.

        Signs, with attempts to other peers failing since the last refresh: a third of our links
        closed at once (a partition: once it heals, nothing on our side links to the other,
        routing cannot cross, only a dial can), or fewer links than near neighbours wanted
        (newcomers that linked only to each other, say, when their bootstrap peer let them go).
        """
        cfg = self.ctx.config
        closed = self.ctx.stats.links_closed
        lost = closed - self.closed_before
        self.closed_before = closed
        since = self.refreshed_at
        self.refreshed_at = now
        count = len(self.links.open)
        if not self.urls or now < self.rejoin_until or not count:
            return
        if count < cfg.near_count or (lost >= 3 and 3 * lost >= count + lost):
            # Attempts that failed since the last refresh carry an expiry past this threshold.
            threshold = since + 4 * cfg.refresh_interval
            failed = 0
            for until in reversed(self.connector.undialable.entries.values()):
                if until <= threshold:
                    break
                failed += 1
            if failed >= 2 or (count < cfg.near_count and failed + lost >= 1):
                self.rejoin_until = now + REJOIN_PERIOD
                self._arm(REJOIN, now, cfg.refresh_interval)
                self.tick(now)

    def reach_out(self, now: float) -> None:
        """Reach out to the bootstrap peers while on an island: room for links and no one known
        to dial. Newcomers whose bootstrap peer let them go before they learnt anyone else can
        end up linked only to each other: their lookups then ask only each other, and greedy
        routing from outside never finds them. (A network that small is all linked already.)"""
        if self.reason is None and self._on_island():
            self._arm(ISLAND, now, self.ctx.config.refresh_interval)
            self.tick(now)

    def _on_island(self) -> bool:
        cfg = self.ctx.config
        connector = self.connector
        if not self.urls or not self.links.open or connector.attempts:
            return False
        # Room for links: fewer than the population fills by itself, and (with a small link
        # budget, where spare links leave little) no more than our nearest neighbours.
        if len(self.links.open) >= max(cfg.max_links - cfg.spare_links, cfg.near_count + 1):
            return False
        return not any(connector.dialable(peer_id) for peer_id in connector.candidates)
