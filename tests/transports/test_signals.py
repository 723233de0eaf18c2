"""The remote-signal checks shared by the aiortc and the browser WebRTC links: every drop reason,
what is accepted, and that no input at all makes them raise."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_relay.transports import signals
from peer_relay.transports.signals import (
    MAX_CANDIDATE_CHARS,
    MAX_REMOTE_CANDIDATES,
    MAX_SDP_CHARS,
    MAX_SIGNALS,
    REASONS,
    Candidate,
    Description,
    SignalFilter,
    is_mdns_host,
    parse_candidate,
    strip_mdns_candidates,
)

LINE = "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host"
MDNS_LINE = "candidate:2 1 udp 2122 1f0a3c2e-8f5d-4b1e-9c77-0123456789ab.local 5000 typ host"


def cand(line: str = LINE, **fields: Any) -> dict[str, Any]:
    """A trickled candidate signal (simple-peer 9 style) with ``sdpMid "0"`` unless given."""
    body: dict[str, Any] = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}
    body.update(fields)
    return {"type": "candidate", "candidate": body}


# (signal, reason) for a fresh answerer (the side that takes an offer).
DROPPED: list[tuple[object, str]] = [
    (None, "not-an-object"),
    ([], "not-an-object"),
    ("offer", "not-an-object"),
    (42, "not-an-object"),
    ({"type": "renegotiate", "renegotiate": True}, "renegotiate"),
    ({"renegotiate": True}, "renegotiate"),
    ({"type": "transceiverRequest", "transceiverRequest": {"kind": "audio"}}, "transceiverRequest"),
    ({}, "unknown-signal"),
    ({"type": 5}, "unknown-signal"),
    ({"type": "offer"}, "unknown-signal"),
    ({"type": "candidate"}, "unknown-signal"),
    ({"sdp": 3, "type": "offer"}, "bad-sdp"),
    ({"sdp": "", "type": "offer"}, "bad-sdp"),
    ({"sdp": "x" * (MAX_SDP_CHARS + 1), "type": "offer"}, "sdp-too-long"),
    ({"sdp": "v=0", "type": "pranswer"}, "bad-description-type"),
    ({"sdp": "v=0"}, "bad-description-type"),
    ({"sdp": "v=0", "type": "answer"}, "unexpected-answer"),
    ({"candidate": None}, "bad-candidate"),
    ({"candidate": {}}, "bad-candidate"),
    ({"candidate": LINE}, "bad-candidate"),
    (cand(7), "bad-candidate"),  # type: ignore[arg-type]
    (cand("c" * (MAX_CANDIDATE_CHARS + 1)), "bad-candidate"),
    (cand("candidate:garbage"), "bad-candidate"),
    (cand("candidate:1 x udp 1 192.0.2.7 5 typ host"), "bad-candidate"),
    (cand("candidate:1 0 udp 1 192.0.2.7 5 typ host"), "bad-candidate"),
    (cand("candidate:1 1 udp 1 not-an-ip 5 typ host"), "bad-candidate"),
    (cand("candidate:1 1 udp 1 192.0.2.7 70000 typ host"), "bad-candidate"),
    (cand("candidate:1 1 udp 1 192.0.2.7 +5 typ host"), "bad-candidate"),
    (cand("candidate:1 1 udp -1 192.0.2.7 5 typ host"), "bad-candidate"),
    (cand("candidate:1 1 sctp 1 192.0.2.7 5 typ host"), "bad-candidate"),
    (cand(LINE + " raddr 0.0.0.0 rport x"), "bad-candidate"),
    (cand(""), "empty-candidate"),
    ({"candidate": {"candidate": LINE}}, "bad-candidate-mid"),
    (cand(sdpMid=0, sdpMLineIndex=None), "bad-candidate-mid"),
    (cand(sdpMid=None, sdpMLineIndex=True), "bad-candidate-mid"),
    (cand(sdpMid=None, sdpMLineIndex="0"), "bad-candidate-mid"),
    (cand(MDNS_LINE), "mdns-candidate"),
    # A signal is taken or dropped whole: a good description with a bad candidate is dropped.
    ({"type": "offer", "sdp": "v=0", "candidate": {"candidate": ""}}, "empty-candidate"),
]


@pytest.mark.parametrize(("signal", "reason"), DROPPED)
def test_each_malformed_signal_is_dropped_with_its_reason(signal: object, reason: str) -> None:
    assert reason in REASONS
    assert SignalFilter(initiator=False).check(signal) == reason


def test_every_reason_is_exercised() -> None:
    stateful = {
        "closed",
        "too-many-signals",
        "unexpected-offer",
        "duplicate-description",
        "too-many-candidates",
    }
    assert {reason for _signal, reason in DROPPED} | stateful == set(REASONS)


def test_descriptions_go_one_way_and_only_once() -> None:
    offer = {"type": "offer", "sdp": "v=0 offer"}
    assert SignalFilter(initiator=True).check(offer) == "unexpected-offer"
    answerer = SignalFilter(initiator=False)
    assert answerer.check(offer) == (Description("offer", "v=0 offer"),)
    assert answerer.check(offer) == "duplicate-description"
    initiator = SignalFilter(initiator=True)
    answer = {"type": "answer", "sdp": "v=0 answer"}
    assert initiator.check(answer) == (Description("answer", "v=0 answer"),)
    assert initiator.check(answer) == "duplicate-description"


def test_a_dropped_description_does_not_count_as_the_one() -> None:
    link = SignalFilter(initiator=False)
    assert link.check({"type": "offer", "sdp": "v=0", "candidate": None}) == "bad-candidate"
    assert link.check({"type": "offer", "sdp": "v=0"}) == (Description("offer", "v=0"),)


def test_candidates_of_simple_peer_6_and_9_and_their_prefixes() -> None:
    link = SignalFilter(initiator=True)
    sp6 = {"candidate": {"candidate": LINE, "sdpMid": "data", "sdpMLineIndex": 0}}
    body = LINE.removeprefix("candidate:")
    assert link.check(sp6) == (Candidate(LINE, body, "data", 0),)
    assert link.check(cand("a=" + LINE)) == (Candidate("a=" + LINE, body, "0", 0),)
    assert link.check(cand(body, sdpMid=None)) == (Candidate(body, body, None, 0),)
    tcp = "candidate:3 1 TCP 2105524479 2001:db8::1 9 typ host tcptype active"
    assert link.check(cand(tcp, sdpMLineIndex=None)) == (
        Candidate(tcp, tcp.removeprefix("candidate:"), "0", None),
    )
    relay = LINE.replace("typ host", "typ relay raddr 198.51.100.1 rport 3478 generation 0")
    assert isinstance(link.check(cand(relay)), tuple)


def test_mdns_candidates_are_kept_only_where_the_link_resolves_them() -> None:
    assert SignalFilter(initiator=False).check(cand(MDNS_LINE)) == "mdns-candidate"
    kept = SignalFilter(initiator=False, allow_mdns=True).check(cand(MDNS_LINE))
    assert isinstance(kept, tuple) and kept[0] == parse_candidate(
        cand(MDNS_LINE)["candidate"], allow_mdns=True
    )
    assert is_mdns_host("Host.LOCAL.") and not is_mdns_host("192.0.2.7")


def test_mdns_candidates_are_stripped_from_an_sdp() -> None:
    sdp = f"v=0\r\na={MDNS_LINE}\r\na={LINE}\r\na=mid:0\r\n"
    assert strip_mdns_candidates(sdp) == (f"v=0\r\na={LINE}\r\na=mid:0\r\n", 1)


def test_limits_on_signals_and_candidates() -> None:
    link = SignalFilter(initiator=True, max_signals=5, max_candidates=2)
    assert isinstance(link.check(cand()), tuple)
    assert isinstance(link.check(cand()), tuple)
    assert link.check(cand()) == "too-many-candidates"
    assert link.check({}) == "unknown-signal"  # counted as a signal all the same
    assert link.check({"type": "answer", "sdp": "v=0"}) == (Description("answer", "v=0"),)
    assert link.check({"type": "answer", "sdp": "v=0"}) == "too-many-signals"
    assert link.check(None) == "not-an-object"  # not an object is not counted
    defaults = SignalFilter(initiator=True)
    results = [defaults.check(cand()) for _ in range(MAX_SIGNALS + 1)]
    assert results.count("too-many-candidates") == MAX_SIGNALS - MAX_REMOTE_CANDIDATES
    assert results[-1] == "too-many-signals"


def test_a_closed_link_takes_nothing() -> None:
    link = SignalFilter(initiator=False)
    link.close()
    assert link.check({"type": "offer", "sdp": "v=0"}) == "closed"
    assert link.check(None) == "closed"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
NUMBER = st.sampled_from(["1", "2", "256", "54321", "65535"]) | st.sampled_from(
    ["0", "257", "65536", "+5", "-1", "1_0", "٣", "x"]
)
HOST = st.sampled_from(["192.0.2.7", "::1", "2001:db8::1", "x.local", "x.local.", "localhost"])
EXTRA = st.sampled_from(["raddr", "rport", "generation", "tcptype", "ufrag", "0", "x", "1.2.3.4"])
# Candidate lines near the valid ones: each field picked from good and bad values.
LINES = st.builds(
    lambda prefix, fields, extras: prefix + " ".join([*fields, *extras]),
    st.sampled_from(["candidate:", "a=candidate:", "", "a="]),
    st.tuples(
        st.sampled_from(["1", "foundation", ""]),
        NUMBER,
        st.sampled_from(["udp", "UDP", "tcp"]) | st.sampled_from(["sctp", ""]),
        NUMBER,
        HOST,
        NUMBER,
        st.sampled_from(["typ", "type"]),
        st.sampled_from(["host", "srflx", "relay"]),
    ).map(lambda fields: [f for f in fields if f]),
    st.lists(EXTRA | NUMBER, max_size=6),
)
KEYS = st.sampled_from(
    ["type", "sdp", "candidate", "sdpMid", "sdpMLineIndex", "renegotiate", "transceiverRequest"]
)
SIGNAL_LIKE = st.recursive(
    JSON | LINES | st.sampled_from(["offer", "answer", "candidate", "renegotiate"]),
    lambda inner: st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(initiator=st.booleans(), mdns=st.booleans(), inputs=st.lists(JSON | SIGNAL_LIKE))
def test_never_raises_on_any_json_like_input(
    initiator: bool, mdns: bool, inputs: list[object]
) -> None:
    link = SignalFilter(initiator, allow_mdns=mdns)
    for value in inputs:
        result = link.check(value)
        if isinstance(result, str):
            assert result in REASONS
        else:
            assert result and all(isinstance(p, Description | Candidate) for p in result)


@settings(max_examples=400, deadline=None)
@given(line=LINES, mid=st.none() | st.text(max_size=3), index=st.none() | st.integers(0, 3))
def test_what_is_accepted_aiortc_parses(line: str, mid: str | None, index: int | None) -> None:
    sdp = pytest.importorskip("aiortc.sdp")
    parsed = parse_candidate({"candidate": line, "sdpMid": mid, "sdpMLineIndex": index})
    if isinstance(parsed, Candidate):
        candidate = sdp.candidate_from_sdp(parsed.sdp)
        assert 0 < candidate.port < 65536 and 0 < candidate.component < 257
        assert candidate.protocol.lower() in ("udp", "tcp")


def test_the_module_is_pure() -> None:
    """No aiortc, no asyncio, nothing but the standard library (it runs in Pyodide)."""
    tree = ast.parse(Path(signals.__file__).read_text())
    imported = {
        alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
    }
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "ipaddress", "collections.abc", "dataclasses", "typing"}
