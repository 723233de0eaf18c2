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


class KBucketTable(Generic[V]):
    """Up to ``k`` entries per bucket, 160 buckets, keyed by 20-byte id."""

    def __init__(self, own_id: bytes, k: int = 20) -> None:
        if len(own_id) != ID_BYTES:
            raise ValueError("own_id must be 20 bytes")
        if k < 1:
            raise ValueError("k must be at least 1")
        self.own_id = own_id
        self.own_int = int.from_bytes(own_id, "big")
        self.k = k
        # bucket index -> {id: value}; dicts keep touch order (oldest first).
        self._buckets: dict[int, dict[bytes, V]] = {}
        self._all: dict[bytes, V] = {}  # every entry, for lookups without the bucket math

    def bucket_of(self, peer_id: bytes) -> int:
        """Bucket index of ``peer_id`` (0 nearest .. 159 farthest; -1 for our own id)."""
        return bucket_index(self.own_int, int.from_bytes(peer_id, "big"))

    def add(self, peer_id: bytes, value: V, *, replace_oldest: bool = False) -> bool:
        """Insert or refresh ``peer_id``; return False if its bucket is full and nothing changed.

        With ``replace_oldest`` a full bucket drops its least recently touched entry instead.
        Our own id is never stored.
        """
        index = self.bucket_of(peer_id)
        if index < 0:
            return False
        bucket = self._buckets.setdefault(index, {})
        if peer_id in bucket:
            del bucket[peer_id]
        elif len(bucket) >= self.k:
            if not replace_oldest:
                return False
            oldest = next(iter(bucket))
            del bucket[oldest]
            del self._all[oldest]
        bucket[peer_id] = value
        self._all[peer_id] = value
        return True

    def remove(self, peer_id: bytes) -> V | None:
        """Remove ``peer_id``; return its value, or None if it was not there."""
        if peer_id not in self._all:
            return None
        index = self.bucket_of(peer_id)
        bucket = self._buckets[index]
        value = bucket.pop(peer_id)
        del self._all[peer_id]
        if not bucket:
            del self._buckets[index]
        return value

    def get(self, peer_id: bytes) -> V | None:
        """The value stored for ``peer_id``, or None."""
        return self._all.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._all

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[bytes]:
        for bucket in list(self._buckets.values()):
            yield from list(bucket)

    def items(self) -> Iterator[tuple[bytes, V]]:
        """All ``(id, value)`` pairs."""
        for bucket in list(self._buckets.values()):
            yield from list(bucket.items())

    def bucket(self, index: int) -> list[bytes]:
        """Ids in bucket ``index``, oldest first."""
        return list(self._buckets.get(index, ()))

    def bucket_sizes(self) -> dict[int, int]:
        """Occupied buckets and how many entries each holds."""
        return {index: len(b) for index, b in sorted(self._buckets.items())}

    def closest(self, target: bytes, n: int) -> list[bytes]:
        """Up to ``n`` stored ids ordered by XOR distance to ``target``, nearest first."""
        t = int.from_bytes(target, "big")
        return heapq.nsmallest(n, self, key=lambda i: int.from_bytes(i, "big") ^ t)
