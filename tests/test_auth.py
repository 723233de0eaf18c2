"""A raw-frame attacker against a live network of our nodes on 127.0.0.1.

The attacker is a plain ``websockets`` client (and, to sit on a path as a relay, a plain
``websockets`` server) written here, speaking the wire by hand: it is not our node and does not go
through the core. It only borrows the encoding helpers of :mod:`peer_relay.wire` and an Ed25519
key. Each scenario checks three things: the attack is not delivered as the victim, the refusal is
counted under its reason in ``stats["dropped"]``, and the honest traffic of the same network keeps
flowing during and after the attack.

Every wait polls with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from peer_relay import PeerRelay, wire
from peer_relay.core import message_key
from peer_relay.identity import Identity, id_for_key, verify_ed25519
from peer_relay.ids import buffer_json

pytestmark = pytest.mark.timeout(60)

EVIL = "evil"
"""Marker key of every payload the attacker tries to get delivered as someone else."""


# ----------------------------------------------------------------------------- waiting


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def dropped(node: PeerRelay, reason: str) -> int:
    return int(node.stats["dropped"].get(reason, 0))


async def counted(node: PeerRelay, reason: str, before: int, what: str) -> None:
    """Wait until ``node`` has counted one more drop for ``reason`` than ``before``."""
    await eventually(lambda: dropped(node, reason) > before, f"{what}: counted as {reason!r}")


# ----------------------------------------------------------------------------- honest network


class Net:
    """Our honest nodes, what each received, and a background chatter between them."""

    def __init__(self) -> None:
        self.nodes: dict[str, PeerRelay] = {}
        self.inbox: dict[str, list[tuple[Any, bytes, bool]]] = {}
        self._chat_sent: list[tuple[str, str, int]] = []
        self._chat_task: asyncio.Task[None] | None = None

    def __getitem__(self, name: str) -> PeerRelay:
        return self.nodes[name]

    async def add(self, name: str, **options: Any) -> PeerRelay:
        options.setdefault("host", "127.0.0.1")
        # Plain signed messages, whose defences are what this module tests (sessions have
        # theirs: tests/core/test_sessions.py, tests/adversarial/test_sessions_mitm.py).
        options.setdefault("sessions", False)
        node = PeerRelay(**options)
        box: list[tuple[Any, bytes, bool]] = []
        node.on("message", lambda data, sender: box.append((data, bytes(sender), sender.verified)))
        await node.start()
        self.nodes[name] = node
        self.inbox[name] = box
        return node

    def received(self, name: str, data: Any, sender: bytes) -> bool:
        return any(d == data and s == sender and v for d, s, v in self.inbox[name])

    async def message_arrives(self, src: str, dst: str, data: Any) -> None:
        self[src].send(self[dst].id, data)
        await eventually(
            lambda: self.received(dst, data, self[src].id), f"{src} -> {dst}: {data!r}"
        )

    # Honest chatter: every listed pair keeps exchanging numbered messages during an attack.

    def start_chatter(self, pairs: list[tuple[str, str]], interval: float = 0.02) -> None:
        async def chatter() -> None:
            seq = 0
            while True:
                for src, dst in pairs:
                    self[src].send(self[dst].id, {"chat": seq, "src": src})
                    self._chat_sent.append((src, dst, seq))
                seq += 1
                await asyncio.sleep(interval)

        self._chat_task = asyncio.ensure_future(chatter())

    async def check_chatter(self, rounds: int = 10) -> None:
        """Let the chatter run some more rounds, then stop it: every chat message sent must have
        arrived, verified, from its sender."""
        assert self._chat_task is not None
        pairs = len({(src, dst) for src, dst, _seq in self._chat_sent}) or 1
        target = len(self._chat_sent) + rounds * pairs
        await eventually(lambda: len(self._chat_sent) >= target, "more honest chatter")
        self._chat_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._chat_task

        def all_arrived() -> bool:
            return all(
                self.received(dst, {"chat": seq, "src": src}, self[src].id)
                for src, dst, seq in self._chat_sent
            )

        await eventually(all_arrived, f"all {len(self._chat_sent)} honest chat messages")

    def assert_nothing_evil_delivered(self) -> None:
        for name, box in self.inbox.items():
            for data, sender, _verified in box:
                assert not (isinstance(data, dict) and EVIL in data), (
                    f"{name} delivered an attacker's message as {sender.hex()}: {data!r}"
                )

    async def close(self) -> None:
        if self._chat_task is not None:
            self._chat_task.cancel()
        await asyncio.gather(*(node.destroy() for node in self.nodes.values()))


def linked_to_all(net: Net, name: str, names: list[str]) -> bool:
    return {net[o].id for o in names if o != name} <= set(net[name].peers)


@contextlib.asynccontextmanager
async def network(**per_node: dict[str, Any]) -> AsyncIterator[Net]:
    """Listening nodes named by the keywords (the first is the seed), fully linked."""
    net = Net()
    try:
        names = list(per_node)
        seed = await net.add(names[0], port=0, **per_node[names[0]])
        for name in names[1:]:
            await net.add(name, port=0, bootstrap=[seed.url or ""], **per_node[name])
        await eventually(lambda: all(linked_to_all(net, n, names) for n in names), "a full mesh")
        yield net
    finally:
        await net.close()


# ----------------------------------------------------------------------------- the raw attacker


def proof_bytes(
    verifier_nonce: bytes, prover_nonce: bytes, verifier: bytes, prover: bytes, dialled: bool
) -> bytes:
    return wire.link_proof_bytes(
        verifier_nonce, prover_nonce, verifier, prover, prover_dialled=dialled
    )


class RawLink:
    """One WebSocket connection driven frame by frame."""

    def __init__(self, ws: ClientConnection | ServerConnection, dialled: bool) -> None:
        self.ws = ws
        self.dialled = dialled
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.remote: wire.Hello | None = None
        self.my_nonce = os.urandom(16)
        self.me_hex: str | None = None
        """Our id once we proved it: envelopes we send get it as their last hop, as every
        peer that sends a message adds its id to the path."""
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                await self.frames.put(orjson.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def recv(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def recv_where(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, deadline - loop.time()))
            if predicate(frame):
                return frame

    async def send(self, frame: Any) -> None:
        path = frame.get("path") if isinstance(frame, dict) else None
        if self.me_hex is not None and isinstance(path, list) and path[-1:] != [self.me_hex]:
            frame = {**frame, "path": [*path, self.me_hex]}
        text = frame if isinstance(frame, bytes | str) else orjson.dumps(frame)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(text.decode() if isinstance(text, bytes) else text)

    async def closed_by_remote(self, timeout: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def read_hello(self) -> wire.Hello:
        self.remote = wire.parse_hello(await self.recv())
        return self.remote

    async def authenticate(self, me: Identity, hello_sent: bool = False) -> None:
        """Prove our own id honestly, and check the node's proof of its id."""
        remote = self.remote or await self.read_hello()
        if not hello_sent:
            await self.send(wire.hello_frame(me.id, me.public_key, self.my_nonce))
        signature = wire.parse_proof(await self.recv())
        assert remote.key is not None and remote.nonce is not None
        # The id a node proves on its link is the id derived from its key.
        assert id_for_key(remote.key) == remote.peer_id
        signed = proof_bytes(self.my_nonce, remote.nonce, me.id, remote.peer_id, not self.dialled)
        assert verify_ed25519(remote.key, signature, signed)
        mine = proof_bytes(remote.nonce, self.my_nonce, remote.peer_id, me.id, self.dialled)
        await self.send(wire.proof_frame(me.sign(mine)))
        self.me_hex = me.id.hex()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def dial(url: str) -> RawLink:
    link = RawLink(await connect(url, compression=None), dialled=True)
    await link.read_hello()
    return link


async def dial_as(url: str, me: Identity, node: PeerRelay) -> RawLink:
    """An honest link of the attacker's own identity to ``node``, open on both sides."""
    link = await dial(url)
    await link.authenticate(me)
    await eventually(lambda: me.id in node.peers, "the attacker's own link to open")
    return link


def envelope(
    to: bytes,
    sender: bytes,
    body: dict[str, Any],
    *,
    signer: Identity | None,
    key: bytes | None = None,
    ts: int | None = None,
    nonce: str | None = None,
    path: list[str] | None = None,
) -> dict[str, Any]:
    """An envelope ``from`` ``sender``, signed by ``signer`` (None: unsigned)."""
    nonce = nonce or str(int.from_bytes(os.urandom(7), "big"))
    env: dict[str, Any] = {
        "to": to.hex(),
        "from": sender.hex(),
        "path": path if path is not None else [sender.hex()],
        "nonce": nonce,
        "data": body,
    }
    if signer is not None:
        ts = int(time.time() * 1000) if ts is None else ts
        signed = wire.signed_bytes(to.hex(), sender.hex(), nonce, ts, wire.canonical(body))
        env["auth"] = {
            "key": wire.b64encode(key if key is not None else signer.public_key),
            "sig": wire.b64encode(signer.sign(signed)),
            "ts": ts,
        }
    return env


def evil(tag: str) -> dict[str, Any]:
    return {"type": "user", "data": {EVIL: tag}}


def is_user_to(target: bytes) -> Callable[[Any], bool]:
    def check(frame: Any) -> bool:
        return (
            type(frame) is dict
            and frame.get("to") == target.hex()
            and type(frame.get("data")) is dict
            and frame["data"].get("type") == "user"
        )

    return check


class EvilRelay:
    """A WebSocket server that honest client-only peers bootstrap to: it is their only link.

    It proves its own id honestly, then keeps every frame they send instead of relaying it.
    """

    def __init__(self, me: Identity) -> None:
        self.me = me
        self.links: list[RawLink] = []
        self.url = ""
        self._server: Any = None

    async def __aenter__(self) -> EvilRelay:
        self._server = await serve(self._accept, "127.0.0.1", 0, compression=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def _accept(self, ws: ServerConnection) -> None:
        link = RawLink(ws, dialled=False)
        await link.send(wire.hello_frame(self.me.id, self.me.public_key, link.my_nonce))
        await link.read_hello()
        await link.authenticate(self.me, hello_sent=True)
        self.links.append(link)
        await link.closed.wait()

    async def capture(self, target: bytes) -> dict[str, Any]:
        """The next user message for ``target`` that an honest peer routed through us."""
        await eventually(lambda: bool(self.links), "a peer to link to the evil relay")
        frame: dict[str, Any] = await self.links[0].recv_where(is_user_to(target))
        return frame

    async def __aexit__(self, *exc: object) -> None:
        for link in self.links:
            await link.close()
        self._server.close()
        await self._server.wait_closed()


# ----------------------------------------------------------------------------- (a) link claims


async def test_claiming_another_peers_id_on_a_link_is_refused() -> None:
    async with network(b={}, c={}, d={}) as net:
        b, d = net["b"], net["d"]
        net.start_chatter([("b", "c"), ("c", "d"), ("d", "b")])
        attacker = Identity.generate()

        # Without pr: an unauthenticated peer, refused by default.
        before = dropped(b, "unauthenticated-peer")
        link = await dial(b.url or "")
        await link.send(buffer_json(d.id))
        assert await link.closed_by_remote()
        await counted(b, "unauthenticated-peer", before, "hello without pr")

        # The victim's id with the attacker's own key.
        before = dropped(b, "key-mismatch")
        link = await dial(b.url or "")
        await link.send(wire.hello_frame(d.id, attacker.public_key, link.my_nonce))
        assert await link.closed_by_remote()
        await counted(b, "key-mismatch", before, "hello with a key that is not the victim's")

        # The victim's id and public key, then a proof the attacker cannot make: random bytes,
        # the wrong length, and the victim's genuine proof captured from another link.
        d_key = d.identity.public_key
        for proof in (os.urandom(64), os.urandom(32)):
            before = dropped(b, "bad-proof")
            link = await dial(b.url or "")
            await link.send(wire.hello_frame(d.id, d_key, link.my_nonce))
            await link.recv()  # b's own proof
            await link.send(orjson.dumps({"pr": {"proof": wire.b64encode(proof)}}))
            assert await link.closed_by_remote()
            await counted(b, "bad-proof", before, f"a forged proof of {len(proof)} bytes")

        spy = await dial(d.url or "")
        await spy.send(wire.hello_frame(attacker.id, attacker.public_key, spy.my_nonce))
        captured = await spy.recv()  # d's genuine proof of its id, made for this link
        before = dropped(b, "bad-proof")
        link = await dial(b.url or "")
        await link.send(wire.hello_frame(d.id, d_key, spy.my_nonce))
        await link.recv()
        await link.send(captured)
        assert await link.closed_by_remote()
        await counted(b, "bad-proof", before, "the victim's proof replayed on another link")
        await spy.close()

        # Claiming the node's own id.
        before = dropped(b, "self-link")
        link = await dial(b.url or "")
        await link.send(wire.hello_frame(b.id, b.identity.public_key, link.my_nonce))
        assert await link.closed_by_remote()
        await counted(b, "self-link", before, "hello with the node's own id")

        # A hello that is not an id at all.
        before = dropped(b, "bad-hello")
        link = await dial(b.url or "")
        await link.send({"type": "Buffer", "data": [1, 2, 3], "pr": {"v": 1}})
        assert await link.closed_by_remote()
        await counted(b, "bad-hello", before, "malformed hello")

        # The victim is still linked to b by its genuine link, and nobody else is.
        assert d.id in b.peers and attacker.id not in b.peers
        await net.check_chatter()
        net.assert_nothing_evil_delivered()


async def test_relay_mitm_of_the_link_proof_is_refused() -> None:
    """The attacker dials two peers and shuttles their hellos and proofs between them.

    Without the link roles in the proof both would accept a "direct" link to each other that is
    in fact the attacker's two connections.
    """
    async with network(b={}, c={}, d={}) as net:
        b, d = net["b"], net["d"]
        net.start_chatter([("b", "c"), ("c", "d"), ("d", "b")])
        before_b, before_d = dropped(b, "bad-proof"), dropped(d, "bad-proof")
        opened_b, opened_d = b.stats["links_opened"], d.stats["links_opened"]
        to_b, to_d = await dial(b.url or ""), await dial(d.url or "")
        assert to_b.remote is not None and to_d.remote is not None
        hb, hd = to_b.remote, to_d.remote
        # Tell each that the other dialled it: d's hello to b, b's hello to d.
        await to_b.send(wire.hello_frame(hd.peer_id, hd.key, hd.nonce))
        await to_d.send(wire.hello_frame(hb.peer_id, hb.key, hb.nonce))
        proof_from_b, proof_from_d = await to_b.recv(), await to_d.recv()
        await to_b.send(proof_from_d)
        await to_d.send(proof_from_b)
        assert await to_b.closed_by_remote() and await to_d.closed_by_remote()
        await counted(b, "bad-proof", before_b, "b refusing the shuttled proof")
        await counted(d, "bad-proof", before_d, "d refusing the shuttled proof")
        assert b.stats["links_opened"] == opened_b and d.stats["links_opened"] == opened_d
        assert d.id in b.peers and b.id in d.peers
        await net.check_chatter()


async def test_small_order_key_cannot_claim_an_id() -> None:
    """The identity point as a public key "verifies" (R=identity, S=0) for any message."""
    weak_key = bytes([1]) + bytes(31)
    forged = bytes([1]) + bytes(63)
    weak_id = id_for_key(weak_key)
    assert verify_ed25519(weak_key, forged, b"anything") is False
    async with network(b={}, c={}) as net:
        b, c = net["b"], net["c"]
        before = dropped(b, "bad-proof")
        link = await dial(b.url or "")
        await link.send(wire.hello_frame(weak_id, weak_key, link.my_nonce))
        await link.recv()
        await link.send(wire.proof_frame(forged))
        assert await link.closed_by_remote()
        await counted(b, "bad-proof", before, "a small-order key's link proof")

        # The same key in a message's auth, relayed to c by an honest link of the attacker.
        attacker = Identity.generate()
        link = await dial_as(b.url or "", attacker, b)
        env = envelope(c.id, weak_id, evil("weak key"), signer=None)
        ts = int(time.time() * 1000)
        env["auth"] = {"key": wire.b64encode(weak_key), "sig": wire.b64encode(forged), "ts": ts}
        before = dropped(c, "bad-signature")
        await link.send(env)
        await counted(c, "bad-signature", before, "a small-order key's message signature")
        await net.message_arrives("b", "c", {"after": "weak key"})
        net.assert_nothing_evil_delivered()


# ----------------------------------------------------------------------- (b, e, f) forged messages


async def test_forged_from_and_malformed_auth_are_not_delivered() -> None:
    async with network(b={}, c={}, d={}) as net:
        b, c, d = net["b"], net["c"], net["d"]
        net.start_chatter([("b", "c"), ("c", "d"), ("d", "b"), ("d", "c")])
        attacker = Identity.generate()
        via_b = await dial_as(b.url or "", attacker, b)
        # A genuine message of d (its discovery query to the attacker), to transplant its auth.
        via_d = await dial_as(d.url or "", attacker, d)
        genuine = await via_d.recv_where(lambda f: type(f) is dict and "auth" in f)
        assert genuine["from"] == d.id.hex() and genuine["to"] == attacker.id.hex()

        def forged(tag: str, **kw: Any) -> dict[str, Any]:
            return envelope(c.id, d.id, evil(tag), **kw)

        transplanted = forged("transplanted", signer=None)
        transplanted["auth"] = genuine["auth"]
        retargeted = {**genuine, "to": c.id.hex()}
        now = int(time.time() * 1000)
        cases: list[tuple[str, dict[str, Any]]] = [
            # (b) a forged from: unsigned, signed with the attacker's own key, the victim's key.
            ("unsigned", forged("unsigned", signer=None)),
            ("key-mismatch", forged("own key", signer=attacker)),
            ("bad-signature", forged("victim key", signer=attacker, key=d.identity.public_key)),
            ("bad-signature", transplanted),
            ("bad-signature", retargeted),
            # (e) a key that does not match the id it signs for (a stranger's valid signature).
            ("key-mismatch", forged("stranger", signer=Identity.generate())),
        ]
        # (f) signatures of the wrong length, and other malformed auth members.
        for size in (0, 32, 63, 65, 128):
            env = forged(f"sig {size}", signer=attacker, key=d.identity.public_key)
            env["auth"]["sig"] = wire.b64encode(os.urandom(size))
            cases.append(("bad-signature", env))
        env = forged("sig not base64", signer=attacker, key=d.identity.public_key)
        env["auth"]["sig"] = "!" * 86
        cases.append(("bad-signature", env))
        for auth in (
            {"key": wire.b64encode(d.identity.public_key[:31]), "sig": "A" * 86, "ts": now},
            {"key": wire.b64encode(d.identity.public_key), "sig": "A" * 86, "ts": "soon"},
            {"key": wire.b64encode(d.identity.public_key), "sig": "A" * 86, "ts": -1},
            "signed, honestly",
        ):
            env = forged("bad auth", signer=None)
            env["auth"] = auth
            cases.append(("bad-auth", env))
        # A timestamp outside the window (a stranger signing for its own id: only ts is wrong).
        stranger = Identity.generate()
        stale = envelope(c.id, stranger.id, evil("stale"), signer=stranger, ts=now - 3_600_000)
        cases.append(("expired", stale))
        future = envelope(c.id, stranger.id, evil("future"), signer=stranger, ts=now + 3_600_000)
        cases.append(("expired", future))

        for reason, env in cases:
            before = dropped(c, reason)
            await via_b.send(env)  # relayed by b, which does not verify; c does
            await counted(c, reason, before, f"{env['data']['data']} relayed to c")
        # Directly too, on the attacker's own link to c.
        via_c = await dial_as(c.url or "", attacker, c)
        before = dropped(c, "key-mismatch")
        await via_c.send(forged("direct", signer=attacker))
        await counted(c, "key-mismatch", before, "forged from on a direct link")

        await net.check_chatter()
        net.assert_nothing_evil_delivered()
        assert all(s != d.id or "chat" in data for data, s, _ in net.inbox["c"])
        # The attacker's links survive: a forged message is dropped, it is not a link error.
        assert attacker.id in b.peers


# ----------------------------------------------------------------------------- (c, d) evil relay


async def test_evil_relay_alters_and_replays_signed_messages() -> None:
    """An honest client-only peer whose only link is the attacker's relay sends to c and d."""
    small = {"replay_window": 1.0, "seen_ttl": 2.0, "tick_interval": 0.05}
    async with (
        network(b={}, c={}, d=small) as net,
        EvilRelay(Identity.generate()) as relay,
    ):
        b, c, d = net["b"], net["c"], net["d"]
        net.start_chatter([("b", "c"), ("c", "b"), ("b", "d")])
        a = await net.add("a", bootstrap=[relay.url])  # client-only: the relay is its only link
        await eventually(lambda: relay.me.id in a.peers, "a linked to the evil relay")
        to_b = await dial_as(b.url or "", relay.me, b)
        to_c = await dial_as(c.url or "", relay.me, c)
        to_d = await dial_as(d.url or "", relay.me, d)

        def relayed(frame: dict[str, Any], **changes: Any) -> dict[str, Any]:
            return {**frame, "path": [*frame["path"], relay.me.id.hex()], **changes}

        # (c) data altered in transit, forwarded through b (which relays without verifying).
        a.send(c.id, {"pay": 1})
        frame = await relay.capture(c.id)
        before = dropped(c, "bad-signature")
        await to_b.send(relayed(frame, data={"type": "user", "data": {EVIL: "altered"}}))
        await counted(c, "bad-signature", before, "altered data relayed through b")

        # ... and directly: then the genuine frame still goes through, once.
        a.send(c.id, {"pay": 2})
        frame = await relay.capture(c.id)
        for altered in (
            {"type": "user", "data": {"pay": 2, EVIL: True}},
            {"type": "user", "data": {"pay": 3}},
            {"type": "findPeers", "data": {"pay": 2}},
            {"type": "user", "data": {"pay": 2.5}},
        ):
            before = dropped(c, "bad-signature")
            await to_c.send(relayed(frame, data=altered))
            await counted(c, "bad-signature", before, f"altered data {altered}")
        # Another destination or another nonce: the signature covers both.
        before = dropped(d, "bad-signature")
        await to_d.send(relayed(frame, to=d.id.hex()))
        await counted(d, "bad-signature", before, "the frame readdressed to d")
        before = dropped(c, "bad-signature")
        await to_c.send(relayed(frame, nonce=frame["nonce"] + "1"))
        await counted(c, "bad-signature", before, "the frame with another nonce")
        await to_c.send(relayed(frame))
        await eventually(lambda: net.received("c", {"pay": 2}, a.id), "the genuine frame")
        assert [m for m in net.inbox["c"] if m[1] == a.id] == [({"pay": 2}, a.id, True)]

        # (d) a replay of the captured message: a duplicate while c remembers it ...
        before = dropped(c, "duplicate")
        await to_c.send(relayed(frame))
        await counted(c, "duplicate", before, "a replay to c")
        # ... and expired once d (replay_window 1 s, seen_ttl 2 s) has forgotten it.
        a.send(d.id, {"pay": 4})
        frame = await relay.capture(d.id)
        await to_d.send(relayed(frame))
        await eventually(lambda: net.received("d", {"pay": 4}, a.id), "a's message to d")
        key = message_key(frame["from"], frame["nonce"])
        core = d._core
        assert core is not None
        await eventually(lambda: key not in core._inbox.delivered, "d to forget the message", 6.0)
        before = dropped(d, "expired")
        await to_d.send(relayed(frame))
        await counted(d, "expired", before, "a replay after the duplicate filter forgot it")
        assert sum(1 for m in net.inbox["d"] if m[1] == a.id) == 1

        await net.check_chatter()
        net.assert_nothing_evil_delivered()


async def test_replay_floor_after_eviction_and_no_floor_poisoning() -> None:
    """A small duplicate filter: an evicted message replayed inside the window is refused, and an
    authenticated peer cannot push the floor into the future to make honest messages look stale.
    """
    small = {"max_seen": 6, "tick_interval": 0.05}
    async with (
        network(b={}, c={}, d=small) as net,
        EvilRelay(Identity.generate()) as relay,
    ):
        d = net["d"]
        a = await net.add("a", bootstrap=[relay.url])
        await eventually(lambda: relay.me.id in a.peers, "a linked to the evil relay")
        to_d = await dial_as(d.url or "", relay.me, d)
        path = [a.id.hex(), relay.me.id.hex()]

        a.send(d.id, {"pay": 1})
        frame = await relay.capture(d.id)
        await to_d.send({**frame, "path": path})
        await eventually(lambda: net.received("d", {"pay": 1}, a.id), "a's message to d")
        me = relay.me
        last_ts = frame["auth"]["ts"]

        async def flood(count: int) -> None:
            # Valid messages of the attacker's own id, each dated a millisecond after the last
            # (and never before now), so that they are forgotten after a's message.
            nonlocal last_ts
            for _ in range(count):
                last_ts = max(last_ts + 1, int(time.time() * 1000))
                body = {"type": "user", "data": {"flood": last_ts}}
                await to_d.send(envelope(d.id, me.id, body, signer=me, ts=last_ts))

        def from_attacker() -> int:
            return sum(1 for m in net.inbox["d"] if m[1] == me.id)

        await flood(20)
        await eventually(lambda: from_attacker() == 20, "the flood delivered")
        core = d._core
        assert core is not None
        assert message_key(frame["from"], frame["nonce"]) not in core._inbox.delivered
        before = dropped(d, "replay")
        await to_d.send({**frame, "path": path})
        await counted(d, "replay", before, "an evicted message replayed inside the window")

        # Floor poisoning: one valid message dated near the end of the window, then a flood.
        late = int(time.time() * 1000) + 50_000
        body = {"type": "user", "data": {"late": 1}}
        await to_d.send(envelope(d.id, me.id, body, signer=me, ts=late))
        await flood(20)
        await eventually(lambda: from_attacker() == 41, "the second flood")
        await eventually(lambda: time.time() * 1000 > last_ts + 1, "the clock to pass the flood")
        for i in range(5):
            await net.message_arrives("b", "d", {"honest": i})
            await net.message_arrives("c", "d", {"honest": i})
        assert sum(1 for m in net.inbox["d"] if m[1] == a.id) == 1
        assert dropped(d, "replay") == before + 1


# ----------------------------------------------------------------------------- identity and modes


async def test_identity_file_keeps_the_id_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"
    first = PeerRelay(port=0, host="127.0.0.1", identity=Identity.load_or_create(path))
    async with first:
        first_id = first.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with PeerRelay(port=0, host="127.0.0.1", identity=Identity.load_or_create(path)) as again:
        assert again.id == first_id == id_for_key(again.identity.public_key)
        # The id it proves on a link is the one derived from its key.
        link = await dial(again.url or "")
        assert link.remote is not None and link.remote.peer_id == first_id
        assert link.remote.key is not None and id_for_key(link.remote.key) == first_id
        await link.authenticate(Identity.generate())
        await link.close()


async def test_unsigned_peers_only_when_allowed() -> None:
    raw_id = os.urandom(20)
    async with network(strict={}, lax={"allow_unsigned": True}) as net:
        strict, lax = net["strict"], net["lax"]
        # Default mode: the raw, unsigned peer is refused on its link.
        before = dropped(strict, "unauthenticated-peer")
        link = await dial(strict.url or "")
        await link.send(buffer_json(raw_id))
        assert await link.closed_by_remote()
        await counted(strict, "unauthenticated-peer", before, "an unsigned peer")

        # allow_unsigned: admitted, and its messages arrive marked unverified.
        link = await dial(lax.url or "")
        await link.send(buffer_json(raw_id))
        link.me_hex = raw_id.hex()
        await eventually(lambda: raw_id in lax.peers, "the unsigned peer admitted")
        body = {"type": "user", "data": {"plain": 1}}
        await link.send(envelope(lax.id, raw_id, body, signer=None))
        await eventually(lambda: any(m[1] == raw_id for m in net.inbox["lax"]), "unsigned message")
        assert [m for m in net.inbox["lax"] if m[1] == raw_id] == [({"plain": 1}, raw_id, False)]
        # Relayed by lax to strict, the same kind of message is refused there.
        before = dropped(strict, "unsigned")
        unsigned = envelope(strict.id, raw_id, {"type": "user", "data": {"x": 1}}, signer=None)
        await link.send(unsigned)
        await counted(strict, "unsigned", before, "an unsigned message at a strict peer")
        # A bad signature is refused even in lax mode (no downgrade to unverified).
        stranger = Identity.generate()
        env = envelope(lax.id, stranger.id, evil("bad sig in lax mode"), signer=stranger)
        env["data"] = {"type": "user", "data": {EVIL: "altered"}}
        before = dropped(lax, "bad-signature")
        await link.send(env)
        await counted(lax, "bad-signature", before, "a bad signature in lax mode")
        await net.message_arrives("strict", "lax", {"still": "verified"})
        assert net.inbox["lax"][-1][2] is True
        net.assert_nothing_evil_delivered()


async def test_a_silent_relay_is_found_out_and_routed_around() -> None:
    """A peer that takes messages and never passes them on (hung, or crashed without a close):
    the next hop's silence after a ping gives it away and the message goes around it."""
    async with network(b={}, c={"max_links": 1}) as net:  # c keeps its one link, to b
        b, c = net["b"], net["c"]
        a = await net.add(
            "a",
            port=0,
            bootstrap=[b.url or ""],
            max_links=2,
            max_connecting=0,  # it links to no one itself (c would refuse, at a link's cost)
            confirm_timeout=1.0,
            tick_interval=0.1,
            route_ttl=0.0,  # no route hints: a's next hop is its link nearest c
            share_links=False,  # nor b's list of links, which names c
        )
        await eventually(lambda: b.id in a.peers, "a linked to b")
        # The hole's id is nearer to c than b is: a's best next hop toward c.
        hole_id = Identity.generate()
        while int.from_bytes(hole_id.id, "big") ^ int.from_bytes(c.id, "big") >= int.from_bytes(
            b.id, "big"
        ) ^ int.from_bytes(c.id, "big"):
            hole_id = Identity.generate()
        hole = await dial_as(a.url or "", hole_id, a)
        assert c.id not in a.peers
        a.send(c.id, {"around": 1})
        assert (await hole.recv_where(is_user_to(c.id)))["data"]["data"] == {"around": 1}
        assert await hole.recv_where(lambda f: type(f) is dict and "pr" in f) == {"pr": {"ping": 1}}
        await eventually(lambda: net.received("c", {"around": 1}, a.id), "the message around")
        assert dropped(a, "unresponsive") == 1 and hole_id.id not in a.peers
        assert await hole.closed_by_remote()
