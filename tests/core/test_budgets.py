"""Per-source budgets of the core (issue 13), on a virtual clock: handshakes per source address,
requests per sender and per link, forgeries per link, the slow canonical form, offers that ask
a peer to dial, and replays across a restart."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_relay import wire
from peer_relay.core import Config, Core
from peer_relay.events import CloseLink, Delivered, DialWebSocket, SendFrame
from peer_relay.identity import Identity
from peer_relay.sim import FastSigner, fast_verify

from .test_core import T0, make_core, open_raw_link


def ident(seed: int) -> Identity:
    return Identity(signer=FastSigner(bytes([seed]) * 32))


def signed(
    origin: Identity,
    to: bytes,
    kind: str,
    payload: Any,
    now: float,
    nonce: str,
    *,
    data_json: bytes | None = None,
    forge: bool = False,
) -> bytes:
    """A signed envelope from ``origin`` (its signature spoilt if ``forge``); ``data_json``
    replaces the data as written on the wire."""
    body = wire.canonical({"type": kind, "data": payload})
    ts = int(now * 1000)
    sig = origin.sign(wire.signed_bytes(to.hex(), origin.id.hex(), nonce, ts, body))
    if forge:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    auth = {"key": wire.b64encode(origin.public_key), "sig": wire.b64encode(sig), "ts": ts}
    return wire.origin_frame(to.hex(), origin.id.hex(), nonce, data_json or body, auth)


def relayed(frame: bytes, via: Identity) -> bytes:
    """``frame`` as relay ``via`` (one of our peers) passes it on."""
    env = wire.parse_envelope(wire.loads_members(frame, 1 << 20))
    return wire.relay_frame(env, via.id.hex())


def answers(core: Core) -> int:
    """How many frames the core sent (each answer to a findPeers is one)."""
    return sum(isinstance(e, SendFrame) for e in core.events())


# --------------------------------------------------------------------- handshakes per source


def test_one_source_holds_at_most_its_share_of_pending_handshakes() -> None:
    core, _ = make_core(1, max_pending_per_source=4)
    handles = [core.link_accepted(T0, "ws", "10.0.0.9") for _ in range(6)]
    closed = {e.handle for e in core.events() if isinstance(e, CloseLink)}
    assert closed == set(handles[4:])
    assert core.stats.dropped["too-many-pending-source"] == 2
    assert core.bounds()["pending_links"][0] == 4


def test_a_host_can_tell_before_the_upgrade_whether_a_source_would_be_taken() -> None:
    core, _ = make_core(1, max_pending_per_source=2)
    assert core.admits("10.0.0.9") and core.admits(None)
    for _ in range(2):
        core.link_accepted(T0, "ws", "10.0.0.9")
    assert not core.admits("10.0.0.9")
    assert core.admits("10.0.0.10")


def test_a_newcomer_takes_the_slot_of_the_source_holding_most() -> None:
    core, _ = make_core(1, max_pending_links=8, max_pending_per_source=4)
    flood = [core.link_accepted(T0, "ws", f"10.0.0.{i % 4}") for i in range(8)]
    core.events()
    newcomer = core.link_accepted(T0, "ws", "192.0.2.1")
    closed = [e for e in core.events() if isinstance(e, CloseLink)]
    assert [e.handle for e in closed] == [flood[0]]  # the oldest of the heaviest source
    assert closed[0].reason == "pending-evicted"
    assert newcomer not in {e.handle for e in closed}
    # A source already holding as many as any other is refused instead.
    again = core.link_accepted(T0, "ws", "10.0.0.1")
    assert CloseLink(again, "too-many-pending") in core.events()


def test_an_idle_connection_is_closed_after_hello_timeout() -> None:
    core, _ = make_core(1, hello_timeout=3.0)
    handle = core.link_accepted(T0, "ws", "10.0.0.9")
    core.events()
    core.handle_timer(T0 + 2.0)
    assert not any(isinstance(e, CloseLink) for e in core.events())
    core.handle_timer(T0 + 4.1)
    assert CloseLink(handle, "handshake-timeout") in core.events()


def test_our_own_dials_do_not_wait_for_inbound_handshakes() -> None:
    core, _ = make_core(1, max_pending_links=4, max_pending_per_source=4)
    for _ in range(4):
        core.link_accepted(T0, "ws", "10.0.0.9")
    core.events()
    core.bootstrap(["ws://192.0.2.7:9"], T0)
    assert any(isinstance(e, DialWebSocket) for e in core.events())


# --------------------------------------------------------------------- requests and forgeries


def counting_core(**config: Any) -> tuple[Core, list[int]]:
    """A core whose signature checks are counted."""
    calls: list[int] = []

    def verify(key: bytes, sig: bytes, data: bytes) -> bool:
        calls.append(1)
        return fast_verify(key, sig, data)

    core = Core(ident(1), Config(**config), rng=random.Random(1), now=T0, verify=verify)
    return core, calls


def test_a_flooding_sender_is_refused_before_its_signature_is_checked() -> None:
    core, calls = counting_core(peer_control_rate=5.0)
    flooder, prober = ident(2), ident(3)
    link = open_raw_link(core, flooder)
    core.events()
    calls.clear()  # the link proof
    for i in range(100):
        core.frame_received(link, signed(flooder, core.id, "findPeers", core.hex, T0, f"f{i}"), T0)
    events = core.events()
    assert sum(isinstance(e, SendFrame) for e in events) == 10  # the burst: twice the rate
    assert core.stats.dropped["rate-limited-peer"] == 90
    assert len(calls) == 10
    # It flooded in its own name: after max_strikes refusals, its link is closed.
    assert CloseLink(link, "misbehaving") in events
    # The prober, through another link, is answered in full.
    other = open_raw_link(core, prober)
    core.events()
    for i in range(5):
        core.frame_received(other, signed(prober, core.id, "findPeers", core.hex, T0, f"p{i}"), T0)
    assert answers(core) == 5


def test_forgeries_do_not_spend_the_budget_of_the_peer_they_name() -> None:
    core, _ = make_core(1, peer_control_rate=1.0)
    honest, relay = ident(2), ident(3)
    link = open_raw_link(core, relay)
    core.events()
    for i in range(20):
        forged = signed(honest, core.id, "findPeers", core.hex, T0, f"x{i}", forge=True)
        core.frame_received(link, relayed(forged, relay), T0)
    assert core.stats.dropped["bad-signature"] == 20
    assert answers(core) == 0
    for i in range(2):
        frame = relayed(signed(honest, core.id, "findPeers", core.hex, T0, f"h{i}"), relay)
        core.frame_received(link, frame, T0)
    assert answers(core) == 2


def test_forgeries_injected_through_an_honest_relay_spend_the_injectors_budget() -> None:
    """X hands forgeries to our peer R, which relays them: each peer checks that the last hop
    of a message is the peer it got it from, so the hop before R is X, and X's budget is what
    the forgeries spend. Honest messages through R keep being checked and delivered."""
    core, calls = counting_core(link_control_rate=5.0)
    relay, injector, alice = ident(3), ident(4), ident(5)
    link = open_raw_link(core, relay)
    core.events()
    calls.clear()
    for i in range(40):
        forged = signed(alice, core.id, "user", i, T0, f"f{i}", forge=True)
        core.frame_received(link, relayed(relayed(forged, injector), relay), T0)
    assert len(calls) == 10  # twice the rate, then refused unchecked
    assert core.stats.dropped["check-budget"] == 30
    honest = signed(alice, core.id, "user", "real", T0, "ok")
    core.frame_received(link, relayed(honest, relay), T0)
    events = core.events()
    assert [e.data for e in events if isinstance(e, Delivered)] == ["real"]
    assert not any(isinstance(e, CloseLink) for e in events)


def test_a_relay_bringing_forgeries_from_many_has_them_refused_unchecked_and_stays_open() -> None:
    """A relay can name any hop before it: what one link brings has a budget of its own, four
    times one injector's; past it, what comes through the link is refused unchecked until the
    budget refills, and the link stays open (the relay may be honest)."""
    core, calls = counting_core(link_control_rate=5.0)
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    calls.clear()
    for i in range(80):
        forged = signed(ident(10 + i), core.id, "user", i, T0, "n", forge=True)
        core.frame_received(link, relayed(forged, relay), T0)
    assert len(calls) == 40  # the link's burst: eight times link_control_rate
    assert core.stats.dropped["check-budget"] == 40
    assert not any(isinstance(e, CloseLink) for e in core.events())
    later = T0 + 2.0
    frame = relayed(signed(ident(9), core.id, "user", 1, later, "ok"), relay)
    core.frame_received(link, frame, later)
    assert any(isinstance(e, Delivered) for e in core.events())


def test_a_peer_forging_its_own_messages_is_disconnected() -> None:
    core, _ = make_core(1, max_strikes=4)
    liar = ident(2)
    link = open_raw_link(core, liar)
    core.events()
    for i in range(4):
        core.frame_received(link, signed(liar, core.id, "user", i, T0, f"l{i}", forge=True), T0)
    assert CloseLink(link, "misbehaving") in core.events()


def test_data_needing_the_slow_canonical_form_is_budgeted_per_link() -> None:
    core, _ = make_core(1, slow_check_rate=1000.0)
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    floats = [1e300] * 100  # written as 1e+300 by both, yet only RFC 8785 can say so
    data = orjson.dumps({"data": floats, "type": "user"})
    for i in range(10):
        forged = signed(ident(10 + i), core.id, "user", floats, T0, "n", forge=True)
        core.frame_received(link, relayed(forged, relay), T0)
    # A burst of 2,000 bytes, ~710 bytes each: checked while the budget holds one more...
    assert core.stats.dropped["bad-signature"] == 2
    assert core.stats.dropped["check-budget"] == 8
    # ...while the same data, honestly signed, is delivered once the budget refills.
    later = T0 + 30.0
    frame = signed(ident(9), core.id, "user", floats, later, "ok", data_json=data)
    core.frame_received(link, relayed(frame, relay), later)
    assert [e.data for e in core.events() if isinstance(e, Delivered)] == [floats]


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**60), 2**60)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=5),
        max_leaves=20,
    )
)
def test_the_quick_form_is_the_canonical_form_whenever_it_says_so(value: Any) -> None:
    parsed = orjson.loads(orjson.dumps({"type": "user", "data": value}))
    text, exact = wire.quick_canonical(parsed)
    assert text == orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)
    if exact:
        assert text == wire.canonical_received(parsed)[0]


# --------------------------------------------------------------------- offers and restarts


def client_core(**config: Any) -> tuple[Core, int, Identity]:
    """A peer that cannot be dialled, with one link (to a relay)."""
    core, _ = make_core(1, url=None, **config)
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    return core, link, relay


def test_offers_lead_a_client_to_dial_only_ws_urls_once_per_sender() -> None:
    core, link, relay = client_core()
    bad = ["http://192.0.2.1/", "javascript:alert(1)", "ws://192.0.2.1:99999", 7]
    for i, url in enumerate(bad):
        offer = signed(
            ident(20 + i), core.id, "handshake-offer", {"ws": url, "wrtc": False}, T0, "o"
        )
        core.frame_received(link, relayed(offer, relay), T0)
    assert not any(isinstance(e, DialWebSocket) for e in core.events())
    assert core.stats.dropped["offer-bad-url"] == len(bad)
    asker = ident(30)
    for i in range(3):
        offer = signed(asker, core.id, "handshake-offer", {"ws": "ws://192.0.2.2:1"}, T0, f"a{i}")
        core.frame_received(link, relayed(offer, relay), T0)
    dials = [e for e in core.events() if isinstance(e, DialWebSocket)]
    assert [(d.url, d.expected_id) for d in dials] == [("ws://192.0.2.2:1", asker.id)]
    assert core.stats.dropped["offer-repeated"] == 2


def test_a_full_client_does_not_dial_peers_it_would_not_keep() -> None:
    core, link, relay = client_core(max_links=1, strategy="original")
    offer = signed(ident(40), core.id, "handshake-offer", {"ws": "ws://192.0.2.3:1"}, T0, "o")
    core.frame_received(link, relayed(offer, relay), T0)
    assert not any(isinstance(e, DialWebSocket) for e in core.events())
    assert core.stats.dropped["offer-unwanted"] == 1


def test_a_restarted_peer_refuses_messages_dated_before_it_started() -> None:
    sender = ident(2)
    first, identity = make_core(1)
    link = open_raw_link(first, sender)
    first.events()
    frame = signed(sender, first.id, "user", "once", T0, "r1")
    first.frame_received(link, frame, T0)
    assert [e.data for e in first.events() if isinstance(e, Delivered)] == ["once"]
    restarted = Core(identity, Config(), rng=random.Random(1), now=T0 + 5.0, verify=fast_verify)
    again = open_raw_link(restarted, sender, T0 + 5.0)
    restarted.events()
    restarted.frame_received(again, frame, T0 + 5.0)
    assert not any(isinstance(e, Delivered) for e in restarted.events())
    assert restarted.stats.dropped["before-start"] == 1


def test_requests_disguised_as_user_messages_are_charged_to_their_link() -> None:
    """A request whose data looks like a user message at a glance (a repeated ``type`` key,
    the last one winning) passes the check before the signature; once read, its sender's budget
    refuses it, and the check it cost is charged to the link it came through."""
    core, calls = counting_core(peer_control_rate=5.0, link_control_rate=5.0)
    relay, sender = ident(3), ident(4)
    link = open_raw_link(core, relay)
    core.events()
    calls.clear()
    for i in range(100):
        value = {"data": core.hex, "pad": "x" * 1100, "type": "findPeers", "z": i}
        body = wire.canonical(value)
        ts = int(T0 * 1000)
        sig = sender.sign(wire.signed_bytes(core.hex, sender.id.hex(), f"d{i}", ts, body))
        auth = {"key": wire.b64encode(sender.public_key), "sig": wire.b64encode(sig), "ts": ts}
        written = b'{"type":"user",' + body[1:]
        frame = wire.origin_frame(core.hex, sender.id.hex(), f"d{i}", written, auth)
        core.frame_received(link, relayed(frame, relay), T0)
    events = core.events()
    assert sum(isinstance(e, SendFrame) for e in events) == 10  # the sender's burst answered
    assert core.stats.dropped["check-budget"] >= 45
    assert len(calls) <= 2 * 50  # as written, then read: for 10 answered and 40 refused
    assert not any(isinstance(e, CloseLink) for e in events)


def test_an_offer_we_refused_is_made_up_for_when_we_ask_that_peer_ourselves() -> None:
    """When both ask at once, the higher id answers. If we (higher) refused the lower peer's
    offer for want of budget, our own offer asks to be answered, and the lower peer answers it
    instead of waiting for an answer that will not come."""
    low, high = sorted((ident(50), ident(51)), key=lambda i: i.id)
    core = Core(
        high, Config(peer_control_rate=0.5), rng=random.Random(1), now=T0, verify=fast_verify
    )
    relay = ident(3)
    link = open_raw_link(core, relay)
    core.events()
    for i in range(3):  # the first spends the burst of one
        offer = signed(low, core.id, "handshake-offer", {"ws": None, "wrtc": False}, T0, f"o{i}")
        core.frame_received(link, relayed(offer, relay), T0)
    assert core.stats.dropped["rate-limited-peer"] == 2
    core.events()
    core.connect(low.id, T0)
    sent = [orjson.loads(e.frame) for e in core.events() if isinstance(e, SendFrame)]
    assert [m["data"]["data"] for m in sent] == [{"unanswered": True, "wrtc": False, "ws": None}]
    # The lower peer, asking the higher at the same time, answers such an offer.
    lower = Core(
        low, Config(url="ws://192.0.2.9:1"), rng=random.Random(2), now=T0, verify=fast_verify
    )
    back = open_raw_link(lower, relay)
    lower.connect(high.id, T0)
    lower.events()
    lower.frame_received(back, relayed(orjson.dumps(sent[0]), relay), T0)
    answers = [orjson.loads(e.frame) for e in lower.events() if isinstance(e, SendFrame)]
    assert [a["data"]["type"] for a in answers] == ["handshake-answer"]
