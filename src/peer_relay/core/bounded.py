"""Bounded structures the parts keep: an insertion-ordered map capped in size and expiring on
the clock, a token bucket, and token buckets per source."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """At most ``limit`` entries, oldest first; entries whose expiry has passed can be dropped
    from the front with :meth:`expire`.

    Reads go straight to :attr:`entries` (an ``OrderedDict``); writes go through :meth:`put` or
    :meth:`touch`, which keep the bound. ``expiry`` tells an entry's expiry from its value
    (None: entries never expire, only the bound removes them).
    """

    __slots__ = ("entries", "expiry", "limit")

    def __init__(self, limit: int, expiry: Callable[[V], float] | None = None) -> None:
        self.entries: OrderedDict[K, V] = OrderedDict()
        self.limit = limit
        self.expiry = expiry

    def put(self, key: K, value: V) -> None:
        """Set ``key``; a new key goes last (an existing one keeps its place); drop the oldest
        entry when over the limit."""
        entries = self.entries
        entries[key] = value
        if len(entries) > self.limit:
            entries.popitem(last=False)

    def touch(self, key: K, value: V) -> None:
        """Set ``key`` and move it last; drop the oldest entry when over the limit."""
        entries = self.entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.limit:
            entries.popitem(last=False)

    def expire(self, now: float) -> None:
        """Drop the entries at the front whose expiry is at or before ``now``.

        Entries are expected in the order of their expiry (true when every entry gets the same
        lifetime); one that lives longer holds back the ones behind it until it expires.
        """
        expiry = self.expiry
        if expiry is None:
            return
        entries = self.entries
        while entries:
            key, value = next(iter(entries.items()))
            if expiry(value) > now:
                break
            del entries[key]

    def first_expiry(self) -> float | None:
        """The expiry of the entry at the front, if any."""
        if not self.entries or self.expiry is None:
            return None
        return self.expiry(next(iter(self.entries.values())))

    def __len__(self) -> int:
        return len(self.entries)


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
        bucket = self.buckets.entries.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self.buckets.put(key, bucket)
        else:
            self.buckets.entries.move_to_end(key)
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
