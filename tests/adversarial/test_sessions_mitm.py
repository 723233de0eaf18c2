"""A relay in the middle of a session: it holds the only links of alice and bob (client-only
peers), reads every frame between them, and alters, replays, drops and forges what it relays.
It learns no payload, and nothing it altered, replayed or forged is delivered: each such frame is
dropped and counted under a reason, raises nothing, and cuts no link.

The man in the middle is :class:`~.mitm.Mitm`: a raw peer of the test's own, with its own valid
key, that relays as an honest relay would unless its ``rule`` says otherwise. One test uses it
off the path instead, as a peer that writes handshakes in alice's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from peer_relay import DeliveryError, Identity, PeerRelay, wire
from peer_relay.core.delivery import DATA, inner
from peer_relay.core.sessions import ACCEPT, KEY, KEY_ASK, OPEN, SEALED
from peer_relay.sealing import NoiseSuite, SealError, x25519_public_from_ed25519

from . import forge
from .harness import LOCAL, Inbox, wait_until
from .mitm import KINDS, PROLOGUE, Mitm, Passing, flipped, new_nonce

LOOSE: dict[str, Any] = {"peer_control_rate": 1e6, "link_control_rate": 1e6, "control_rate": 1e6}
"""Budgets out of the way: the attacks below send hundreds of altered handshakes in alice's name
within milliseconds, which the per-sender and per-link budgets would otherwise refuse unchecked
(counted as ``rate-limited-peer`` or ``check-budget``): the tests here are about what the
sessions' cryptography lets through, not about the budgets (see ``test_control.py``)."""
SLACK = 0.5
"""How late a failed deliver() may raise after its timeout (a loaded event loop)."""
REFUSED = frozenset(
    (
        "bad-ciphertext",
        "bad-handshake",
        "bad-sealed",
        "key-mismatch",
        "unknown-session",
        "unasked-accept",
        "unasked-key",
        "before-accept",
        "replay",
        "repeated-open",
        "too-old",
    )
)
"""Why a session message that failed its checks is dropped."""


def marker(what: str) -> str:
    """A plaintext found nowhere else."""
    return f"plaintext-{what}-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing the middle does makes a node log an error (a callback or the host failing)."""
    caplog.set_level(logging.ERROR, logger="peer_relay")
    yield
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("peer_relay")
    ]
    assert not errors, "errors logged:\n" + "\n".join(errors)


@dataclass
class Middle:
    """alice and bob, whose only links are to the man in the middle."""

    mitm: Mitm
    alice: PeerRelay
    bob: PeerRelay
    at_alice: Inbox
    at_bob: Inbox
    handled: Counter[str] = field(default_factory=Counter)
    """Requests each handler ran, by the ``m`` of their data."""
    lost: list[str] = field(default_factory=list)
    """Links that closed (there should be none)."""
    fences: int = 0

    @property
    def a(self) -> str:
        return self.alice.id.hex()

    @property
    def b(self) -> str:
        return self.bob.id.hex()

    def watch(self, label: str, node: PeerRelay) -> None:
        """Keep what ``node`` receives, answer its requests, and note its links that close."""

        def handler(data: Any, sender: bytes) -> Any:
            self.handled[str(data.get("m") if isinstance(data, dict) else data)] += 1
            return {"echo": data}

        node.on("request", handler)
        node.on("peer-closed", lambda peer, reason: self.lost.append(f"{label}: {reason}"))

    async def fence(self, sender: PeerRelay, receiver: PeerRelay, inbox: Inbox) -> None:
        """An honest message from ``sender`` to ``receiver`` through the middle, waited for:
        links are ordered, so everything the middle sent the receiver before it has been
        read by then."""
        self.fences += 1
        data = {"fence": self.fences}
        sender.send(receiver.id, data)
        await wait_until(lambda: inbox.has(data), 10.0, f"fence {self.fences}")

    def linked(self) -> bool:
        """Whether alice and bob still hold their link to the middle, and no link closed."""
        mine = self.mitm.me.id
        return not self.lost and self.alice.peers == [mine] and self.bob.peers == [mine]


def dropped(node: PeerRelay) -> Counter[str]:
    """``node``'s drops by reason."""
    return Counter(node.stats["dropped"])


async def arrives(inbox: Inbox, data: Any) -> None:
    """Wait until ``data`` is in ``inbox``."""
    await wait_until(lambda: inbox.has(data), 10.0, f"{data} to arrive")


def delivered(inbox: Inbox) -> list[Any]:
    """What an inbox got apart from the fences."""
    return [data for data, _ in inbox.got if not (isinstance(data, dict) and "fence" in data)]


@contextlib.asynccontextmanager
async def in_the_middle(
    alice: dict[str, Any] | None = None, bob: dict[str, Any] | None = None
) -> AsyncIterator[Middle]:
    """alice and bob, client-only, each linked to the man in the middle only."""
    async with Mitm() as mitm:
        nodes: list[PeerRelay] = []
        middle = None
        try:
            for options in (alice, bob):
                nodes.append(await PeerRelay(bootstrap=[mitm.url], **(options or {})).start())
            a, b = nodes
            await mitm.wait_linked(a.id, b.id)
            middle = Middle(mitm, a, b, Inbox(a), Inbox(b))
            middle.watch("alice", a)
            middle.watch("bob", b)
            yield middle
            assert not mitm.errors, mitm.errors
        finally:
            if middle is not None:
                nodes += [middle.alice, middle.bob]  # a test may have replaced one
            for node in reversed(nodes):
                await node.destroy()


# ----------------------------------------------------------------------------- confidentiality


@pytest.mark.parametrize("first", ["send", "deliver", "request"])
async def test_the_middle_sees_no_plaintext_of_any_message(first: str) -> None:
    """send, deliver and request both ways, and the replies: the first message rides in the
    handshake (``first`` says which kind), the others in sealed messages. Every one arrives, and
    no frame the middle read holds its text, as written or once its session bytes are decoded
    from their base64; the middle cannot open alice's handshake with its own key either."""
    async with in_the_middle() as net:
        alice, bob = net.alice, net.bob
        secrets = {name: marker(name) for name in ("send", "deliver", "request")}
        order = [first, *(name for name in secrets if name != first)]
        replies: list[Any] = []
        for sender, receiver, inbox in ((alice, bob, net.at_bob), (bob, alice, net.at_alice)):
            for name in order:
                data = {"m": f"{secrets[name]}-{inbox is net.at_bob}"}
                if name == "send":
                    sender.send(receiver.id, data)
                    await arrives(inbox, data)
                elif name == "deliver":
                    await sender.deliver(receiver.id, data, timeout=5.0)
                else:
                    replies.append(await sender.request(receiver.id, data, timeout=5.0))
        assert len(net.handled) == 2 and set(net.handled.values()) == {1}
        assert [reply["echo"]["m"] for reply in replies] == [
            f"{secrets['request']}-{to_bob}" for to_bob in (True, False)
        ]
        assert len(delivered(net.at_bob)) == len(delivered(net.at_alice)) == 2

        mitm = net.mitm
        kinds = Counter(KINDS[p.kind] for p in mitm.sealed() if p.kind is not None)
        assert set(kinds) == {"KEY_ASK", "KEY", "OPEN", "ACCEPT", "SEALED"}, kinds
        between = [p for p in mitm.seen if p.to != mitm.hex]
        assert between and all(p.blob is not None for p in between), "a message went in clear"
        for secret in secrets.values():
            for view in mitm.views():
                assert secret.encode() not in view, f"the middle read {secret}"

        # The middle holds the ciphertext of the handshake, and a key, but not bob's key.
        opening = mitm.sealed(net.a, OPEN)[0]
        assert opening.blob is not None and opening.sid is not None
        prologue = PROLOGUE + alice.id + bob.id + opening.sid.to_bytes(4, "big")
        with pytest.raises(SealError):
            NoiseSuite(mitm.me.private_bytes()).responder(prologue).read(opening.blob[5:])
        assert net.linked(), net.lost


# ----------------------------------------------------------------------------- tampering


def altered(blob: bytes) -> list[bytes]:
    """Every byte of ``blob`` with its low bit and with its high bit flipped, and ``blob`` cut
    short by one byte, to its kind, and made one byte longer."""
    out = [flipped(blob, i, mask) for mask in (0x01, 0x80) for i in range(len(blob))]
    return [*out, blob[:-1], blob[:1], blob + b"\x00"]


async def test_every_altered_byte_of_every_session_message_is_dropped_and_counted() -> None:
    """The first session message of each kind each way (KEY_ASK, KEY, OPEN with its early data,
    SEALED) reaches its destination after copies of it with every byte altered (and cut short,
    and made longer), each under a new envelope nonce. The destination drops every copy and
    counts it under a reason, delivers the genuine message once, and raises nothing; nobody's
    link is cut. (ACCEPT: see the two tests after this one.)"""
    async with in_the_middle(LOOSE, LOOSE) as net:
        mitm = net.mitm
        done: set[tuple[str, int]] = set()
        sent: Counter[str] = Counter()

        def rule(passing: Passing) -> list[bytes]:
            kind = passing.kind
            if passing.blob is None or kind is None or kind == ACCEPT:
                return [mitm.relayed(passing)]
            if (passing.src, kind) in done:
                return [mitm.relayed(passing)]
            done.add((passing.src, kind))
            copies = [mitm.rewrite(passing, b, nonce=new_nonce()) for b in altered(passing.blob)]
            sent[passing.to] += len(copies)
            return [*copies, mitm.relayed(passing)]

        mitm.rule = rule
        before = {net.a: dropped(net.alice), net.b: dropped(net.bob)}
        first, second, third = ({"m": marker(str(i))} for i in range(3))
        net.alice.send(net.bob.id, first)  # KEY_ASK, KEY, OPEN (first rides in it), ACCEPT
        await arrives(net.at_bob, first)
        await net.alice.deliver(net.bob.id, second, timeout=10.0)  # SEALED both ways
        net.bob.send(net.alice.id, third)
        await arrives(net.at_alice, third)
        await net.fence(net.alice, net.bob, net.at_bob)

        assert done == {
            (net.a, KEY_ASK),
            (net.b, KEY),
            (net.a, OPEN),
            (net.a, SEALED),
            (net.b, SEALED),
        }
        assert delivered(net.at_bob) == [first, second]
        assert delivered(net.at_alice) == [third]
        for node in (net.alice, net.bob):
            me = node.id.hex()
            counted = dropped(node) - before[me]
            assert set(counted) <= REFUSED, counted
            assert counted.total() == sent[me], (counted, sent[me])
        assert sent[net.a] > 100 and sent[net.b] > 400, sent
        assert net.linked(), net.lost


ACCEPT_POSITIONS = (0, 1, 4, 5, 20, 36, 37, 52)
"""Bytes of an ACCEPT (kind, sid, ephemeral key, tag of its empty payload) altered one per
handshake."""


async def test_an_altered_accept_is_dropped_and_counted() -> None:
    """bob's ACCEPT reaches alice with one byte altered (a different byte each time), cut short
    or made longer, instead of the genuine one: she drops it, counts it, raises nothing, and her
    handshake fails in its time (``session_timeout``); once the middle lets the ACCEPT through,
    a session opens."""
    # A handshake fails after 0.3 s, noticed when its OPEN would be sent again (0.35 s).
    alice_options = {**LOOSE, "session_timeout": 0.3, "initial_rto": 0.35}
    async with in_the_middle(alice_options, LOOSE) as net:
        mitm = net.mitm
        todo: list[tuple[str, Any]] = [("flip", i) for i in ACCEPT_POSITIONS]
        todo += [("cut", 1), ("cut", 20), ("longer", 1)]
        current: list[tuple[str, Any]] = []

        def rule(passing: Passing) -> list[bytes]:
            if passing.kind != ACCEPT or not current or passing.blob is None:
                return [mitm.relayed(passing)]
            how, arg = current[0]
            blob = passing.blob
            if how == "flip":
                blob = flipped(blob, arg)
            elif how == "cut":
                blob = blob[:-arg]
            else:
                blob = blob + bytes(arg)
            return [mitm.rewrite(passing, blob)]

        mitm.rule = rule
        refused = 0
        for round_, how in enumerate(todo):
            current[:] = [how]
            before = dropped(net.alice)
            data = {"m": f"round {round_}"}
            net.alice.send(net.bob.id, data)

            def failed(before: Counter[str] = before) -> bool:
                return (dropped(net.alice) - before)["no-session"] > 0

            await wait_until(failed, 10.0, f"the handshake of round {round_} ({how}) to fail")
            counted = dropped(net.alice) - before
            assert (counted & Counter(dict.fromkeys(REFUSED, 1))).total() == 1, (how, counted)
            refused += 1
            assert net.at_bob.has(data)  # the OPEN was genuine, and carried it
        current.clear()
        await net.alice.deliver(net.bob.id, {"m": "after"}, timeout=5.0)
        assert refused == len(todo)
        assert not delivered(net.at_alice)
        assert len(delivered(net.at_bob)) == len(todo) + 1
        assert net.linked(), net.lost


async def test_one_altered_accept_does_not_spoil_the_genuine_one() -> None:
    """A copy of bob's ACCEPT with one byte of its ephemeral key altered reaches alice just
    before the genuine one: she drops the copy and takes the genuine ACCEPT, and her deliver()
    (whose receipt rides in the ACCEPT) returns. Any relay on the path of alice's OPEN (which
    names the session id) can send such a copy, by any route."""
    async with in_the_middle() as net:
        mitm = net.mitm

        def rule(passing: Passing) -> list[bytes]:
            if passing.kind == ACCEPT and passing.blob is not None:
                return [mitm.rewrite(passing, flipped(passing.blob, 20)), mitm.relayed(passing)]
            return [mitm.relayed(passing)]

        mitm.rule = rule
        try:
            await net.alice.deliver(net.bob.id, {"m": "through"}, timeout=3.0)
        finally:
            assert net.linked(), net.lost


# ----------------------------------------------------------------------------- replay


async def test_replayed_session_messages_are_delivered_at_most_once() -> None:
    """Once alice and bob have exchanged a send (in the OPEN), a deliver, a request and its
    reply, and another send each way, the middle sends each session message of theirs again,
    as it was and under a new envelope nonce. Nothing is delivered twice, no handler runs
    twice, and every replayed OPEN and SEALED is dropped and counted (a replayed KEY_ASK is
    answered again, with a KEY nobody asked for, dropped in turn)."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        m1, m2, m3, m4, m5 = ({"m": marker(str(i))} for i in range(5))
        alice.send(bob.id, m1)
        await alice.deliver(bob.id, m2, timeout=5.0)
        reply = await alice.request(bob.id, m3, timeout=5.0)
        alice.send(bob.id, m4)
        bob.send(alice.id, m5)
        await arrives(net.at_bob, m4)
        await arrives(net.at_alice, m5)
        to_bob, to_alice = mitm.sealed(net.a), mitm.sealed(net.b)
        kinds = Counter(KINDS[p.kind] for p in to_bob if p.kind)
        assert kinds == {"KEY_ASK": 1, "OPEN": 1, "SEALED": 4}, kinds  # m2, m3, receipt, m4
        back = Counter(KINDS[p.kind] for p in to_alice if p.kind)
        assert back == {"KEY": 1, "ACCEPT": 1, "SEALED": 4}, back  # 2 receipts, reply, m5

        before = {net.a: dropped(alice), net.b: dropped(bob)}
        for passing in [*to_bob, *to_alice]:
            for frame in (mitm.relayed(passing), mitm.rewrite(passing, nonce=new_nonce())):
                assert await mitm.send_to(passing.to, frame)
        await net.fence(alice, bob, net.at_bob)
        await net.fence(bob, alice, net.at_alice)  # after the KEYs answering the KEY_ASKs

        assert delivered(net.at_bob) == [m1, m2, m4]
        assert delivered(net.at_alice) == [m5]
        assert reply == {"echo": m3} and net.handled == {m3["m"]: 1}
        at_bob, at_alice = dropped(bob) - before[net.b], dropped(alice) - before[net.a]
        assert at_bob == {"repeated-open": 2, "replay": 8}, at_bob
        assert at_alice == {"unasked-key": 4, "unasked-accept": 2, "replay": 8}, at_alice
        assert net.linked(), net.lost


async def test_a_sealed_message_replayed_beyond_the_window_is_dropped() -> None:
    """The first sealed message from alice to bob, replayed after 1,100 more (beyond the replay
    window of 1,024 nonces), is dropped as too old."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        await alice.deliver(bob.id, {"m": "opens the session"}, timeout=5.0)
        alice.send(bob.id, {"m": "first sealed"})
        for i in range(1101):
            alice.send(bob.id, {"m": i})
        await wait_until(lambda: net.at_bob.has({"m": 1100}), 20.0, "1,101 messages")
        first = mitm.sealed(net.a, SEALED)[0]
        before = dropped(bob)
        await mitm.send_to(net.b, mitm.rewrite(first, nonce=new_nonce()))
        await net.fence(alice, bob, net.at_bob)
        assert dropped(bob) - before == {"too-old": 1}
        assert len(delivered(net.at_bob)) == 1103
        assert net.linked(), net.lost


async def test_a_replayed_open_is_not_delivered_again_after_bob_restarts() -> None:
    """bob takes alice's OPEN (and the message in it), stops, and starts again with the same
    identity and an empty memory; the middle replays the OPEN, which he can decrypt: it is
    dropped as dated before his start, and its message is not delivered again. alice's next
    deliver() finds her session gone (``session-reset``) and opens a new one."""
    async with in_the_middle() as net:
        alice, mitm = net.alice, net.mitm
        first = {"m": marker("early")}
        alice.send(net.bob.id, first)
        await arrives(net.at_bob, first)
        opening = mitm.sealed(net.a, OPEN)[0]
        await net.bob.destroy()
        net.bob = bob = await PeerRelay(bootstrap=[mitm.url], identity=net.bob.identity).start()
        net.at_bob = Inbox(bob)
        await mitm.wait_linked(bob.id)
        net.lost.clear()  # the old bob's link, closed with him
        net.watch("bob", bob)
        for frame in (mitm.relayed(opening), mitm.rewrite(opening, nonce=new_nonce())):
            await mitm.send_to(net.b, frame)
        second = {"m": marker("after")}
        await alice.deliver(bob.id, second, timeout=5.0)  # the first copy follows the replays
        assert dropped(bob)["before-start"] == 2
        assert dropped(bob)["unknown-session"] >= 1  # alice's old session
        assert delivered(net.at_bob) == [second]
        assert net.linked(), net.lost


# ----------------------------------------------------------------------------- forgery


def impersonating_open(
    mitm: Mitm, alice: PeerRelay, bob: PeerRelay, key: bytes, data: Any
) -> bytes:
    """An OPEN from the middle's own Noise key in alice's name, naming ``key`` as hers and
    carrying ``data`` as early data: a handshake bob can read, whose key is not alice's."""
    bob_static = x25519_public_from_ed25519(bob.identity.public_key)
    assert bob_static is not None
    sid = int.from_bytes(os.urandom(4), "big")
    prologue = PROLOGUE + alice.id + bob.id + sid.to_bytes(4, "big")
    handshake = NoiseSuite(mitm.me.private_bytes()).initiator(prologue, bob_static)
    payload = key + int(time.time() * 1000).to_bytes(8, "big")
    payload += inner(DATA, 0, 0, wire.canonical(data))
    return bytes((OPEN,)) + sid.to_bytes(4, "big") + handshake.write(payload)


async def test_messages_forged_in_alices_name_are_not_delivered() -> None:
    """With a session open between alice and bob, the middle writes to bob in alice's name:
    made-up ciphertext under her session and under an unknown one, bob's own ciphertext sent
    back to him, her ciphertext claimed by another sender, handshakes of its own naming her key
    or its own, and a KEY_ASK naming its key; and to alice in bob's name: a KEY naming its key,
    and a signed session-reset of her session (signed with its key). None is delivered or acted
    on, each is counted; alice's session lives on."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        alice.send(bob.id, {"m": "opens the session"})
        await alice.deliver(bob.id, {"m": "and goes on in it"}, timeout=5.0)
        for i in range(3):  # bob's nonces run ahead of alice's: his reflected one is new to bob
            bob.send(alice.id, {"m": i})
        await arrives(net.at_alice, {"m": 2})
        mine = alice.identity.public_key
        ours = mitm.sealed(net.a, SEALED)[-1]
        theirs = mitm.sealed(net.b, SEALED)[-1]
        assert ours.blob is not None and theirs.blob is not None and ours.sid is not None
        sid = ours.sid.to_bytes(4, "big")
        late = (1 << 20).to_bytes(8, "big")
        inner_forged = inner(DATA, 0, 0, wire.canonical({"forged": True}))
        stranger = Identity.generate().id.hex()
        to_bob = {
            "made-up ciphertext": mitm.forged(
                net.b, net.a, bytes((SEALED,)) + sid + late + os.urandom(len(inner_forged) + 16)
            ),
            "unknown session": mitm.forged(
                net.b, net.a, bytes((SEALED,)) + os.urandom(4) + late + os.urandom(40)
            ),
            "reflected": mitm.rewrite(theirs, sender=net.a, to=net.b, nonce=new_nonce()),
            "another sender": mitm.rewrite(ours, sender=stranger, nonce=new_nonce()),
            "her key, its handshake": mitm.forged(
                net.b, net.a, impersonating_open(mitm, alice, bob, mine, {"forged": True})
            ),
            "its key, its handshake": mitm.forged(
                net.b,
                net.a,
                impersonating_open(mitm, alice, bob, mitm.me.public_key, {"forged": True}),
            ),
            "its key asked for": mitm.forged(net.b, net.a, bytes((KEY_ASK,)) + mitm.me.public_key),
        }
        key_offer = mitm.forged(net.a, net.b, bytes((KEY,)) + mitm.me.public_key)
        reset = forge.signed(
            mitm.me, net.a, wire.SESSION_RESET, ours.sid, sender_hex=net.b, via_hex=mitm.hex
        )
        reset_bobs_key = forge.signed(
            mitm.me,
            net.a,
            wire.SESSION_RESET,
            ours.sid,
            sender_hex=net.b,
            key=bob.identity.public_key,
            via_hex=mitm.hex,
        )
        before = {net.a: dropped(alice), net.b: dropped(bob)}
        for frame in to_bob.values():
            await mitm.send_to(net.b, frame)
        for frame in (key_offer, reset, reset_bobs_key):
            await mitm.send_to(net.a, frame)
        await net.fence(alice, bob, net.at_bob)
        await net.fence(bob, alice, net.at_alice)

        at_bob = dropped(bob) - before[net.b]
        assert at_bob == {
            "bad-ciphertext": 2,  # made up; reflected (bob's key the other way)
            "unknown-session": 2,  # an unknown sid; alice's ciphertext from a stranger
            "key-mismatch": 3,  # the handshakes' keys are not alice's; its key is not hers
        }, at_bob
        at_alice = dropped(alice) - before[net.a]
        assert at_alice == {"key-mismatch": 2, "bad-signature": 1}, at_alice
        assert not [d for box in (net.at_alice, net.at_bob) for d, _ in box.got if "forged" in d]
        # alice's session lives on: her next message is sealed in it, no new handshake.
        await alice.deliver(bob.id, {"m": "still in the session"}, timeout=5.0)
        assert len(mitm.sealed(net.a, OPEN)) == 1
        assert mitm.sealed(net.a, SEALED)[-1].sid == ours.sid
        assert net.linked(), net.lost


async def test_alices_ciphertext_under_another_session_is_not_delivered() -> None:
    """alice replaces her session with bob (``session_rekey``): both hold two sessions. The
    middle moves a message of the old session under the new session's id, and one of the new
    under the old: neither opens, both are counted."""
    async with in_the_middle({"session_rekey": 0.5}) as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        alice.send(bob.id, {"m": "opens"})
        for i in range(3):
            await alice.deliver(bob.id, {"m": i}, timeout=5.0)
        deadline = time.monotonic() + 10.0
        while len(mitm.sealed(net.a, OPEN)) < 2:  # the next message after 0.5 s rekeys
            assert time.monotonic() < deadline, "no second session"
            await alice.deliver(bob.id, {"m": f"rekey at {time.monotonic()}"}, timeout=5.0)
            await asyncio.sleep(0.1)
        await alice.deliver(bob.id, {"m": "in the new session"}, timeout=5.0)
        old_sid, new_sid = (p.sid for p in mitm.sealed(net.a, OPEN)[:2])
        assert old_sid is not None and new_sid is not None and old_sid != new_sid
        old = [p for p in mitm.sealed(net.a, SEALED) if p.sid == old_sid]
        new = [p for p in mitm.sealed(net.a, SEALED) if p.sid == new_sid]
        assert old and new
        spliced = []
        for passing, sid in ((old[-1], new_sid), (new[-1], old_sid)):
            assert passing.blob is not None
            blob = passing.blob[:1] + sid.to_bytes(4, "big") + passing.blob[5:]
            spliced.append(mitm.rewrite(passing, blob, nonce=new_nonce()))
        before = dropped(bob)
        for frame in spliced:
            await mitm.send_to(net.b, frame)
        await net.fence(alice, bob, net.at_bob)
        counted = dropped(bob) - before
        assert counted.total() == 2 and set(counted) <= {"bad-ciphertext", "replay"}, counted
        assert len(delivered(net.at_bob)) == len(set(map(str, delivered(net.at_bob))))
        assert net.linked(), net.lost


async def test_a_key_the_middle_substitutes_for_bobs_is_refused() -> None:
    """alice asks for bob's key; the middle holds her KEY_ASK back and answers itself, in bob's
    name, with its own key: she refuses it (the key must hash to bob's id), asks again, gets
    bob's, and her message reaches him; the middle cannot read the handshake that carried it."""
    async with in_the_middle({"initial_rto": 0.2}) as net:
        mitm = net.mitm
        held: list[Passing] = []
        answers: list[asyncio.Task[bool]] = []

        def rule(passing: Passing) -> list[bytes]:
            if passing.kind == KEY_ASK and not held:
                held.append(passing)
                answer = mitm.forged(net.a, net.b, bytes((KEY,)) + mitm.me.public_key)
                mitm.rule = mitm.honest
                answers.append(asyncio.create_task(mitm.send_to(net.a, answer)))
                return []
            return [mitm.relayed(passing)]

        mitm.rule = rule
        secret = {"m": marker("substituted")}
        await net.alice.deliver(net.bob.id, secret, timeout=5.0)
        assert held and answers and await answers[0]
        assert dropped(net.alice)["key-mismatch"] == 1
        assert len(mitm.sealed(net.a, KEY_ASK)) == 2
        for view in mitm.views():
            assert secret["m"].encode() not in view
        assert delivered(net.at_bob) == [secret]
        assert net.linked(), net.lost


async def test_handshakes_forged_in_alices_name_do_not_spend_her_budget() -> None:
    """alice and bob (client-only) are linked to an honest relay; an attacker off their path,
    linked to that relay as any peer may be, sends bob 100 KEY_ASKs a second in alice's name
    (naming her key, which needs no secret). They cost bob nothing but KEYs sent to alice; her
    own handshake, and her deliver() to him, still go through."""
    async with Mitm() as attacker:
        nodes: list[PeerRelay] = []
        try:
            nodes.append(relay := await PeerRelay(**LOCAL).start())
            url = relay.url or ""
            nodes.append(alice := await PeerRelay(bootstrap=[url]).start())
            # bob wants no other link, so never tries to link to alice: requests from a peer we
            # try to link to are never held up, which would hide what this test looks for.
            nodes.append(bob := await PeerRelay(bootstrap=[url], max_links=1).start())
            await alice.wait_for_peers(1)
            await bob.wait_for_peers(1)
            via = await attacker.dial(url)

            # alice's key is no secret: its hash is her id, and every signed message names it.
            blob = bytes((KEY_ASK,)) + alice.identity.public_key

            async def flood() -> None:
                while True:
                    await attacker.send_to(via, attacker.forged(bob.id.hex(), alice.id.hex(), blob))
                    await asyncio.sleep(0.01)

            flooding = asyncio.create_task(flood())
            try:
                await wait_until(lambda: bob.stats["frames_in"] >= 60, 10.0, "the forgeries")
                await alice.deliver(bob.id, {"m": "still gets through"}, timeout=3.0)
            finally:
                flooding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flooding
        finally:
            for node in reversed(nodes):
                await node.destroy()


# ----------------------------------------------------------------------------- dropping


async def test_deliver_and_request_through_a_middle_that_drops_everything_fail_in_time() -> None:
    """The middle answers pings (so the links stay open) but relays nothing: deliver() and
    request() raise DeliveryError once their timeout is over, not much later, before a session
    exists and with one open."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm

        async def fails(call: str, timeout: float) -> float:
            start = time.monotonic()
            with pytest.raises(DeliveryError):
                if call == "deliver":
                    await alice.deliver(bob.id, {"m": call}, timeout=timeout)
                else:
                    await alice.request(bob.id, {"m": call}, timeout=timeout)
            return time.monotonic() - start

        plan = [("deliver", 0.5), ("deliver", 1.0), ("request", 1.5), ("deliver", 2.0)]
        for warm in (False, True):
            if warm:
                mitm.rule = mitm.honest
                await alice.deliver(bob.id, {"m": "opens the session"}, timeout=5.0)
                count = len(delivered(net.at_bob))
            mitm.rule = lambda passing: []
            took = await asyncio.gather(*(fails(call, t) for call, t in plan))
            for (call, timeout), seconds in zip(plan, took, strict=True):
                assert timeout - 0.01 <= seconds <= timeout + SLACK, (warm, call, timeout, seconds)
        assert len(delivered(net.at_bob)) == count  # nothing got through once it dropped
        assert dropped(alice)["undelivered"] == 2 * len(plan)
        assert net.linked(), net.lost


async def test_a_deliver_that_failed_is_not_delivered_later() -> None:
    """deliver() and request() raise DeliveryError while the middle drops everything (no
    session can open); then it relays again and a later message opens a session. The messages
    the caller was told were not delivered do not arrive after all, and the handler does not
    run for the request whose caller gave up on it."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        mitm.rule = lambda passing: []
        for call in (
            alice.deliver(bob.id, {"m": "given up"}, timeout=0.5),
            alice.request(bob.id, {"m": "given up too"}, timeout=0.5),
        ):
            with pytest.raises(DeliveryError):
                await call
        mitm.rule = mitm.honest
        later = {"m": "later"}
        await alice.deliver(bob.id, later, timeout=5.0)
        await net.fence(alice, bob, net.at_bob)
        try:
            assert delivered(net.at_bob) == [later]
            assert not net.handled
        finally:
            assert net.linked(), net.lost


async def test_a_message_whose_receipts_are_dropped_is_delivered_once() -> None:
    """The middle drops everything bob sends alice: her deliver() and request() are sent again
    (under new nonces) until they time out and raise; bob delivers the message and runs the
    handler once, whatever the number of copies."""
    async with in_the_middle() as net:
        alice, bob, mitm = net.alice, net.bob, net.mitm
        await alice.deliver(bob.id, {"m": "opens the session"}, timeout=5.0)
        mitm.rule = lambda passing: [] if passing.src == net.b else [mitm.relayed(passing)]
        sealed_before = len(mitm.sealed(net.a, SEALED))
        once, asked = {"m": marker("once")}, {"m": marker("asked")}
        for call in (alice.deliver(bob.id, once, timeout=2.0), alice.request(bob.id, asked, 2.0)):
            with pytest.raises(DeliveryError):
                await call
        copies = len(mitm.sealed(net.a, SEALED)) - sealed_before
        assert copies >= 4, copies
        assert delivered(net.at_bob) == [{"m": "opens the session"}, once]
        assert net.handled == {asked["m"]: 1}
        assert dropped(bob)["duplicate"] == copies - 2
        mitm.rule = mitm.honest
        await alice.deliver(bob.id, {"m": "again"}, timeout=5.0)
        assert net.linked(), net.lost
