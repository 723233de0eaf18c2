"""Bounded structures the parts keep: an insertion-ordered map capped in size and expiring on
the clock, and a token bucket."""

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

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
