"""Bounded structures the parts keep: an insertion-ordered map capped in size and expiring on
the clock, duplicate filters of message keys, a token bucket, and token buckets per source.

They hold many entries in every peer (a simulation runs 100,000 peers in one process), so they
keep no object per entry that they can do without.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """At most ``limit`` entries, oldest first; entries whose expiry has passed can be dropped
    from the front with :meth:`expire`.

    Reads go straight to :attr:`entries` (a ``dict``, in insertion order); writes go through
    :meth:`put` or :meth:`touch`, which keep the bound (or ``pop`` and ``clear`` of
    :attr:`entries`, which cannot break it). ``expiry`` tells an entry's expiry from its value
    (None: entries never expire, only the bound removes them).
    """

    __slots__ = ("entries", "expiry", "limit")

    def __init__(self, limit: int, expiry: Callable[[V], float] | None = None) -> None:
        # A plain dict, not an OrderedDict: the same order for some 50 bytes less per entry.
        self.entries: dict[K, V] = {}
        self.limit = limit
        self.expiry = expiry

    def put(self, key: K, value: V) -> None:
        """Set ``key``; a new key goes last (an existing one keeps its place); drop the oldest
        entry when over the limit."""
        entries = self.entries
        entries[key] = value
        if len(entries) > self.limit:
            del entries[next(iter(entries))]

    def touch(self, key: K, value: V) -> None:
        """Set ``key`` and move it last; drop the oldest entry when over the limit."""
        entries = self.entries
        entries.pop(key, None)
        entries[key] = value
        if len(entries) > self.limit:
            del entries[next(iter(entries))]

    def expire(self, now: float) -> None:
        """Drop the entries at the front whose expiry is at or before ``now``.

        Entries are expected in the order of their expiry (true when every entry gets the same
        lifetime); one that lives longer holds back the ones behind it until it expires.
        """
        expiry = self.expiry
        if expiry is None:
            return
        entries = self.entries
        gone: list[K] = []
        # One pass: a dict finds its first entry by skipping the ones deleted before it.
        for key, value in entries.items():
            if expiry(value) > now:
                break
            gone.append(key)
        for key in gone:
            del entries[key]

    def first_expiry(self) -> float | None:
        """The expiry of the entry at the front, if any."""
        if not self.entries or self.expiry is None:
            return None
        return self.expiry(next(iter(self.entries.values())))

    def __len__(self) -> int:
        return len(self.entries)


class _Keys:
    """What both duplicate filters hold: a set of keys, and the keys with their expiries in the
    order they were added, those before ``_head`` forgotten."""

    __slots__ = ("_expiries", "_head", "_order", "keys", "limit")

    def __init__(self, limit: int) -> None:
        self.keys: set[int] = set()
        self.limit = limit
        self._order = array("q")
        self._expiries = array("d")
        self._head = 0

    def first_expiry(self) -> float | None:
        """The expiry of the key at the front, if any."""
        head = self._head
        return self._expiries[head] if head < len(self._expiries) else None

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)


class KeyFilter(_Keys):
    """A duplicate filter: message keys (``hash()`` values), each remembered until its expiry,
    at most ``limit`` at once (the first added forgotten first).

    The semantics of a :class:`BoundedMap` of key -> expiry (the front expires first; one that
    lives longer holds back those behind it) in a set and two arrays: no object per entry but
    its key. Ask :attr:`keys` (or the filter) with ``in``; add a key (not there already) with
    :meth:`add`.
    """

    __slots__ = ()

    def add(self, key: int, expiry: float) -> None:
        """Remember ``key`` (not there) until ``expiry``; forget the first added when over the
        limit."""
        keys = self.keys
        keys.add(key)
        self._order.append(key)
        self._expiries.append(expiry)
        if len(keys) > self.limit:
            keys.discard(self._order[self._head])
            self._head += 1
            self._compact()

    def expire(self, now: float) -> None:
        """Forget the keys at the front whose expiry is at or before ``now``."""
        expiries = self._expiries
        head = self._head
        end = len(expiries)
        if head == end or expiries[head] > now:
            return
        keys, order = self.keys, self._order
        while head < end and expiries[head] <= now:
            keys.discard(order[head])
            head += 1
        self._head = head
        self._compact()

    def _compact(self) -> None:
        head = self._head
        if head >= 16 and 2 * head >= len(self._order):
            del self._order[:head]
            del self._expiries[:head]
            self._head = 0


FORGOTTEN = -2
"""The date of a slot of :class:`DatedKeys` whose key was forgotten early (real dates are -1,
undated, or a signed timestamp)."""


class DatedKeys(_Keys):
    """The duplicate filter of signed messages: like :class:`KeyFilter`, each key with the date
    of its message (-1: undated); over the limit, the key of the earliest ``(date, key)`` is
    forgotten first (:meth:`add` returns it: the replay floor's rise).

    A heap by date is kept only while the limit is reached (with a limit as large as the
    default, practically never): otherwise the filter costs a :class:`KeyFilter` and a date
    per key.
    """

    __slots__ = ("_base", "_by_date", "_dates")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._dates = array("q")
        """Each slot's date, or :data:`FORGOTTEN`."""
        self._base = 0
        """The number of the slot at the front of the arrays (the heap's slot numbers outlive
        a cut of the front): slot ``i`` is at ``i - _base``."""
        self._by_date: list[tuple[int, int, int]] | None = None
        """A heap of (date, key, slot), while the filter is full: some are out of date."""

    def add(self, key: int, date: int, expiry: float) -> tuple[int, int] | None:
        """Remember ``key`` (not there), dated ``date`` (-1 or more), until ``expiry``; over
        the limit, forget the earliest dated and return its (date, key)."""
        keys = self.keys
        keys.add(key)
        order = self._order
        order.append(key)
        self._expiries.append(expiry)
        self._dates.append(date)
        by_date = self._by_date
        if by_date is not None:
            heapq.heappush(by_date, (date, key, self._base + len(order) - 1))
        if len(keys) <= self.limit:
            return None
        return self._forget_earliest()

    def _forget_earliest(self) -> tuple[int, int]:
        by_date = self._by_date
        if by_date is None:
            by_date = self._by_date = self._heap()
        dates, base, head = self._dates, self._base, self._head
        while True:
            date, key, slot = heapq.heappop(by_date)
            at = slot - base
            if at >= head and dates[at] != FORGOTTEN:
                break
        dates[at] = FORGOTTEN
        self.keys.discard(key)
        if at == head:
            self._advance(head)
        elif len(dates) - head > 2 * len(self.keys) + 16:
            self._squeeze()
        return date, key

    def _heap(self) -> list[tuple[int, int, int]]:
        dates, order, base = self._dates, self._order, self._base
        heap = [
            (dates[at], order[at], base + at)
            for at in range(self._head, len(dates))
            if dates[at] != FORGOTTEN
        ]
        heapq.heapify(heap)
        return heap

    def expire(self, now: float) -> None:
        """Forget the keys at the front whose expiry is at or before ``now``."""
        expiries = self._expiries
        head = self._head
        end = len(expiries)
        if head == end or expiries[head] > now:
            return
        keys, order, dates = self.keys, self._order, self._dates
        while head < end:
            if dates[head] != FORGOTTEN:
                if expiries[head] > now:
                    break
                keys.discard(order[head])
            head += 1
        self._head = head
        self._compact()
        by_date = self._by_date
        if by_date is not None and (
            2 * len(keys) < self.limit or len(by_date) > 2 * len(keys) + 64
        ):
            self._by_date = None  # made again (without what expired) when next needed

    def _advance(self, head: int) -> None:
        """Move the front past ``head`` and the forgotten slots after it."""
        dates = self._dates
        end = len(dates)
        head += 1
        while head < end and dates[head] == FORGOTTEN:
            head += 1
        self._head = head
        self._compact()

    def _compact(self) -> None:
        head = self._head
        if head >= 16 and 2 * head >= len(self._order):
            del self._order[:head]
            del self._expiries[:head]
            del self._dates[:head]
            self._base += head
            self._head = 0

    def _squeeze(self) -> None:
        """Drop the forgotten slots (keys forgotten early, out of order) from the arrays."""
        order, expiries, dates = self._order, self._expiries, self._dates
        kept = [at for at in range(self._head, len(dates)) if dates[at] != FORGOTTEN]
        self._order = array("q", [order[at] for at in kept])
        self._expiries = array("d", [expiries[at] for at in kept])
        self._dates = array("q", [dates[at] for at in kept])
        self._head = 0
        self._by_date = None  # its slot numbers are void


def expires_at(value: float) -> float:
    """The expiry of a map whose values are their expiry."""
    return value


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def full(self, now: float, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens could not be spent now (spends nothing)."""
        return min(self.burst, self.tokens + (now - self.at) * self.rate) < cost

    def spend(self, now: float, cost: float) -> None:
        """Spend ``cost`` tokens, going into debt if need be (paid back by the rate)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - cost
        self.at = now


class Budgets(Generic[K]):
    """One :class:`TokenBucket` per source (a peer id, a link), ``rate`` a second, burst
    ``burst``; at most ``limit`` sources remembered, the least recently used forgotten first
    (a forgotten source starts again with a full bucket)."""

    __slots__ = ("buckets", "burst", "rate")

    def __init__(self, rate: float, burst: float, limit: int) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: BoundedMap[K, TokenBucket] = BoundedMap(limit)

    def _bucket(self, key: K, now: float) -> TokenBucket:
        entries = self.buckets.entries
        bucket = entries.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self.buckets.put(key, bucket)
        else:
            entries[key] = bucket  # last: the most recently used
        return bucket

    def spent(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Whether ``key`` has less than ``cost`` left now (spends nothing, remembers nothing)."""
        bucket = self.buckets.entries.get(key)
        return cost > self.burst if bucket is None else bucket.full(now, cost)

    def take(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` of ``key``'s budget if it has that much."""
        return self._bucket(key, now).take(now, cost)

    def charge(self, key: K, now: float, cost: float) -> None:
        """Spend ``cost`` of ``key``'s budget whatever is left (into debt)."""
        self._bucket(key, now).spend(now, cost)

    def forget(self, key: K) -> None:
        """Drop ``key``'s budget."""
        self.buckets.entries.pop(key, None)

    def __len__(self) -> int:
        return len(self.buckets)
