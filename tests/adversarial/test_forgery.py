"""Forgery, tampering, impersonation and replay: what an attacker writes in another peer's name,
changes on the way, claims on a link, or sends again after its destination restarted is never
delivered, and is counted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from peer_relay import Identity, PeerRelay, wire

from . import forge
from .conftest import Honest
from .harness import (
    LOCAL,
    BoundsWatch,
    Inbox,
    LinkWatch,
    attacking,
    drops,
    wait_until,
    write_frames,
)


def forged(data: object) -> bool:
    """Whether a delivered message is one of the attacker's."""
    return isinstance(data, dict) and "forged" in data


async def test_forged_tampered_and_impersonating_frames_deliver_nothing(
    honest: Honest, tmp_path: Path
) -> None:
    """Messages in alice's name signed with the attacker's key (naming its own key, or alice's),
    unsigned ones in her name, and the attacker's own signed messages with one byte of data
    changed, to the victim and (relayed) to bob; and links whose hello claims alice's id with the
    attacker's key, with alice's key but no proof that holds, and with no key at all. Nothing is
    delivered, every one is counted, and alice keeps her link."""
    victim, alice, bob = honest.victim, honest.alice, honest.bob
    me = Identity.generate()
    mine = me.id.hex()  # the attacker hands these on: it is their last hop
    her, her_key = alice.id.hex(), alice.identity.public_key
    batch: list[bytes] = []
    for to in (victim.id.hex(), bob.id.hex()):
        batch += [
            forge.signed(me, to, wire.USER, {"forged": "mine"}, sender_hex=her, via_hex=mine),
            forge.signed(
                me, to, wire.USER, {"forged": "hers"}, sender_hex=her, key=her_key, via_hex=mine
            ),
            forge.unsigned(to, her, wire.USER, {"forged": "her name, unsigned"}, via_hex=mine),
            forge.tampered(forge.signed(me, to, wire.USER, {"forged": "tampered"})),
        ]
    offer = {"ws": None, "wrtc": False}
    batch += [
        forge.signed(
            me, victim.id.hex(), wire.FIND_PEERS, her, sender_hex=her, key=her_key, via_hex=mine
        ),
        forge.signed(
            me, victim.id.hex(), wire.HANDSHAKE_OFFER, offer, sender_hex=her, via_hex=mine
        ),
    ]
    nonce = b"n" * 16
    hellos = {
        "key-mismatch": [wire.hello_frame(alice.id, me.public_key, nonce)],
        "bad-proof": [
            wire.hello_frame(alice.id, her_key, nonce),
            wire.proof_frame(me.sign(b"not the proof")),
        ],
        "unauthenticated-peer": [wire.hello_frame(alice.id, None, None)],
    }
    with LinkWatch(honest.nodes) as links:
        async with BoundsWatch(honest.nodes) as bounds:
            messages = write_frames(tmp_path / "messages.json", list(batch))
            claims = [
                write_frames(tmp_path / f"{reason}.json", list(frames))
                for reason, frames in hellos.items()
            ]
            key = me.private_bytes().hex()
            async with (
                attacking("frames", honest.url, "--frames-file", messages, "--key", key) as sender,
                attacking("frames", honest.url, "--raw", "--frames-file", claims[0]) as c0,
                attacking("frames", honest.url, "--raw", "--frames-file", claims[1]) as c1,
                attacking("frames", honest.url, "--raw", "--frames-file", claims[2]) as c2,
            ):
                reports = (a.event("done") for a in (sender, c0, c1, c2))
                sent, *claimed = await asyncio.gather(*reports)

            refused = ("key-mismatch", "bad-signature", "unsigned", "check-budget")

            def counted() -> bool:
                # Six messages and one hello at the victim, four messages at bob.
                return drops(victim, *refused) >= 7 and drops(bob, *refused) >= 4

            await wait_until(counted, 10.0, "every forgery counted")
            await honest.flows()
    assert sent["sent"] == len(batch)
    for report in claimed:
        assert not report["open"], f"an impersonating link stayed open: {report}"
    for reason in hellos:
        assert drops(victim, reason) >= 1, reason
    assert not [data for box in honest.inboxes.values() for data, _ in box.got if forged(data)]
    assert alice.id in victim.peers
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_a_flood_of_forgeries_relayed_to_bob_does_not_cut_alices_messages(
    honest: Honest,
) -> None:
    """The attacker sends 2,000 findPeers a second to bob in alice's name, naming her key, with
    bad signatures: the victim relays them (relays do not verify) on the one link that also
    carries alice's honest messages to bob. Bob refuses every forgery, and still gets alice's
    messages."""
    victim, bob = honest.victim, honest.bob
    target, her = bob.id.hex(), honest.alice.id.hex()
    key = wire.b64encode(honest.alice.identity.public_key)
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch(honest.nodes) as bounds,
            attacking(
                "flood",
                honest.url,
                *("--target", target, "--rate", "2000", "--as-id", her, f"--as-key={key}"),
                *("--source", "127.0.0.3", "--reconnect"),
            ) as flood,
        ):
            await flood.event("ready")
            await wait_until(
                lambda: drops(bob, "bad-signature", "check-budget") > 1000, 15.0, "the forgeries"
            )
            for _ in range(10):
                await honest.flows()
            await flood.finish()
    assert victim.stats["relayed"] > 1000
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_a_message_replayed_after_its_destination_restarts_is_not_delivered(
    tmp_path: Path,
) -> None:
    """A signed message is delivered once; its destination stops and starts again with the
    same identity (and an empty duplicate filter); the very same frame, sent again within the
    replay window, is dropped (as dated before the start, or as a replay) and not delivered."""
    identity, sender = Identity.generate(), Identity.generate()
    frames = str(tmp_path / "frame.json")
    key = sender.private_bytes().hex()
    replayed = ("before-start", "replay", "duplicate")

    async def deliver(node: PeerRelay) -> None:
        async with attacking("frames", node.url or "", "--frames-file", frames, "--key", key) as a:
            await a.event("done")

    async with PeerRelay(**LOCAL, identity=identity) as first:
        inbox = Inbox(first)
        frame = forge.signed(sender, identity.id.hex(), wire.USER, {"pay": "once"})
        write_frames(Path(frames), [frame])
        await deliver(first)
        await wait_until(lambda: inbox.has({"pay": "once"}), 10.0, "the first delivery")
    async with PeerRelay(**LOCAL, identity=identity) as second:
        inbox = Inbox(second)
        await deliver(second)
        await wait_until(lambda: inbox.got or drops(second, *replayed), 10.0, "the replay")
        assert not inbox.got, "the replayed message was delivered again"
        assert drops(second, *replayed) == 1
