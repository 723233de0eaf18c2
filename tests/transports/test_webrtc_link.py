"""RTCLink: two links in one process, signals relayed through queues, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("aiortc")

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from peer_relay.transports import webrtc
from peer_relay.transports.webrtc import (
    BufferFullError,
    FrameTooLargeError,
    LinkNotOpenError,
    RTCConfig,
    RTCLink,
)

pytestmark = pytest.mark.webrtc

LOOPBACK = RTCConfig(host_addresses=("127.0.0.1",), open_timeout=10.0)
WAIT = 10.0  # generous upper bound for anything that should take milliseconds

Signal = dict[str, Any]
Transform = Callable[[Signal], list[Signal]]


class Peer:
    """One RTCLink plus everything its callbacks report."""

    def __init__(self, name: str, initiator: bool, config: RTCConfig) -> None:
        self.name = name
        self.outbox: asyncio.Queue[Signal] = asyncio.Queue()
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reasons: list[str] = []
        self.link = RTCLink(
            initiator=initiator,
            on_signal=self.outbox.put_nowait,
            on_open=self.opened.set,
            on_frame=self.frames.put_nowait,
            on_close=self._on_close,
            config=config,
        )

    def _on_close(self, reason: str) -> None:
        self.close_reasons.append(reason)
        self.closed.set()

    async def frame(self) -> str:
        return await asyncio.wait_for(self.frames.get(), WAIT)


async def relay(src: Peer, dst: Peer, transform: Transform | None) -> None:
    """Deliver src's signals to dst, in order, as a relaying node would."""
    while True:
        signal = await src.outbox.get()
        for item in transform(signal) if transform else [signal]:
            dst.link.add_signal(item)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll in the current task (no helper task, so task-leak checks stay exact)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def assert_released(fds_before: int) -> None:
    """No tasks, sockets or patches left behind."""
    await wait_until(lambda: not other_tasks(), "aiortc tasks to finish")
    await wait_until(lambda: open_fds() <= fds_before, "sockets to close")
    assert aioice.ice.get_host_addresses is not webrtc._scoped_get_host_addresses
    assert webrtc._override_users == 0


@contextlib.asynccontextmanager
async def link_pair(
    config_a: RTCConfig = LOOPBACK,
    config_b: RTCConfig = LOOPBACK,
    *,
    a_to_b: Transform | None = None,
    b_to_a: Transform | None = None,
    deliver: bool = True,
    check_release: bool = True,
) -> AsyncIterator[tuple[Peer, Peer]]:
    """Initiator a and answerer b; on exit both are closed and everything is released."""
    fds_before = open_fds()
    a, b = Peer("a", True, config_a), Peer("b", False, config_b)
    relays = []
    if deliver:
        relays = [
            asyncio.create_task(relay(a, b, a_to_b)),
            asyncio.create_task(relay(b, a, b_to_a)),
        ]
    try:
        await b.link.start()
        await a.link.start()
        yield a, b
    finally:
        await a.link.close()
        await b.link.close()
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
    assert len(a.close_reasons) == 1 and len(b.close_reasons) == 1
    if check_release:
        await assert_released(fds_before)


async def both_open(a: Peer, b: Peer) -> None:
    await asyncio.wait_for(asyncio.gather(a.opened.wait(), b.opened.wait()), WAIT)
    assert a.link.is_open and b.link.is_open


# --- simulated trickle ------------------------------------------------------------


def split_candidates(signal: Signal, style: str) -> list[Signal]:
    """Turn a full-SDP signal into simple-peer-style trickled candidates + bare SDP."""
    lines = signal["sdp"].split("\r\n")
    mid = next(line[len("a=mid:") :] for line in lines if line.startswith("a=mid:"))
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    bare = [
        line
        for line in lines
        if not line.startswith("a=candidate:") and line != "a=end-of-candidates"
    ]
    assert candidates, "aiortc should put its candidates in the SDP"
    trickled: list[Signal] = []
    for cand in candidates:
        body = {"candidate": cand, "sdpMLineIndex": 0, "sdpMid": mid}
        trickled.append(
            {"type": "candidate", "candidate": body} if style == "sp9" else {"candidate": body}
        )
    # Candidates first: the remote must queue them until the description is set.
    return [*trickled, {"type": signal["type"], "sdp": "\r\n".join(bare)}]


# --- tests ------------------------------------------------------------------------


async def test_open_and_frames_both_ways() -> None:
    async with link_pair() as (a, b):
        await both_open(a, b)
        a.link.send("hello")
        b.link.send("héllo wörld ✓ 🚀 \u4e2d\u6587")
        assert await b.frame() == "hello"
        assert await a.frame() == "héllo wörld ✓ 🚀 \u4e2d\u6587"

        big = ("0123456789abcdef" * 4096)[:-3] + "✓"  # 65,536 bytes in UTF-8
        assert len(big.encode()) == 64 * 1024
        a.link.send(big)
        b.link.send(big)
        assert await b.frame() == big
        assert await a.frame() == big

        for i in range(200):  # ordered and reliable
            a.link.send(f"m{i}")
        assert [await b.frame() for _ in range(200)] == [f"m{i}" for i in range(200)]
        a.link.send("")
        assert await b.frame() == ""
    assert a.close_reasons == ["closed"]


@pytest.mark.parametrize("closer", ["initiator", "answerer"])
async def test_close_reported_on_both_sides(closer: str) -> None:
    async with link_pair() as (a, b):
        await both_open(a, b)
        first, second = (a, b) if closer == "initiator" else (b, a)
        first.link.send("last words")  # queued before close: must still arrive
        await first.link.close()
        assert first.close_reasons == ["closed"]
        assert not first.link.is_open
        await asyncio.wait_for(second.closed.wait(), WAIT)
        assert second.close_reasons == ["remote-closed"]
        assert await second.frame() == "last words"
        with pytest.raises(LinkNotOpenError):
            first.link.send("x")
        with pytest.raises(LinkNotOpenError):
            second.link.send("x")
        await first.link.close()  # idempotent: no second on_close
        await second.link.close()
        assert first.close_reasons == ["closed"]
        assert second.close_reasons == ["remote-closed"]


async def test_open_timeout_when_signals_are_never_delivered() -> None:
    config = RTCConfig(host_addresses=("127.0.0.1",), open_timeout=0.5)
    async with link_pair(config, config, deliver=False) as (a, b):
        assert (await a.outbox.get())["type"] == "offer"  # offered, but nobody hears it
        await asyncio.wait_for(asyncio.gather(a.closed.wait(), b.closed.wait()), WAIT)
        assert a.close_reasons == ["timeout"]
        assert b.close_reasons == ["timeout"]
        assert not a.opened.is_set() and not b.opened.is_set()


async def test_timeout_after_offer_with_answer_withheld() -> None:
    config = RTCConfig(host_addresses=("127.0.0.1",), open_timeout=0.5)
    async with link_pair(config, config, b_to_a=lambda s: []) as (a, b):
        await asyncio.wait_for(asyncio.gather(a.closed.wait(), b.closed.wait()), WAIT)
        assert a.close_reasons == ["timeout"]
        # b got the offer and answered; ICE may even have connected from b's side,
        # but without a's DTLS/SCTP the channel never opens.
        assert b.close_reasons[0] in ("timeout", "remote-closed")


@pytest.mark.parametrize("style", ["sp6", "sp9"])
async def test_candidates_before_description_still_connect(style: str) -> None:
    def split(signal: Signal) -> list[Signal]:
        return split_candidates(signal, style)

    async with link_pair(a_to_b=split, b_to_a=split) as (a, b):
        await both_open(a, b)
        a.link.send("through trickled candidates")
        assert await b.frame() == "through trickled candidates"
        assert not a.link.dropped and not b.link.dropped


MDNS_CANDIDATE = "candidate:2 1 udp 2122 1f0a3c2e-8f5d-4b1e-9c77-0123456789ab.local 5000 typ host"

MALFORMED: list[tuple[object, str]] = [
    (None, "not-an-object"),
    ([], "not-an-object"),
    ("offer", "not-an-object"),
    (42, "not-an-object"),
    ({}, "unknown-signal"),
    ({"type": 5}, "unknown-signal"),
    ({"type": "offer"}, "unknown-signal"),
    ({"type": "candidate"}, "unknown-signal"),
    ({"sdp": 3}, "bad-sdp"),
    ({"sdp": ""}, "bad-sdp"),
    ({"sdp": "v=0", "type": "pranswer"}, "bad-description-type"),
    ({"sdp": "v=0"}, "bad-description-type"),
    ({"sdp": "x" * (webrtc.MAX_SDP_CHARS + 1), "type": "offer"}, "sdp-too-long"),
    ({"candidate": {}}, "bad-candidate"),
    ({"candidate": None}, "bad-candidate"),
    ({"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}, "bad-candidate"),
    ({"candidate": {"candidate": 7, "sdpMid": "0"}}, "bad-candidate"),
    ({"candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}}, "bad-candidate"),
    (
        {"candidate": {"candidate": "candidate:1 x udp 1 1.2.3.4 5 typ host", "sdpMid": "0"}},
        "bad-candidate",
    ),
    (
        {"candidate": {"candidate": "candidate:1 1 udp 1 not-an-ip 5 typ host", "sdpMid": "0"}},
        "bad-candidate",
    ),
    (
        {"candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 70000 typ host", "sdpMid": "0"}},
        "bad-candidate",
    ),
    (
        {"candidate": {"candidate": "candidate:1 1 sctp 1 1.2.3.4 5 typ host", "sdpMid": "0"}},
        "bad-candidate",
    ),
    ({"candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}}, "bad-candidate-mid"),
    (
        {
            "candidate": {
                "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
                "sdpMLineIndex": True,
            }
        },
        "bad-candidate-mid",
    ),
    (
        {"candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": 0}},
        "bad-candidate-mid",
    ),
    ({"candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}}, "empty-candidate"),
    (
        {
            "type": "candidate",
            "candidate": {
                "candidate": MDNS_CANDIDATE,
                "sdpMid": "0",
                "sdpMLineIndex": 0,
            },
        },
        "mdns-candidate",
    ),
    ({"type": "renegotiate", "renegotiate": True}, "renegotiate"),
    ({"type": "transceiverRequest", "transceiverRequest": {"kind": "audio"}}, "transceiverRequest"),
]


async def test_malformed_signals_are_counted_not_raised() -> None:
    async with link_pair() as (a, b):
        for signal, _reason in MALFORMED:
            a.link.add_signal(signal)
            b.link.add_signal(signal)
        expected: dict[str, int] = {}
        for _signal, reason in MALFORMED:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(b.link.dropped) == expected
        # The garbage did not disturb the real negotiation.
        await both_open(a, b)
        a.link.add_signal({"type": "offer", "sdp": "v=0\r\n"})  # the initiator takes no offer
        b.link.add_signal({"type": "answer", "sdp": "v=0\r\n"})  # and the answerer no answer
        assert a.link.dropped["unexpected-offer"] == 1
        assert b.link.dropped["unexpected-answer"] == 1
        b.link.add_signal({"type": "offer", "sdp": "v=0\r\n"})  # no renegotiation either
        await wait_until(lambda: b.link.dropped["duplicate-description"] == 1, "a counted drop")
        a.link.send("still fine")
        assert await b.frame() == "still fine"
    b.link.add_signal({"candidate": {"candidate": "x"}})
    assert b.link.dropped["closed"] == 1


async def test_frame_limits() -> None:
    small = RTCConfig(host_addresses=("127.0.0.1",), max_frame=1000)
    async with link_pair(LOOPBACK, small) as (a, b):
        with pytest.raises(LinkNotOpenError):
            a.link.send("too early")
        await both_open(a, b)
        with pytest.raises(FrameTooLargeError):
            b.link.send("x" * 1001)
        with pytest.raises(FrameTooLargeError):
            b.link.send("✓" * 334)  # 1,002 bytes in UTF-8
        b.link.send("✓" * 333)
        assert await a.frame() == "✓" * 333
        with pytest.raises(FrameTooLargeError):  # aiortc's max-message-size is 256 KiB
            a.link.send("x" * (256 * 1024 + 1))

        # Incoming: oversized and non-UTF-8 frames are dropped and counted.
        a.link.send("y" * 1001)
        assert a.link._channel is not None
        a.link._channel.send(b"\xff\xfe")
        a.link._channel.send("bytes ✓".encode())
        a.link.send("after")
        assert await b.frame() == "bytes ✓"
        assert await b.frame() == "after"
        assert b.link.dropped["frame-too-large"] == 1
        assert b.link.dropped["invalid-utf8"] == 1


async def test_backpressure_raises_then_drains() -> None:
    tight = RTCConfig(host_addresses=("127.0.0.1",), max_buffered=200_000)
    async with link_pair(tight, LOOPBACK) as (a, b):
        await both_open(a, b)
        chunk = "z" * 30_000
        sent = 0
        with pytest.raises(BufferFullError):
            for _ in range(100):
                a.link.send(chunk)
                sent += 1
        assert sent == 200_000 // 30_000
        assert a.link.buffered_amount <= tight.max_buffered
        await asyncio.wait_for(a.link.drain(), WAIT)
        assert a.link.buffered_amount <= tight.max_buffered // 2
        a.link.send(chunk)
        received = [await b.frame() for _ in range(sent + 1)]
        assert received == [chunk] * (sent + 1)


async def test_dtls_failure_reports_failed() -> None:
    def corrupt_fingerprint(signal: Signal) -> list[Signal]:
        sdp = re.sub(
            r"a=fingerprint:sha-256 [0-9A-F:]+",
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
            signal["sdp"],
        )
        return [{"type": signal["type"], "sdp": sdp}]

    config = RTCConfig(host_addresses=("127.0.0.1",), open_timeout=1.5)
    async with link_pair(config, config, b_to_a=corrupt_fingerprint) as (a, b):
        await asyncio.wait_for(asyncio.gather(a.closed.wait(), b.closed.wait()), WAIT)
        assert a.close_reasons == ["failed"]
        # aiortc sends no DTLS alert on a fingerprint mismatch: b, whose handshake
        # succeeded, only learns of it through its own open timeout.
        assert b.close_reasons == ["timeout"]
        assert not a.opened.is_set() and not b.opened.is_set()


async def test_concurrent_links_and_scoped_host_override() -> None:
    original = aioice.ice.get_host_addresses
    outside_view = original(True, True)
    assert "127.0.0.1" not in outside_view  # why the override exists at all

    seen_outside: list[list[str]] = []
    users_seen: set[int] = set()

    async def outsider() -> None:
        # A task not started by a link sees aioice's own scan even while links gather.
        while True:
            seen_outside.append(aioice.ice.get_host_addresses(True, True))
            users_seen.add(webrtc._override_users)
            await asyncio.sleep(0)

    fds_before = open_fds()
    spy = asyncio.create_task(outsider())
    pairs = [(Peer(f"a{i}", True, LOOPBACK), Peer(f"b{i}", False, LOOPBACK)) for i in range(4)]
    relays = [asyncio.create_task(relay(x, y, None)) for a, b in pairs for x, y in ((a, b), (b, a))]
    try:
        # All links gather at once: the override is shared and reference-counted.
        await asyncio.gather(*(p.link.start() for pair in pairs for p in pair))
        await asyncio.gather(*(both_open(a, b) for a, b in pairs))
        for i, (a, _b) in enumerate(pairs):
            a.link.send(f"pair {i}")
        assert [await b.frame() for _a, b in pairs] == [f"pair {i}" for i in range(4)]
    finally:
        await asyncio.gather(*(p.link.close() for pair in pairs for p in pair))
        spy.cancel()
        for task in relays:
            task.cancel()
        await asyncio.gather(spy, *relays, return_exceptions=True)
    await assert_released(fds_before)
    assert max(users_seen) >= 2, "the links were expected to gather concurrently"
    assert seen_outside and all(view == outside_view for view in seen_outside)
    assert aioice.ice.get_host_addresses is original


async def test_mdns_candidates_in_sdp_are_ignored() -> None:
    def add_mdns(signal: Signal) -> list[Signal]:
        mdns = (
            "a=candidate:9 1 udp 2122260223 "
            "6f1d2c3b-aaaa-4bbb-8ccc-0123456789ab.local 40000 typ host\r\n"
        )
        sdp = signal["sdp"].replace("a=candidate:", mdns + "a=candidate:", 1)
        return [{"type": signal["type"], "sdp": sdp}]

    async with link_pair(a_to_b=add_mdns) as (a, b):
        await both_open(a, b)
        assert b.link.dropped == {"mdns-candidate": 1}
        assert getattr(aioice.ice._mdns, "protocol", None) is None  # no multicast socket


async def test_answerer_accepts_simple_peer_style_initiator() -> None:
    """A plain aiortc initiator acting like simple-peer 6: random hex label, trickle."""
    fds_before = open_fds()
    b = Peer("b", False, LOOPBACK)
    await b.link.start()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel(secrets.token_hex(20))
    got: asyncio.Queue[str] = asyncio.Queue()
    channel.on("message", got.put_nowait)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    try:
        with webrtc._host_addresses(("127.0.0.1",)):
            await pc.setLocalDescription(await pc.createOffer())
        for signal in split_candidates({"type": "offer", "sdp": pc.localDescription.sdp}, "sp6")[
            ::-1
        ]:  # offer first, then candidates: simple-peer's usual order
            b.link.add_signal(signal)
        answer = await asyncio.wait_for(b.outbox.get(), WAIT)
        assert set(answer) == {"type", "sdp"} and answer["type"] == "answer"
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(asyncio.gather(opened.wait(), b.opened.wait()), WAIT)
        channel.send("from simple-peer")
        assert await b.frame() == "from simple-peer"
        b.link.send("to simple-peer")
        assert await asyncio.wait_for(got.get(), WAIT) == "to simple-peer"
        await b.link.close()
        await wait_until(lambda: channel.readyState == "closed", "remote channel to close")
    finally:
        await b.link.close()
        await pc.close()
    assert b.close_reasons == ["closed"]
    await assert_released(fds_before)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RTCConfig(ice_servers=("http://example.invalid",))
    with pytest.raises(ValueError):
        RTCConfig(host_addresses=("localhost",))
    with pytest.raises(ValueError):
        RTCConfig(open_timeout=0)
    RTCConfig(ice_servers=("stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"))


async def test_close_before_and_during_start() -> None:
    fds_before = open_fds()
    never = Peer("n", True, LOOPBACK)
    await never.link.close()
    assert never.close_reasons == ["closed"]

    racing = Peer("r", True, LOOPBACK)
    start = asyncio.create_task(racing.link.start())
    await asyncio.sleep(0)  # let start() begin gathering
    await racing.link.close()
    await start
    assert racing.close_reasons == ["closed"]
    await assert_released(fds_before)
