"""The live hosts' pooled random source: right ranges and sizes, fresh numbers after a fork."""

from __future__ import annotations

import os

import pytest

from peer_relay.randomness import PooledRandom


def test_numbers_have_the_asked_sizes_and_ranges() -> None:
    rng = PooledRandom(block=64)
    floats = [rng.random() for _ in range(2000)]
    assert all(0.0 <= x < 1.0 for x in floats)
    assert 0.4 < sum(floats) / len(floats) < 0.6
    for bits in (1, 7, 8, 31, 63, 64, 200):
        values = [rng.getrandbits(bits) for _ in range(300)]
        assert all(0 <= v < 1 << bits for v in values)
        assert max(values).bit_length() == bits  # the top bit is used too
    assert rng.getrandbits(0) == 0
    assert [len(rng.randbytes(n)) for n in (0, 1, 16, 100, 5000)] == [0, 1, 16, 100, 5000]
    assert len({rng.randbytes(16) for _ in range(1000)}) == 1000
    assert 0 <= rng.randrange(10) < 10 and rng.choice("abc") in "abc"


def test_it_cannot_be_seeded_or_saved() -> None:
    rng = PooledRandom()
    rng.seed(1)
    assert rng.randbytes(8) != PooledRandom().randbytes(8)
    with pytest.raises(NotImplementedError):
        rng.getstate()
    with pytest.raises(ValueError, match="at least 64"):
        PooledRandom(block=8)
    with pytest.raises(ValueError):
        rng.getrandbits(-1)


def test_a_forked_child_does_not_repeat_its_parents_numbers() -> None:
    rng = PooledRandom()
    rng.randbytes(1)  # the pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, rng.randbytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert child != rng.randbytes(32)
