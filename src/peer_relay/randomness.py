"""The live hosts' random source: the operating system's, drawn in blocks.

``random.SystemRandom`` calls ``os.urandom`` for every number: a system call per message id and
nonce, which measured 5-12% of a relaying process's time. :class:`PooledRandom` draws the same
kernel randomness 4 KiB at a time and hands it out in slices; a forked child refills before its
first use, so parent and child never share numbers.
"""

from __future__ import annotations

import os
import random
import weakref
from typing import Any, NoReturn

__all__ = ["PooledRandom"]

_pools: weakref.WeakSet[PooledRandom] = weakref.WeakSet()


def _after_fork() -> None:
    for pool in list(_pools):
        pool._pool = b""
        pool._at = 0


os.register_at_fork(after_in_child=_after_fork)


class PooledRandom(random.Random):
    """Numbers from ``os.urandom``, read ``block`` bytes at a time; not seedable."""

    def __init__(self, block: int = 4096) -> None:
        if block < 64:
            raise ValueError("block must be at least 64 bytes")
        self._block = block
        self._pool = b""
        self._at = 0
        super().__init__()
        _pools.add(self)

    def _take(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._pool):
            self._pool = os.urandom(max(self._block, n))
            at = 0
        self._at = at + n
        return self._pool[at : at + n]

    def random(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (int.from_bytes(self._take(7), "big") >> 3) * (2.0**-53)

    def getrandbits(self, k: int) -> int:
        """An int of ``k`` random bits."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        if k == 0:
            return 0
        size = (k + 7) // 8
        return int.from_bytes(self._take(size), "big") >> (size * 8 - k)

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return self._take(n)

    def seed(self, *args: Any, **kwargs: Any) -> None:
        """Ignored: the numbers come from the operating system."""

    def getstate(self) -> NoReturn:
        raise NotImplementedError("PooledRandom has no state to save")

    def setstate(self, state: Any) -> NoReturn:
        raise NotImplementedError("PooledRandom has no state to restore")
