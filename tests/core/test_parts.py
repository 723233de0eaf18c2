"""Small parts of the core on their own: the bounded map, the token bucket, link states, and
the config in force."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from peer_relay.core import LinkState, link
from peer_relay.core.bounded import BoundedMap, TokenBucket, expires_at
from peer_relay.events import SendFrame
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner

from .test_core import T0, make_core, open_raw_link


def test_bounded_map_keeps_its_limit_and_order() -> None:
    m: BoundedMap[str, float] = BoundedMap(3, expires_at)
    for i, key in enumerate("abcd"):
        m.put(key, float(i))
    assert list(m.entries) == ["b", "c", "d"]  # the oldest went
    m.put("b", 9.0)  # an existing key keeps its place
    assert list(m.entries) == ["b", "c", "d"] and m.entries["b"] == 9.0
    m.touch("c", 10.0)  # touch moves it last
    assert list(m.entries) == ["b", "d", "c"]
    m.touch("e", 11.0)
    assert list(m.entries) == ["d", "c", "e"] and len(m) == 3


def test_bounded_map_expires_from_the_front_only() -> None:
    m: BoundedMap[str, float] = BoundedMap(10, expires_at)
    for key, expiry in (("a", 1.0), ("b", 2.0), ("c", 5.0), ("d", 3.0)):
        m.put(key, expiry)
    assert m.first_expiry() == 1.0
    m.expire(3.0)
    # "d" has expired too, but waits behind "c": entries go in the order they were made.
    assert list(m.entries) == ["c", "d"]
    m.expire(5.0)
    assert not m.entries and m.first_expiry() is None
    never: BoundedMap[str, str] = BoundedMap(2)
    never.put("x", "y")
    never.expire(1e18)
    assert list(never.entries) == ["x"] and never.first_expiry() is None


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=200), st.integers(1, 8))
def test_bounded_map_never_exceeds_its_limit(ops: list[tuple[int, bool]], limit: int) -> None:
    m: BoundedMap[int, float] = BoundedMap(limit, expires_at)
    for key, touch in ops:
        (m.touch if touch else m.put)(key, 0.0)
        assert len(m) <= limit


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token after half a second
    assert sum(bucket.take(100.0) for _ in range(10)) == 4  # never more than the burst


def test_link_states_order_handshakes_before_open() -> None:
    assert list(LinkState) == sorted(LinkState)
    # The plain ints the hot paths compare are the enum's values.
    assert list(LinkState) == [link.DIALING, link.HELLO, link.PROOF, link.OPEN, link.DRAINING]
    assert all(state < LinkState.OPEN for state in (LinkState.DIALING, LinkState.HELLO))
    assert LinkState.PROOF < LinkState.OPEN < LinkState.DRAINING


def test_config_in_force_follows_set_url() -> None:
    core, _ = make_core(1)
    assert core.config.url is None and core.url is None
    core.set_url("ws://example.test:1")
    assert core.config.url == "ws://example.test:1" == core.url
    # It is the URL an offer advertises.
    open_raw_link(core, Identity(signer=FastSigner(b"\x02" * 32)))
    core.events()
    core.connect(bytes(20), T0)
    frames = [orjson.loads(e.frame) for e in core.events() if isinstance(e, SendFrame)]
    offers = [
        f["data"]["data"] for f in frames if f.get("data", {}).get("type") == "handshake-offer"
    ]
    assert offers == [{"ws": "ws://example.test:1", "wrtc": False}]
