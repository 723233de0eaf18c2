"""Population: which links a peer wants, which it gives up for a newcomer, and its periodic
discovery. One class per strategy.

- :class:`Spread` (ours, Kademlia-style): the nearest neighbours, then one link in every bucket
  it knows peers in, then a second link in half-covered far buckets; full peers evict the most
  crowded link; lookups by messages; repairs when cut off.
- :class:`Original` (0.0.2's): link to the 15 ids nearest our own while there is room; never
  evict; ask the nearest link about our neighbourhood at each refresh.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import ClassVar

from ..ids import bucket_index
from .bootstrap import Bootstrap
from .config import Config
from .connect import Connector
from .context import Context
from .discovery import Discovery
from .link import Link
from .links import Links
from .routing import Router

NEAR_MARGIN = 1
"""Buckets past the farthest near link still counted as our neighbourhood by eviction."""
QUIET_ROUNDS = 4
"""While the near links stay the same, a lookup round runs every this many refreshes."""
QUICK_SHARE = 8
"""While its near links change, a peer refreshes every ``refresh_interval / QUICK_SHARE``
seconds, and twice as long after each refresh that leaves them as they were."""


class Population:
    """What both strategies share: starting the attempts a strategy wants."""

    lists_candidates: ClassVar[bool] = False
    """Whether findPeers is answered with candidates too (see :class:`Discovery`)."""
    lookups: ClassVar[bool] = True
    """Whether foundPeers answers lead to further questions."""

    def __init__(
        self,
        ctx: Context,
        links: Links,
        router: Router,
        discovery: Discovery,
        connector: Connector,
        bootstrap: Bootstrap,
    ) -> None:
        self.ctx = ctx
        self.links = links
        self.router = router
        self.discovery = discovery
        self.connector = connector
        self.bootstrap = bootstrap
        self.interval = self.first_interval()
        """Seconds from one refresh to the next (jittered by the core's refresh clock)."""
        self.busy: Callable[[bytes, float], bool] = lambda peer_id, now: False
        """Whether a peer carries much of the application's traffic lately (the core wires in
        :meth:`DirectPaths.busy <peer_relay.core.direct.DirectPaths.busy>`): its link gives
        way last."""

    def first_interval(self) -> float:
        """Seconds from the start to the first refresh."""
        return self.ctx.config.refresh_interval

    def populate(self, now: float) -> None:
        """Start connection attempts toward the links the strategy wants."""
        cfg = self.ctx.config
        if self.ctx.closed:
            return
        free = cfg.max_connecting - len(self.connector.attempts)
        room = cfg.max_links - len(self.links.open) - len(self.connector.attempts)
        if free <= 0:
            return
        for peer_id in self.wanted(free, room, now):
            self.discovery.hint_via_introducer(peer_id, now)
            self.connector.start(peer_id, now, user=False)

    def wanted(self, free: int, room: int, now: float) -> list[bytes]:
        """Up to ``free`` candidates to dial now, given ``room`` unused links."""
        raise NotImplementedError

    def victim(self, newcomer: bytes, now: float) -> Link | None:
        """The open link to close so that ``newcomer`` fits, or None to refuse the newcomer."""
        return None

    def asks_new_link(self, link: Link) -> bool:
        """Whether to ask a link that just opened for its peers nearest us."""
        return True

    def would_link(self, peer_id: bytes, now: float) -> bool:
        """Whether a link to ``peer_id`` would be kept if it opened now: there is room."""
        cfg = self.ctx.config
        return len(self.links.open) + len(self.connector.attempts) < cfg.max_links

    def refresh(self, now: float) -> None:
        """Periodic discovery and repair."""
        raise NotImplementedError


class Original(Population):
    """0.0.2's policy."""

    lists_candidates: ClassVar[bool] = True
    lookups: ClassVar[bool] = False

    def wanted(self, free: int, room: int, now: float) -> list[bytes]:
        """The 15 ids nearest our own while there is room."""
        nearest = self.discovery.nearest_candidates(15)
        return [p for p in nearest if self.connector.dialable(p)][: min(free, room)]

    def refresh(self, now: float) -> None:
        """Ask the nearest link about our neighbourhood, as 0.0.2; populate."""
        me = self.ctx.int
        if self.links.open:
            near_link = min(self.links.open, key=lambda link: link.peer_int ^ me)
            self.discovery.ask(near_link.peer_hex, self.ctx.hex, now)
        self.populate(now)


class Spread(Population):
    """Our policy: spread links over the buckets (see the module docstring)."""

    near_signature: tuple[bytes, ...] = ()
    """Our nearest links at the last refresh."""
    quiet_rounds = 0
    """Refreshes since they last changed."""

    def first_interval(self) -> float:
        """A newcomer refreshes soon: peers that joined with it, or just before, know of it
        only once it asks again (a network started at once links up in a few seconds)."""
        return self.ctx.config.refresh_interval / QUICK_SHARE

    def asks_new_link(self, link: Link) -> bool:
        """On links we dialled (we wanted them) and while we have few: a peer that dialled us
        is mostly a newcomer that knows less than we do."""
        return link.outbound or len(self.links.open) <= self.ctx.config.near_count

    def refresh(self, now: float) -> None:
        """Repair when cut off (see :class:`Bootstrap`); a lookup round for our neighbourhood
        (only every ``QUIET_ROUNDS`` times while our near links stay the same); a question
        about one empty bucket; populate. The next refresh comes soon while our near links
        change, and twice as late each time they stay the same, up to ``refresh_interval``."""
        self.bootstrap.rejoin(now)
        self.bootstrap.reach_out(now)
        open_links = self.links.open
        if not open_links:
            return
        ctx = self.ctx
        me = ctx.int
        count = ctx.config.near_count
        near = heapq.nsmallest(count, open_links, key=lambda link: link.peer_int ^ me)
        signature = tuple(link.peer_id for link in near)
        interval = ctx.config.refresh_interval
        if signature != self.near_signature:
            self.near_signature = signature
            self.quiet_rounds = 0
            self.interval = interval / QUICK_SHARE
        else:
            self.quiet_rounds += 1
            self.interval = min(2 * self.interval, interval)
        if near and self.quiet_rounds % QUIET_ROUNDS == 0:
            # Ask the nearest link and one link beyond our neighbourhood; their answers lead
            # to nearer peers, asked in turn (see Discovery.lookup_step). Peers that joined
            # at once can form neighbourhoods that know nothing of each other, and a lookup
            # that starts inside ours never leaves it; one that starts far away can.
            far = [link for link in open_links if link not in near]
            ask = {near[0], ctx.rng.choice(far or near)}
            self.discovery.new_round(sorted(ask, key=lambda link: link.peer_int ^ me), now)
        filled = {bucket_index(me, link.peer_int) for link in open_links}
        deepest = min(filled)
        empty = [i for i in range(deepest + 1, 160) if i not in filled]
        if empty:
            target = self.discovery.random_id_in_bucket(ctx.rng.choice(empty[-8:])).hex()
            via = self.router.next_hops(target, (ctx.hex,))
            if via:
                self.discovery.ask(via[0].peer_hex, target, now)
        self.populate(now)

    def wanted(self, free: int, room: int, now: float) -> list[bytes]:
        """Up to ``free`` candidates to dial now, given ``room`` unused links:

        1. the ``near_count`` nearest neighbours, even with no room (a farther link gives way),
           once no question of the lookup round is out;
        2. while there is room, one link in every bucket we know peers in, farthest first;
        3. while more than ``spare_links`` are unused, a second link in the far buckets whose
           links cover one half of the bucket only: the other half gives one more bit per hop.
        """
        cfg = self.ctx.config
        dialable = self.connector.dialable
        if self.discovery.lookup_pending(now):
            wanted = []
        else:
            wanted = [p for p in self.discovery.nearest_candidates(cfg.near_count) if dialable(p)]
            del wanted[free:]
        fill = min(free, len(wanted) + room)
        extra = min(free, len(wanted) + room - cfg.spare_links)
        if fill <= len(wanted):
            return wanted
        halves = self._halves(wanted)
        cand = self.discovery.candidates
        occupied = sorted(cand.bucket_sizes(), reverse=True)
        rng = self.ctx.rng
        for index in occupied:
            if index in halves:
                continue
            choices = [p for p in cand.bucket(index) if dialable(p)]
            if choices:
                pick = rng.choice(choices)
                wanted.append(pick)
                halves[index] = 1 << half_bit(int.from_bytes(pick, "big"), index)
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
                if half_bit(int.from_bytes(p, "big"), index) == missing and dialable(p)
            ]
            if choices:
                wanted.append(rng.choice(choices))
                halves[index] = 3
                if len(wanted) >= extra:
                    break
        return wanted

    def _halves(self, wanted: list[bytes]) -> dict[int, int]:
        """Bucket -> mask of its halves covered (1, 2 or 3) by links, attempts and ``wanted``."""
        me = self.ctx.int
        halves: dict[int, int] = {}
        for peer_int in [link.peer_int for link in self.links.open] + [
            int.from_bytes(p, "big") for p in (*self.connector.attempts, *wanted)
        ]:
            index = (peer_int ^ me).bit_length() - 1
            halves[index] = halves.get(index, 0) | 1 << half_bit(peer_int, index)
        return halves

    def would_link(self, peer_id: bytes, now: float) -> bool:
        """Whether a link to ``peer_id`` would be kept if it opened now: there is room, or a
        link would give way to it without harm to a route, or it is a nearest neighbour."""
        if super().would_link(peer_id, now):
            return True
        best, harmless, new_near = self._least_useful(peer_id, now)
        return best is not None and (harmless or new_near)

    def victim(self, newcomer: bytes, now: float) -> Link | None:
        """The open link to close so that ``newcomer`` fits, or None to refuse the newcomer.

        The links to our ``near_count`` nearest neighbours (the newcomer among them, if near) are
        never closed. Of the others, a link to a busy peer (see :attr:`busy`) goes last; then one
        past its grace period goes first (young links are a newcomer's lifeline), then the most
        crowded (its bucket holds the most links, then its half of the bucket does), then the
        oldest.

        Closing a link of our neighbourhood (the buckets up to one past the farthest near link)
        or one alone in its bucket harms a route, and as buckets are symmetric, the peer at the
        other end often wants it back. Such a link goes only for a peer that cannot look
        elsewhere: a nearest neighbour, one the application asked for, or one that dialled us
        without an offer (a newcomer's bootstrap link). A peer that offered first is refused
        instead and tries another candidate.
        """
        best, harmless, new_near = self._least_useful(newcomer, now)
        if best is None or harmless or new_near:
            return best
        attempt = self.connector.attempts.get(newcomer)
        if attempt is not None:
            return best if attempt.user else None
        return None if newcomer in self.connector.answered.entries else best

    def _least_useful(self, newcomer: bytes, now: float) -> tuple[Link | None, bool, bool]:
        """The link eviction would pick, whether closing it harms no route, and whether the
        newcomer is one of our nearest neighbours."""
        cfg = self.ctx.config
        me = self.ctx.int
        ranked = sorted(self.links.open, key=lambda link: link.peer_int ^ me)
        protect = min(cfg.near_count, len(ranked))
        new_int = int.from_bytes(newcomer, "big")
        new_near = protect > 0 and new_int ^ me < ranked[protect - 1].peer_int ^ me
        if new_near:
            protect -= 1
        region = (ranked[protect - 1].peer_int ^ me).bit_length() + NEAR_MARGIN if protect else -1
        counts: dict[int, int] = {}
        for link in ranked:
            index = (link.peer_int ^ me).bit_length() - 1
            half = 2 * index + half_bit(link.peer_int, index)
            counts[index] = counts.get(index, 0) + 1
            counts[~half] = counts.get(~half, 0) + 1
        best: Link | None = None
        best_key: tuple[bool, bool, bool, int, int, float] | None = None
        busy = self.busy
        for link in ranked[protect:]:
            index = (link.peer_int ^ me).bit_length() - 1
            half = 2 * index + half_bit(link.peer_int, index)
            idle = not busy(link.peer_id, now)
            key = (
                idle,
                idle and index >= region and counts[index] >= 2,
                now - link.opened_at >= cfg.link_grace,
                counts[index],
                counts[~half],
                -link.opened_at,
            )
            if best_key is None or key > best_key:
                best, best_key = link, key
        return best, best_key is not None and best_key[1], new_near


def half_bit(peer_int: int, index: int) -> int:
    """Which half of bucket ``index`` an id falls in: the bit after the one that differs."""
    return (peer_int >> (index - 1)) & 1 if index > 0 else 0


def for_strategy(config: Config) -> type[Population]:
    """The population class of ``config.strategy``."""
    return Original if config.strategy == "original" else Spread
