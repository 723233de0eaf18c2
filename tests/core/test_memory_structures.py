"""The compact structures the core keeps in every peer behave as the plain ones they replace:
the duplicate filters (against the OrderedDict and heap they were), the bounded map on a plain
dict, and the k-bucket table with or without its dict of every entry."""

from __future__ import annotations

import heapq
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from peer_relay.core.bounded import BoundedMap, Budgets, DatedKeys, KeyFilter
from peer_relay.events import Delivered
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner
from peer_relay.table import KBucketTable

from .test_core import T0, make_core, open_raw_link, signed_frame

# Message keys are hash() values: 64 bits, never -1.
KEYS = st.integers(-(2**63), 2**63 - 1).filter(lambda key: key != -1) | st.integers(0, 30)
# An operation: add a key (if not there) living ttl from now, or let time pass and expire
# (on a clock of steps that land on expiries exactly, and sometimes between them).
OPS = st.lists(
    st.tuples(
        st.booleans(), KEYS, st.sampled_from([1.0, 3.0]), st.sampled_from([0.0, 0.5, 1.0, 0.3])
    ),
    max_size=400,
)


class SeenModel:
    """The relay filter as it was: an OrderedDict of key -> expiry (a BoundedMap)."""

    def __init__(self, limit: int) -> None:
        self.entries: OrderedDict[int, float] = OrderedDict()
        self.limit = limit

    def add(self, key: int, expiry: float) -> None:
        self.entries[key] = expiry
        if len(self.entries) > self.limit:
            self.entries.popitem(last=False)

    def expire(self, now: float) -> None:
        while self.entries and next(iter(self.entries.values())) <= now:
            self.entries.popitem(last=False)

    def first_expiry(self) -> float | None:
        return next(iter(self.entries.values()), None)


class DeliveredModel:
    """The delivered filter as it was (``Inbox._remember`` and ``Inbox.expire``)."""

    def __init__(self, limit: int) -> None:
        self.delivered: OrderedDict[int, tuple[float, int]] = OrderedDict()
        self.by_ts: list[tuple[int, int]] = []
        self.limit = limit

    def add(self, key: int, ts: int, expiry: float) -> tuple[int, int] | None:
        self.delivered[key] = (expiry, ts)
        heapq.heappush(self.by_ts, (ts, key))
        if len(self.delivered) <= self.limit:
            return None
        while True:
            oldest = heapq.heappop(self.by_ts)
            entry = self.delivered.get(oldest[1])
            if entry is not None and entry[1] == oldest[0]:
                del self.delivered[oldest[1]]
                return oldest

    def expire(self, now: float) -> None:
        while self.delivered and next(iter(self.delivered.values()))[0] <= now:
            self.delivered.popitem(last=False)

    def first_expiry(self) -> float | None:
        first = next(iter(self.delivered.values()), None)
        return None if first is None else first[0]


@settings(max_examples=150)
@given(OPS, st.integers(1, 6))
def test_key_filter_is_the_bounded_map_it_replaces(
    ops: list[tuple[bool, int, float, float]], limit: int
) -> None:
    keys, model = KeyFilter(limit), SeenModel(limit)
    now = 0.0
    for add, key, ttl, step in ops:
        if add and key not in model.entries:
            assert key not in keys
            keys.add(key, now + ttl)
            model.add(key, now + ttl)
        elif not add:
            now += step
            keys.expire(now)
            model.expire(now)
        assert len(keys) == len(model.entries) and all(key in keys for key in model.entries)
        assert keys.first_expiry() == model.first_expiry()


@settings(max_examples=150)
@given(OPS, st.lists(st.integers(-1, 4), min_size=1), st.integers(1, 6))
def test_dated_keys_forget_what_the_heap_forgot(
    ops: list[tuple[bool, int, float, float]], dates: list[int], limit: int
) -> None:
    keys, model = DatedKeys(limit), DeliveredModel(limit)
    now = 0.0
    for i, (add, key, ttl, step) in enumerate(ops):
        if add and key not in model.delivered:
            date = dates[i % len(dates)]  # few dates: ties broken by the key, as before
            assert keys.add(key, date, now + ttl) == model.add(key, date, now + ttl)
        elif not add:
            now += step
            keys.expire(now)
            model.expire(now)
        assert len(keys) == len(model.delivered) and all(key in keys for key in model.delivered)
        assert keys.first_expiry() == model.first_expiry()
        assert all((key in keys) == (key in model.delivered) for key in range(31))


def flood(limit: int, count: int, date: Callable[[int], int], expire_every: int) -> None:
    """Keys added (and expired) in a long run, compared with the old filter all along."""
    keys, model = DatedKeys(limit), DeliveredModel(limit)
    for i in range(count):
        now = i / 10
        assert keys.add(i, date(i), now + 20.0) == model.add(i, date(i), now + 20.0)
        if i % expire_every == 0:
            keys.expire(now)
            model.expire(now)
        assert len(keys) == len(model.delivered) <= limit
        assert keys.first_expiry() == model.first_expiry()
    assert all(key in keys for key in model.delivered)
    keys.expire(count)
    assert len(keys) == 0 and keys.first_expiry() is None


def test_dated_keys_under_a_flood_forget_from_the_middle() -> None:
    flood(50, 5_000, lambda i: (i * 7919) % 1000, 7)  # dated out of order


def test_dated_keys_under_a_flood_forget_from_the_front() -> None:
    flood(50, 5_000, lambda i: i // 3, 400)  # dated in order: forgotten as they came


def test_filters_under_a_flood_hold_no_more_than_their_limit() -> None:
    # Nothing expires: the bound alone keeps them small, whatever order they forget in.
    tracemalloc.start()
    try:
        relayed, delivered = KeyFilter(50), DatedKeys(50)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            relayed.add(i, 1e9)
            delivered.add(i, (i * 7919) % 1000, 1e9)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(relayed) == len(delivered) == 50
    assert grown < 40_000, "20,000 keys in arrays would take 800 kB"


def test_dated_keys_forget_by_date_after_some_expired() -> None:
    keys, model = DatedKeys(3), DeliveredModel(3)
    for key, date, expiry in ((1, 2, 1.0), (2, 1, 9.0), (3, 5, 9.0)):
        keys.add(key, date, expiry)
        model.add(key, date, expiry)
    assert keys.add(4, 6, 9.0) == model.add(4, 6, 9.0) == (1, 2)  # from the middle
    keys.expire(1.0)  # key 1 expires, the earliest dated left: the heap still names it
    model.expire(1.0)
    assert keys.add(5, 7, 9.0) is None and model.add(5, 7, 9.0) is None
    assert keys.add(6, 8, 9.0) == model.add(6, 8, 9.0) == (5, 3)


def test_the_replay_floor_holds_and_is_not_poisoned() -> None:
    core, _ = make_core(1, max_seen=3)
    a = Identity(signer=FastSigner(b"\x0a" * 32))
    handle = open_raw_link(core, a)

    def send(nonce: str, dated: float, now: float) -> bool:
        core.frame_received(handle, signed_frame(a, core.id, nonce, dated, nonce=nonce), now)
        return any(isinstance(event, Delivered) for event in core.events())

    assert [send(f"m{i}", T0 + i, T0 + i) for i in range(4)] == [True] * 4
    # m0, dated earliest, was forgotten to keep the bound: its replay is refused.
    assert not send("m0", T0, T0 + 4) and core.stats.dropped["replay"] == 1
    # One message dated late in the window, then more: the late one is never the earliest
    # dated, so the floor stays below honest clocks.
    assert send("late", T0 + 50, T0 + 5)
    assert [send(f"n{i}", T0 + 6 + i, T0 + 6 + i) for i in range(6)] == [True] * 6
    assert core.stats.dropped["replay"] == 1


def test_bounded_map_moves_and_forgets_as_an_ordered_dict() -> None:
    m: BoundedMap[int, float] = BoundedMap(3, lambda value: value)
    for key in range(200):  # many deletions from the front of the dict
        m.touch(key % 5, float(key))
    assert list(m.entries) == [2, 3, 4] and m.first_expiry() == 197.0
    m.touch(2, 200.0)
    assert list(m.entries) == [3, 4, 2]
    m.expire(198.0)
    assert list(m.entries) == [4, 2] and m.first_expiry() == 199.0


def test_budgets_forget_the_least_recently_used_source() -> None:
    budgets: Budgets[str] = Budgets(rate=0.0, burst=1.0, limit=2)
    assert budgets.take("a", 0.0) and budgets.take("b", 0.0)
    assert budgets.spent("a", 0.0) and budgets.spent("b", 0.0)
    budgets.charge("a", 0.0, 0.0)  # a used last: b is the one forgotten for c
    assert budgets.take("c", 0.0)
    assert budgets.spent("a", 0.0) and not budgets.spent("b", 0.0) and len(budgets) == 2


IDS = st.binary(min_size=20, max_size=20)


@settings(max_examples=100)
@given(
    st.binary(min_size=20, max_size=20),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 24), st.booleans()), max_size=200),
    st.lists(IDS, min_size=25, max_size=25),
    st.integers(1, 3),
)
def test_table_without_lookups_is_the_same_table(
    own: bytes, ops: list[tuple[int, int, bool]], pool: list[bytes], k: int
) -> None:
    # Ids near ours and far, so that buckets fill up and overflow.
    pool = [own[:19] + bytes([own[19] ^ (i + 1)]) if i % 3 == 0 else p for i, p in enumerate(pool)]
    fast: KBucketTable[int] = KBucketTable(own, k)
    lean: KBucketTable[int] = KBucketTable(own, k, lookups=False)
    for step, (op, which, replace) in enumerate(ops):
        peer = bytes(bytearray(pool[which]))  # a fresh copy, as a decoded message gives
        if op == 0:
            assert fast.add(peer, step, replace_oldest=replace) == lean.add(
                peer, step, replace_oldest=replace
            )
        elif op == 1:
            kept = lean.place(peer, step)
            assert kept == fast.place(peer, step)
            # Placed again (a fresh copy), the id comes back as the copy the table keeps.
            assert kept is None or lean.place(bytes(bytearray(peer)), step) is kept
            assert kept is None or fast.place(bytes(bytearray(peer)), step) is fast.place(
                peer, step
            )
        elif op == 2:
            assert fast.remove(peer) == lean.remove(peer)
        assert (peer in fast) == (peer in lean) and fast.get(peer) == lean.get(peer)
        assert list(fast.items()) == list(lean.items()) and len(fast) == len(lean)
        assert fast.bucket_sizes() == lean.bucket_sizes()
    assert own not in lean and lean.get(own) is None and lean.remove(own) is None
    assert "not an id" not in lean
