"""Neighbours' links: the links of each peer we are linked to, so that routing looks two hops
ahead.

Greedy forwarding over our own links gains about two bits of the target's id per hop. Each of our
peers also tells us the ids of its open links: in the key proof of a new link, then in a
``links`` frame a second after they change (the first such frame soon, later ones at most once
per ``share_interval``); a message then goes to the linked peer that is itself closest to its
target, or that is linked to a peer closer still. With 20 links a peer sees up to 400 ids two
hops away, and routes get shorter (``benchmarks/sim_scale.py``: 3.01 hops against 3.71 at 1,000
peers).

What a peer lists is a hint, not a promise: a link it listed may have closed since, and the hop
after it then routes on its own knowledge. A peer that lists ids it is not linked to draws
messages it cannot take further than greedy routing would; receipts and sending again over
other first hops (``core/delivery.py``) get around a peer that drops them.

The ids are kept by their top 48 bits, with the slot of the link that listed them, in one sorted
array of 64-bit keys (8 bytes an id): two ids of a network of 100,000 peers share their top 48
bits about once in 50,000 networks, and then only two equally good hops tie.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Any, Final

from .. import wire
from ..ids import ID_BYTES
from ..wire import WireError
from .context import Context
from .link import Link
from .links import Links

PREFIX_SHIFT: Final = 8 * ID_BYTES - 48
"""An id's top 48 bits: ``id >> PREFIX_SHIFT``."""
SHARE_DELAY: Final = 1.0
"""Seconds from a change of our links to the list that tells our peers (later changes
included)."""
INF: Final = float("inf")
SLOT_BITS: Final = 16
SLOT_MASK: Final = (1 << SLOT_BITS) - 1


class Neighbours:
    """Shares our links with our peers and keeps theirs; finds the hop toward the closest."""

    def __init__(self, ctx: Context, links: Links) -> None:
        self.ctx = ctx
        self.links = links
        self.enabled = ctx.config.share_links
        self.version = 0
        """Bumped whenever our open links change: what a peer last got is stale."""
        self.keys: array[int] = array("Q")
        """Every listed id (top 48 bits) with its link's slot in its low 16 bits, ascending."""
        self.slots: list[Link | None] = []
        """The open links by their slot (the number :attr:`keys` holds); None: free."""
        self.free: list[int] = []
        """Free slots."""
        self.dirty = False
        self.due = INF
        """When our list next goes to the peers whose copy is stale (INF: none is)."""
        self.own_prefix = ctx.int >> PREFIX_SHIFT

    # ---------------------------------------------------------------- sharing ours

    def opened(self, link: Link, now: float) -> None:
        """``link`` has opened: our links changed; a peer of ours has our list at once (its
        proof carried it, see :meth:`listing`, or it goes now)."""
        if self.free:
            link.slot = self.free.pop()
            self.slots[link.slot] = link
        elif len(self.slots) <= SLOT_MASK:
            link.slot = len(self.slots)
            self.slots.append(link)
        self._changed(now)
        if self.enabled and link.authenticated:
            if link.shared_at == -INF:
                self._share(link, self._listing(), now)
            else:
                link.shared_version = self.version  # it knows that it is linked to us

    def listing(self) -> bytes | None:
        """Our list for the proof of a new link, or None when we do not share."""
        return self._listing() if self.enabled else None

    def gone(self, link: Link, now: float) -> None:
        """An open link has closed: our links changed, and its list is no longer ours to use."""
        self._changed(now)
        link.listed = None
        if link.slot >= 0:
            self.slots[link.slot] = None
            self.free.append(link.slot)
            link.slot = -1

    def _changed(self, now: float) -> None:
        self.version += 1
        self.dirty = True
        if self.enabled and self.due == INF:
            # Changes come in bursts (a link opens, another gives way): one list for them all.
            self.due = now + SHARE_DELAY
            self.ctx.wake_at(self.due)

    def tick(self, now: float) -> None:
        """Send our list to the peers whose copy is stale once it is due, each at most once
        per ``share_interval`` (the first list after the one a link opened with goes sooner:
        links change most while a peer joins); the core calls it on every tick."""
        if now < self.due:
            return
        self.due = INF
        interval = self.ctx.config.share_interval
        listing = b""
        for link in self.links.open:
            if link.authenticated and link.shared_version != self.version:
                after = link.shared_at + (SHARE_DELAY if link.shares == 1 else interval)
                if now >= after:
                    listing = listing or self._listing()
                    self._share(link, listing, now)
                else:
                    self.due = min(self.due, after)
        if self.due != INF:
            self.ctx.wake_at(self.due)

    def _listing(self) -> bytes:
        """Our open links' ids, at most ``max_listed`` (spread evenly over our links nearest
        first when there are more)."""
        most = self.ctx.config.max_listed
        open_links = self.links.open
        if len(open_links) <= most:
            return b"".join(link.peer_id for link in open_links)
        me = self.ctx.int
        ranked = sorted(open_links, key=lambda link: link.peer_int ^ me)
        step = len(ranked) / most
        return b"".join(ranked[int(i * step)].peer_id for i in range(most))

    def _share(self, link: Link, listing: bytes, now: float) -> None:
        link.shared_version = self.version
        link.shared_at = now
        link.shares += 1
        self.ctx.send(link.handle, wire.links_frame(listing))

    # ---------------------------------------------------------------- keeping theirs

    def received(self, link: Link, listed: Any, now: float) -> None:
        """A peer's list of its links (``listed``, as written) arrived on ``link``, in a links
        frame or its proof; raise WireError if malformed.

        Lists that come sooner than half a second (or ``share_interval / 8``) after the last
        one are dropped unread: a peer of ours sends one per ``share_interval``, and the second
        a second after the first."""
        ctx = self.ctx
        cfg = ctx.config
        if not link.authenticated:
            raise WireError("not-envelope", "link control from a peer that is not ours")
        if now - link.listed_at < min(cfg.share_interval / 8, SHARE_DELAY / 2):
            ctx.drop("links-too-often", link.peer_hex)
            return
        ids, cut = wire.parse_links(listed, cfg.max_listed)
        if cut:
            ctx.drop("links-cut", f"{link.peer_hex} listed over {cfg.max_listed}")
        link.listed_at = now
        if not self.enabled:
            return
        slot = link.slot
        if slot < 0:
            return  # more links than slots: its list goes unused
        own = self.own_prefix
        prefixes = [int.from_bytes(ids[i : i + 6], "big") for i in range(0, len(ids), ID_BYTES)]
        link.listed = array("Q", [p << SLOT_BITS | slot for p in prefixes if p != own])
        self.dirty = True

    def _rebuild(self) -> None:
        keys: array[int] = array("Q")
        for link in self.links.open:
            if link.listed is not None:
                keys.extend(link.listed)
        self.keys = array("Q", sorted(keys))
        self.dirty = False

    def largest(self) -> int:
        """The most ids one of our peers lists now (for the bounds read-out)."""
        return max((len(link.listed) for link in self.links.open if link.listed), default=0)

    # ---------------------------------------------------------------- routing

    def via(self, target: int, within: int, path: list[str] | tuple[str, ...]) -> Link | None:
        """The open link, not on ``path``, to a peer linked to the listed id closest to
        ``target``, if that id is closer than ``within`` (compared by the top 48 bits)."""
        if self.dirty:
            self._rebuild()
        keys = self.keys
        if not keys:
            return None
        t = target >> PREFIX_SHIFT
        # Closer by a bucket at least: a list may be stale, and a hop taken for an id barely
        # closer than our own best link risks one hop for next to nothing.
        limit = 1 << (within >> PREFIX_SHIFT).bit_length() - 1 if within >> PREFIX_SHIFT else 0
        key = closest(keys, t)
        if (key >> SLOT_BITS) ^ t >= limit:
            return None
        link = self.slots[key & SLOT_MASK]
        if link is not None and link.peer_hex not in path:
            return link
        # The closest came through a peer the message has been at: the best of the rest, the
        # slow way (rare: that peer would have taken it there itself).
        best: Link | None = None
        for key in keys:
            d = (key >> SLOT_BITS) ^ t
            if d < limit:
                link = self.slots[key & SLOT_MASK]
                if link is not None and link.peer_hex not in path:
                    best, limit = link, d
        return best


def closest(keys: array[int], t: int) -> int:
    """The key of ``keys`` (ascending, not empty) whose top 48 bits are XOR-closest to ``t``.

    The keys in a range of a sorted array share the bits above the highest bit in which its
    first and last differ; at that bit the range splits in two, and the half that agrees with
    ``t`` there holds the closest. About log2(len(keys)) steps.
    """
    lo, hi = 0, len(keys)
    while hi - lo > 1:
        first = keys[lo] >> SLOT_BITS
        last = keys[hi - 1] >> SLOT_BITS
        if first == last:
            break
        split = (first ^ last).bit_length() - 1
        middle = bisect_left(keys, (last >> split << split) << SLOT_BITS, lo, hi)
        if t >> split & 1:
            lo = middle
        else:
            hi = middle
    return keys[lo]
