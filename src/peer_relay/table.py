"""A k-bucket table: ids grouped by the length of the prefix they share with our own id.

Pure data structure: no I/O, no clock. Each bucket holds at most ``k`` entries in the order they
were last touched (oldest first), which is what eviction policies look at.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

from .ids import ID_BYTES, bucket_index

V = TypeVar("V")


class _Bucket(Generic[V]):
    """One bucket's ids and their values, side by side, least recently touched first."""

    __slots__ = ("ids", "values")

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.values: list[V] = []


class KBucketTable(Generic[V]):
    """Up to ``k`` entries per bucket, 160 buckets, keyed by 20-byte id.

    Buckets are short lists (at most ``k``). With ``lookups`` (the default) a dict of every
    entry answers :meth:`get` and ``in`` at once; without it they search the id's bucket, and
    the table costs some 60 bytes less per entry: for a large table seldom asked about one id.
    """

    def __init__(self, own_id: bytes, k: int = 20, *, lookups: bool = True) -> None:
        if len(own_id) != ID_BYTES:
            raise ValueError("own_id must be 20 bytes")
        if k < 1:
            raise ValueError("k must be at least 1")
        self.own_id = own_id
        self.own_int = int.from_bytes(own_id, "big")
        self.k = k
        self._buckets: dict[int, _Bucket[V]] = {}  # bucket index -> its entries
        self._all: dict[bytes, V] | None = {} if lookups else None
        self._size = 0

    def bucket_of(self, peer_id: bytes) -> int:
        """Bucket index of ``peer_id`` (0 nearest .. 159 farthest; -1 for our own id)."""
        return bucket_index(self.own_int, int.from_bytes(peer_id, "big"))

    def add(self, peer_id: bytes, value: V, *, replace_oldest: bool = False) -> bool:
        """Insert or refresh ``peer_id``; return False if its bucket is full and nothing changed.

        With ``replace_oldest`` a full bucket drops its least recently touched entry instead.
        Our own id is never stored.
        """
        return self.place(peer_id, value, replace_oldest=replace_oldest) is not None

    def place(self, peer_id: bytes, value: V, *, replace_oldest: bool = True) -> bytes | None:
        """:meth:`add` (by default replacing the oldest), returning the id as the table keeps
        it: the copy it had when ``peer_id`` was there already, for callers to share. None when
        nothing changed."""
        # bucket_of, inlined: the table's busiest call (every id of every foundPeers).
        index = (self.own_int ^ int.from_bytes(peer_id, "big")).bit_length() - 1
        if index < 0:
            return None
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        ids = bucket.ids
        everything = self._all
        known = peer_id in ids if everything is None else peer_id in everything
        if known:
            at = ids.index(peer_id)
            peer_id = ids.pop(at)  # the copy kept: one object per id
            del bucket.values[at]
        elif len(ids) >= self.k:
            if not replace_oldest:
                return None
            oldest = ids.pop(0)
            del bucket.values[0]
            if everything is not None:
                del everything[oldest]
            self._size -= 1
        ids.append(peer_id)
        bucket.values.append(value)
        if everything is not None:
            everything[peer_id] = value
        if not known:
            self._size += 1
        return peer_id

    def remove(self, peer_id: bytes) -> V | None:
        """Remove ``peer_id``; return its value, or None if it was not there."""
        if self._all is not None and peer_id not in self._all:
            return None
        index = self.bucket_of(peer_id)
        bucket = self._buckets.get(index)
        if bucket is None or peer_id not in bucket.ids:
            return None
        at = bucket.ids.index(peer_id)
        del bucket.ids[at]
        value = bucket.values.pop(at)
        if self._all is not None:
            del self._all[peer_id]
        self._size -= 1
        if not bucket.ids:
            del self._buckets[index]
        return value

    def get(self, peer_id: bytes) -> V | None:
        """The value stored for ``peer_id``, or None."""
        if self._all is not None:
            return self._all.get(peer_id)
        bucket = self._buckets.get(self.bucket_of(peer_id))
        if bucket is None or peer_id not in bucket.ids:
            return None
        return bucket.values[bucket.ids.index(peer_id)]

    def __contains__(self, peer_id: object) -> bool:
        if self._all is not None:
            return peer_id in self._all
        if not isinstance(peer_id, bytes):
            return False
        bucket = self._buckets.get(self.bucket_of(peer_id))
        return bucket is not None and peer_id in bucket.ids

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        for bucket in list(self._buckets.values()):
            yield from list(bucket.ids)

    def items(self) -> Iterator[tuple[bytes, V]]:
        """All ``(id, value)`` pairs."""
        for bucket in list(self._buckets.values()):
            yield from list(zip(bucket.ids, bucket.values, strict=True))

    def bucket(self, index: int) -> list[bytes]:
        """Ids in bucket ``index``, oldest first."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else list(bucket.ids)

    def bucket_sizes(self) -> dict[int, int]:
        """Occupied buckets and how many entries each holds."""
        buckets = self._buckets
        return {index: len(buckets[index].ids) for index in sorted(buckets)}

    def closest(self, target: bytes, n: int) -> list[bytes]:
        """Up to ``n`` stored ids ordered by XOR distance to ``target``, nearest first."""
        t = int.from_bytes(target, "big")
        return heapq.nsmallest(n, self, key=lambda i: int.from_bytes(i, "big") ^ t)
