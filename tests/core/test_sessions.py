"""Sessions, receipts and requests in the core, on a virtual clock with real cryptography: cores
wired by hand through a relay whose frames the tests read, drop, alter and replay."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from peer_relay.core import Config, Core
from peer_relay.core.sessions import ACCEPT, KEY, KEY_ASK, OPEN, SEALED
from peer_relay.events import (
    CloseLink,
    Delivered,
    DeliveryResult,
    DialWebSocket,
    Reply,
    RequestReceived,
    SendFrame,
)
from peer_relay.identity import Identity

T0 = 1_800_000_000.0

Tamper = Callable[[str, str, bytes], "bytes | list[bytes] | None"]


def blob_of(frame: bytes) -> bytes | None:
    """The bytes a session message carries, or None for any other frame."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, dict) or data.get("type") != "sealed":
        return None
    return base64.b64decode(data["data"])


def with_blob(frame: bytes, blob: bytes, nonce: str | None = None) -> bytes:
    obj = orjson.loads(frame)
    obj["data"]["data"] = base64.b64encode(blob).decode()
    if nonce is not None:
        obj["nonce"] = nonce
    return orjson.dumps(obj)


class Net:
    """Cores linked by hand: every frame goes through :meth:`run`, where ``tamper`` may drop,
    alter or multiply it (it gets the sender's and receiver's names)."""

    def __init__(self) -> None:
        self.now = T0
        self.cores: dict[str, Core] = {}
        self.ends: dict[tuple[str, int], tuple[str, int]] = {}
        self.events: dict[str, list[Any]] = {}
        self.seen: list[tuple[str, str, bytes]] = []
        self.tamper: Tamper | None = None

    def add(self, name: str, seed: int, listen: bool = True, **config: Any) -> Core:
        identity = Identity(bytes([seed]) * 32)
        url = f"ws://{name}" if listen else None
        # A restarted peer draws other nonces than before, as a live one would.
        rng = random.Random(f"{seed}/{self.now}")
        core = Core(identity, Config(url=url, **config), rng=rng, now=self.now)
        self.cores[name] = core
        self.events[name] = []
        return core

    def restart(self, name: str, seed: int, **config: Any) -> Core:
        """The same identity, a new core (its links are gone)."""
        for (a, ha), (b, _hb) in list(self.ends.items()):
            if name in (a, b):
                del self.ends[(a, ha)]
                if a != name:
                    self.cores[a].link_closed(ha, self.now, "remote closed")
        return self.add(name, seed, listen=self.cores[name].url is not None, **config)

    def link(self, dialer: str, server: str) -> None:
        core = self.cores[dialer]
        core.bootstrap([f"ws://{server}"], self.now)
        self.run()

    def run(self, seconds: float = 0.0, step: float = 0.05) -> None:
        end = self.now + seconds
        while True:
            self._drain()
            if self.now >= end:
                break
            self.now = min(end, self.now + step)
            for core in self.cores.values():
                timer = core.get_timer()
                if timer is not None and timer <= self.now:
                    core.handle_timer(self.now)

    def _drain(self) -> None:
        busy = True
        while busy:
            busy = False
            for name, core in list(self.cores.items()):
                for event in core.events():
                    busy = True
                    self._carry(name, core, event)

    def _carry(self, name: str, core: Core, event: Any) -> None:
        if isinstance(event, DialWebSocket):
            server = event.url.removeprefix("ws://")
            other = self.cores[server]
            handle = other.link_accepted(self.now, "ws", name)
            self.ends[(name, event.handle)] = (server, handle)
            self.ends[(server, handle)] = (name, event.handle)
            core.link_connected(event.handle, self.now)
        elif isinstance(event, SendFrame):
            end = self.ends.get((name, event.handle))
            if end is None:
                return
            other, handle = end
            frames: bytes | list[bytes] | None = event.frame
            self.seen.append((name, other, event.frame))
            if self.tamper is not None:
                frames = self.tamper(name, other, event.frame)
            for frame in (
                [] if frames is None else [frames] if isinstance(frames, bytes) else frames
            ):
                self.cores[other].frame_received(handle, frame, self.now)
        elif isinstance(event, CloseLink):
            end = self.ends.pop((name, event.handle), None)
            if end is not None:
                self.ends.pop(end, None)
                self.cores[end[0]].link_closed(end[1], self.now, "remote closed")
        else:
            self.events[name].append(event)

    def of(self, name: str, kind: type) -> list[Any]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    def kinds(self, sender: str, receiver: str) -> list[int]:
        """The kinds of session blob ``sender`` handed to ``receiver``, in order."""
        out = []
        for a, b, frame in self.seen:
            blob = blob_of(frame) if (a, b) == (sender, receiver) else None
            if blob:
                out.append(blob[0])
        return out


def line(**config: Any) -> Net:
    """alice - relay - bob; alice and bob cannot be dialled, so the relay carries all."""
    net = Net()
    net.add("relay", 1, **config)
    net.add("alice", 2, listen=False, **config)
    net.add("bob", 3, listen=False, **config)
    net.link("alice", "relay")
    net.link("bob", "relay")
    net.run(1.0)
    return net


def test_first_message_asks_for_the_key_and_rides_in_the_handshake() -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    # carol has just joined: alice knows her id (from the application) but never saw her key
    # (what carol sends her while joining is lost).
    carol = net.add("carol", 5, listen=False)
    net.tamper = lambda a, b, frame: None if b == "alice" and carol.hex.encode() in frame else frame
    net.link("carol", "relay")
    net.tamper = None
    alice.send(carol.id, {"secret": "marker-1"}, net.now)
    net.run(0.5)
    assert [(d.data, d.verified) for d in net.of("carol", Delivered)] == [
        ({"secret": "marker-1"}, True)
    ]
    # She asks for it, then opens with the data inside: no round trip of its own.
    assert net.kinds("alice", "relay") == [KEY_ASK, OPEN]
    assert net.kinds("relay", "alice") == [KEY, ACCEPT]
    assert not any(b"marker-1" in frame for _a, _b, frame in net.seen)
    # The relay knows bob's key from their link: it opens at once, its data in the OPEN.
    relay = net.cores["relay"]
    relay.send(bob.id, "to bob", net.now)
    net.run(0.5)
    assert net.kinds("relay", "bob")[-1] == OPEN
    assert [d.data for d in net.of("bob", Delivered)][-1] == "to bob"
    # Later messages are sealed under the session, both ways.
    bob.send(alice.id, "back", net.now)
    net.run(0.5)
    alice.send(bob.id, "again", net.now)
    net.run(0.5)
    bob.send(alice.id, "more", net.now)
    net.run(0.5)
    assert [d.data for d in net.of("alice", Delivered)] == ["back", "more"]
    assert [d.data for d in net.of("bob", Delivered)][-1] == "again"
    assert net.kinds("alice", "relay")[-1] == SEALED
    assert net.kinds("bob", "relay")[-1] == SEALED


def test_deliver_request_reply_and_errors() -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    token = alice.deliver(bob.id, [1, 2], net.now, timeout=5)
    net.run(0.5)
    assert net.of("alice", DeliveryResult) == [DeliveryResult(token, True, "")]
    asked = alice.request(bob.id, {"q": 1}, net.now, timeout=5)
    net.run(0.5)
    (request,) = net.of("bob", RequestReceived)
    assert (request.data, request.sender) == ({"q": 1}, alice.id)
    bob.respond(request.token, {"a": 2}, net.now)
    net.run(0.5)
    assert net.of("alice", Reply) == [Reply(asked, True, {"a": 2}, "", True)]
    failing = alice.request(bob.id, "x", net.now, timeout=5)
    net.run(0.5)
    bob.respond(net.of("bob", RequestReceived)[-1].token, None, net.now, error="no such thing")
    net.run(0.5)
    assert net.of("alice", Reply)[-1] == Reply(failing, False, None, "no such thing", True)
    assert not bob.respond(request.token, 1, net.now)  # answered already


def test_deliver_to_nobody_fails_within_its_timeout_saying_why() -> None:
    net = line()
    alice = net.cores["alice"]
    token = alice.deliver(bytes(20), "x", net.now, timeout=3)
    net.run(2.9)
    assert net.of("alice", DeliveryResult) == []
    net.run(0.2)
    (result,) = net.of("alice", DeliveryResult)
    assert result.token == token and not result.ok
    assert "did not answer" in result.reason


def test_programmer_errors_raise_at_once() -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    with pytest.raises(ValueError):
        alice.deliver(b"short", 1, net.now)
    with pytest.raises(ValueError):
        alice.deliver(bob.id, float("nan"), net.now)
    with pytest.raises(ValueError):
        alice.request(bob.id, 1, net.now, timeout=-1)
    with pytest.raises(ValueError):
        alice.deliver(bob.id, "x" * (1 << 20), net.now)


def flip_sealed(kind: int) -> Tamper:
    def tamper(a: str, b: str, frame: bytes) -> bytes:
        blob = blob_of(frame)
        if a == "relay" and b == "bob" and blob and blob[0] == kind:
            altered = bytearray(blob)
            altered[-1] ^= 1
            return with_blob(frame, bytes(altered))
        return frame

    return tamper


@pytest.mark.parametrize(("kind", "reason"), [(OPEN, "bad-handshake"), (SEALED, "bad-ciphertext")])
def test_altered_session_messages_are_dropped_and_counted(kind: int, reason: str) -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    if kind == SEALED:
        alice.send(bob.id, "first", net.now)
        net.run(0.5)
    net.tamper = flip_sealed(kind)
    alice.send(bob.id, "altered", net.now)
    net.run(0.5)
    assert "altered" not in [d.data for d in net.of("bob", Delivered)]
    assert bob.stats.dropped[reason] >= 1
    assert net.cores["relay"].id in bob.peers  # a relay's link is not cut for others' faults


def test_replays_are_delivered_once() -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    kept: list[bytes] = []

    def keep(a: str, b: str, frame: bytes) -> list[bytes]:
        blob = blob_of(frame)
        if (a, b) == ("relay", "bob") and blob and blob[0] in (OPEN, SEALED):
            kept.append(frame)
        return [frame]

    net.tamper = keep
    alice.send(bob.id, "one", net.now)
    net.run(0.5)
    alice.send(bob.id, "two", net.now)
    net.run(0.5)
    open_frame, sealed_frame = kept
    relay_handle = next(h for (n, h), (o, _) in net.ends.items() if (n, o) == ("bob", "relay"))
    for frame in (open_frame, sealed_frame):
        blob = blob_of(frame)
        assert blob is not None
        for nonce in (None, "999"):  # as it was, and under a new envelope nonce
            bob.frame_received(relay_handle, with_blob(frame, blob, nonce), net.now)
    net.run(0.5)
    assert [d.data for d in net.of("bob", Delivered)] == ["one", "two"]
    assert bob.stats.dropped["repeated-open"] + bob.stats.dropped["duplicate"] >= 1
    assert bob.stats.dropped["replay"] + bob.stats.dropped["duplicate"] >= 2
    # bob restarts: the old handshake is dated before it started, the old session unknown.
    bob = net.restart("bob", 3)
    net.link("bob", "relay")
    relay_handle = next(h for (n, h), (o, _) in net.ends.items() if (n, o) == ("bob", "relay"))
    for frame in (open_frame, sealed_frame):
        bob.frame_received(relay_handle, frame, net.now)
    net.run(0.5)
    assert net.of("bob", Delivered) == []
    assert bob.stats.dropped["before-start"] == 1
    assert bob.stats.dropped["unknown-session"] == 1


def test_a_restarted_peer_resets_the_session_and_delivery_recovers() -> None:
    net = line()
    alice = net.cores["alice"]
    bob_id = net.cores["bob"].id
    alice.send(bob_id, "before", net.now)
    net.run(0.5)
    bob = net.restart("bob", 3)
    net.link("bob", "relay")
    net.run(0.5)
    token = alice.deliver(bob_id, "after", net.now, timeout=8)
    net.run(5.0)
    assert net.of("alice", DeliveryResult)[-1] == DeliveryResult(token, True, "")
    assert [d.data for d in net.of("bob", Delivered)] == ["after"]
    assert bob.stats.dropped["unknown-session"] >= 1


def test_messages_sent_to_a_restarted_peer_are_sent_again_in_a_new_session() -> None:
    net = line()
    alice = net.cores["alice"]
    bob_id = net.cores["bob"].id
    for i in range(3):
        alice.send(bob_id, f"before {i}", net.now)
    net.run(0.5)
    assert [d.data for d in net.of("bob", Delivered)] == [f"before {i}" for i in range(3)]
    bob = net.restart("bob", 3)
    net.link("bob", "relay")
    net.run(0.5)
    # Sealed in the session bob forgot: unreadable, answered by a reset naming the first one.
    for i in range(5):
        alice.send(bob_id, f"after {i}", net.now)
    net.run(3.0)
    assert bob.stats.dropped["unknown-session"] == 5
    # Each arrives once (the ones bob read before its restart are not sent again).
    assert [d.data for d in net.of("bob", Delivered)] == [f"after {i}" for i in range(5)]
    # A message sealed long before a reset is not sent again.
    alice.send(bob_id, "kept", net.now)
    net.run(0.5)
    net.restart("bob", 3)
    net.link("bob", "relay")
    net.run(20.0)
    alice.send(bob_id, "late", net.now)
    net.run(3.0)
    assert [d.data for d in net.of("bob", Delivered)] == ["late"]


def test_a_request_sent_again_reaches_the_handler_once() -> None:
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    alice.send(bob.id, "hello", net.now)  # a session first
    net.run(0.5)
    lost = {"receipts": 0}

    def lose_first_receipt(a: str, b: str, frame: bytes) -> bytes | None:
        blob = blob_of(frame)
        if (a, b) == ("bob", "relay") and blob and blob[0] == SEALED and not lost["receipts"]:
            lost["receipts"] += 1
            return None
        return frame

    net.tamper = lose_first_receipt
    token = alice.request(bob.id, "once", net.now, timeout=10)
    net.run(3.0)
    assert len(net.of("bob", RequestReceived)) == 1
    assert bob.stats.dropped["duplicate"] >= 1  # the request came again
    bob.respond(net.of("bob", RequestReceived)[0].token, "done", net.now)
    net.run(1.0)
    assert net.of("alice", Reply) == [Reply(token, True, "done", "", True)]


def test_deliver_routes_around_a_relay_that_swallows_messages() -> None:
    net = Net()
    net.add("good", 1)
    net.add("bad", 4)
    net.add("alice", 2, listen=False)
    net.add("bob", 3, listen=False)
    for end in ("alice", "bob"):
        net.link(end, "good")
        net.link(end, "bad")
    net.run(1.0)
    alice, bob = net.cores["alice"], net.cores["bob"]
    swallowed = {"n": 0}

    def swallow(a: str, b: str, frame: bytes) -> bytes | None:
        # "bad" answers pings (they are not envelopes) but relays no session message.
        if a == "bad" and blob_of(frame) is not None:
            swallowed["n"] += 1
            return None
        return frame

    net.tamper = swallow
    tokens = [alice.deliver(bob.id, i, net.now, timeout=10) for i in range(20)]
    net.run(8.0)
    results = {r.token: r.ok for r in net.of("alice", DeliveryResult)}
    assert all(results.get(t) for t in tokens), results
    assert sorted(d.data for d in net.of("bob", Delivered)) == list(range(20))


def test_sessions_are_bounded_and_expire_when_idle() -> None:
    net = Net()
    net.add("relay", 1, max_sessions=2, session_idle=30.0)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        net.add(name, 10 + i, listen=False)
        net.link(name, "relay")
    net.run(1.0)
    relay = net.cores["relay"]
    for name in names:
        relay.send(net.cores[name].id, name, net.now)
        net.run(0.2)
    assert relay.bounds()["sessions"] == (2, 2)
    assert all([d.data for d in net.of(name, Delivered)] == [name] for name in names)
    net.run(40.0)
    assert relay.bounds()["sessions"][0] == 0


def test_sessions_rekey_with_a_new_handshake() -> None:
    net = line(session_rekey=5.0)
    alice, bob = net.cores["alice"], net.cores["bob"]
    alice.send(bob.id, 0, net.now)
    net.run(0.5)
    opens = net.kinds("alice", "relay").count(OPEN)
    for i in range(1, 8):
        net.run(1.0)
        alice.send(bob.id, i, net.now)
    net.run(0.5)
    assert net.kinds("alice", "relay").count(OPEN) == opens + 1
    assert [d.data for d in net.of("bob", Delivered)] == list(range(8))


def test_a_request_to_ones_own_id_goes_to_ones_own_handler() -> None:
    net = line()
    alice = net.cores["alice"]
    token = alice.request(alice.id, {"q": "self"}, net.now, timeout=5)
    net.run()
    (request,) = net.of("alice", RequestReceived)
    assert (request.data, request.sender, request.hops) == ({"q": "self"}, alice.id, 0)
    alice.respond(request.token, {"a": [1, 2.5]}, net.now)
    net.run()
    assert net.of("alice", Reply) == [Reply(token, True, {"a": [1, 2.5]}, "", True)]


def test_numbers_arrive_as_their_origin_meant_them() -> None:
    """Doubles of 2**53 and beyond (a JavaScript origin's) stay doubles through a session."""
    net = line()
    alice, bob = net.cores["alice"], net.cores["bob"]
    sent = [2.0**60, 2**53 - 1, 1e300, -0.5]
    alice.send(bob.id, sent, net.now)
    net.run(0.5)
    (got,) = [d.data for d in net.of("bob", Delivered)]
    assert got == sent and [type(x) for x in got] == [type(x) for x in sent]


def test_closing_fails_what_waits_for_a_receipt() -> None:
    net = line()
    alice = net.cores["alice"]
    token = alice.deliver(bytes(20), "x", net.now, timeout=10)
    asked = alice.request(bytes(20), "y", net.now, timeout=10)
    net.run(0.1)
    alice.close(net.now)
    net.run()
    assert net.of("alice", DeliveryResult) == [
        DeliveryResult(token, False, "this peer was destroyed before an answer came")
    ]
    assert net.of("alice", Reply) == [
        Reply(asked, False, None, "this peer was destroyed before an answer came", False)
    ]


def test_replies_to_a_requester_that_never_confirms_stay_bounded() -> None:
    """Replies wait for their receipts within ``max_requests`` (more go out once, unkept), and
    never take the slots of our own deliveries."""
    net = line(max_requests=3)
    alice, bob = net.cores["alice"], net.cores["bob"]
    alice.send(bob.id, "a session first", net.now)
    net.run(0.5)
    net.tamper = lambda a, b, frame: None if b == "alice" else frame  # no reply gets back
    for i in range(6):
        alice.request(bob.id, i, net.now, timeout=60)
    net.run(0.5)
    asked = net.of("bob", RequestReceived)
    assert len(asked) == 3  # the other three were answered "busy", and those answers kept
    for request in asked:
        bob.respond(request.token, "answer", net.now)
    net.run(0.5)
    assert bob.bounds()["deliveries"][0] == 3
    assert bob.stats.dropped["reply-not-kept"] == 3
    bob.deliver(alice.id, "ours", net.now, timeout=5)
    assert bob.bounds()["deliveries"][0] == 4
