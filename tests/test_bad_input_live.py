"""Hypothesis-generated frames against a live node over a real WebSocket.

The node runs in its own thread and event loop; each example opens an authenticated raw link
(a plain ``websockets`` client holding its own key) and sends the frames. The node must never
crash, must keep serving honest traffic, and must disconnect a peer that keeps misbehaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from peer_relay import Identity, PeerRelay, wire

T = TypeVar("T")


class LiveNetwork:
    """Three nodes on 127.0.0.1 in a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.target = self.run(self._make(port=0, host="127.0.0.1", max_strikes=4))
        url = self.target.url or ""
        self.alice = self.run(self._make(bootstrap=[url]))
        self.bob = self.run(self._make(bootstrap=[url]))
        self.received: list[Any] = []
        self.bob.on("message", lambda data, sender: self.received.append(data))
        self.run(self.alice.wait_for_peers(1))
        self.run(self.bob.wait_for_peers(1))

    async def _make(self, **options: Any) -> PeerRelay:
        return await PeerRelay(**options).start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        for peer in (self.alice, self.bob, self.target):
            self.run(peer.destroy())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def honest_round_trip(self, tag: int) -> None:
        """alice -> target -> bob still works."""

        async def go() -> None:
            self.alice.send(self.bob.id, {"tag": tag})
            for _ in range(500):
                if {"tag": tag} in self.received:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"honest message {tag} did not arrive")

        self.run(go())


@contextlib.contextmanager
def raw_link(url: str) -> Iterator[ClientConnection]:
    """Open a link and complete the hello and proof with a fresh key, like one of our peers."""
    me = Identity.generate()
    with connect(url, open_timeout=5, compression=None) as ws:
        yield handshake(ws, me)


def handshake(ws: ClientConnection, me: Identity) -> ClientConnection:
    hello = wire.parse_hello(orjson.loads(ws.recv(timeout=5)))
    mine = b"m" * 16
    ws.send(wire.hello_frame(me.id, me.public_key, mine).decode())
    ws.recv(timeout=5)  # the node's proof
    proof = me.sign(wire.link_proof_bytes(hello.nonce or b"", mine, hello.peer_id, me.id))
    ws.send(wire.proof_frame(proof).decode())
    return ws


@pytest.fixture(scope="module")
def live() -> Iterator[LiveNetwork]:
    network = LiveNetwork()
    yield network
    network.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=15,
)
ids = st.sampled_from(["aa" * 20, "0" * 40, "zz" * 20, "AB" * 20]) | st.text(max_size=42)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "to": ids | json_values,
        "from": ids | json_values,
        "path": st.lists(ids, max_size=22) | json_values,
        "nonce": st.text(max_size=10) | json_values,
        "data": st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    [
                        "user",
                        "findPeers",
                        "foundPeers",
                        "handshake-offer",
                        "handshake-answer",
                        "signal",
                        "bogus",
                    ]
                )
            },
            optional={"data": json_values},
        )
        | json_values,
        "auth": json_values,
        "route": st.lists(ids, max_size=4) | json_values,
    },
)
frames = st.one_of(
    envelopes.map(lambda e: orjson.dumps(e).decode()),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    st.text(max_size=100),
    st.binary(max_size=100),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames, min_size=1, max_size=12))
def test_live_node_survives_generated_frames(live: LiveNetwork, batch: list[Any]) -> None:
    with raw_link(live.target.url or "") as ws, contextlib.suppress(ConnectionClosed):
        # The node may close a link that keeps misbehaving: that is the point.
        for frame in batch:
            ws.send(frame)
    stats = live.run(_stats(live.target))
    assert stats["frames_in"] > 0
    live.honest_round_trip(len(batch))


async def _stats(peer: PeerRelay) -> dict[str, Any]:
    return peer.stats


def test_oversize_frame_closes_the_link_and_node_lives_on(live: LiveNetwork) -> None:
    with raw_link(live.target.url or "") as ws, pytest.raises(ConnectionClosed):
        ws.send("x" * (live.target.config.max_frame + 10))
        ws.recv(timeout=5)
        ws.recv(timeout=5)
    live.honest_round_trip(-1)


def test_persistent_misbehaviour_is_disconnected_and_counted(live: LiveNetwork) -> None:
    before = live.run(_stats(live.target))["dropped"].get("malformed-json", 0)
    closed = False
    with raw_link(live.target.url or "") as ws:
        try:
            for _ in range(10):
                ws.send("{not json")
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed:
            closed = True
        except TimeoutError:
            closed = False
    assert closed, "a link that keeps sending garbage must be closed"
    after = live.run(_stats(live.target))["dropped"].get("malformed-json", 0)
    assert after - before >= 4
    live.honest_round_trip(-2)


def test_frames_a_relay_cannot_pass_on_are_dropped_and_the_link_lives_on(
    live: LiveNetwork,
) -> None:
    """Data nested past what a JSON writer writes (a relay passes it on unread; its
    destination drops it, unsigned), and a frame that fits the target's limit but not once the
    target adds its id (dropped there): each is counted, the raw link that sent them stays open,
    and honest traffic flows."""
    target, bob = live.target, live.bob
    sender, me = "ab" * 20, Identity.generate()
    # From "sender", handed on by us (the last hop of a frame is the peer that sent it).
    head = f'{{"to":"{bob.id.hex()}","from":"{sender}","path":["{sender}","{me.id.hex()}"],"nonce":'
    deep = "[" * 300 + "]" * 300
    tail = '"d2","data":{"type":"user","data":""}}'
    filler = target.config.max_frame - len(head) - len(tail) - 10
    unsigned_before = bob.stats["dropped"].get("unsigned", 0)
    with connect(target.url or "", open_timeout=5, compression=None) as raw:
        ws = handshake(raw, me)
        ws.send(head + f'"d1","data":{{"type":"user","data":{deep}}}}}')
        ws.send(head + tail.replace('""', '"' + "x" * filler + '"'))

        async def dropped() -> None:
            for _ in range(500):
                at_target = target.stats["dropped"].get("too-large-to-relay", 0)
                at_bob = bob.stats["dropped"].get("unsigned", 0) - unsigned_before
                if at_target >= 1 and at_bob >= 1:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"not dropped: {target.stats['dropped']}, {bob.stats['dropped']}")

        live.run(dropped())
        ws.ping().wait(5)  # the link is still open
    live.honest_round_trip(-3)
