"""Junk: frames that cost the victim work to refuse. Envelopes addressed to it with a real key
and a bad signature around data that is slow to put in canonical form (floats, deep lists,
non-ASCII keys, big integers, long strings); frames too large, too deep or too large to relay;
and a flood of malformed frames. All are dropped and counted, an attacker's link survives or is
closed as misbehaving, the honest links stay open and honest messages flow.

What the junk costs the victim (ms of CPU per MiB) is measured by benchmarks/hostile.py.
"""

from __future__ import annotations

from pathlib import Path

from peer_relay import Identity, wire

from . import forge
from .conftest import Honest
from .harness import BoundsWatch, LinkWatch, attacking, drops, quiet, wait_until, write_frames

MIB_PER_SHAPE = 4
"""5 shapes: 20 MiB of junk in all."""


def all_drops(honest: Honest) -> int:
    """Every frame the victim dropped, whatever the reason."""
    return sum(honest.victim.stats["dropped"].values())


async def test_junk_with_bad_signatures_is_dropped_and_honest_traffic_flows(
    honest: Honest,
) -> None:
    """20 MiB of junk envelopes (4 MiB of each shape, 64 KiB frames) from an authenticated
    attacker that links again (same key) whenever its link is closed: nothing is delivered,
    every junk frame the victim read is dropped and counted, a link it closed was closed as
    misbehaving, no honest link is lost and honest messages flow after each shape."""
    victim, alice, bob = honest.victim, honest.alice, honest.bob

    def honest_frames() -> int:  # alice and bob link to the victim only
        return alice.stats["frames_out"] + bob.stats["frames_out"]

    await quiet(victim, 0.3)  # no honest frame in flight: the counts below add up
    delivered, dropped = victim.stats["delivered"], all_drops(honest)
    read, honest_before = victim.stats["frames_in"], honest_frames()
    with LinkWatch(honest.nodes) as links:
        async with (
            BoundsWatch(honest.nodes) as bounds,
            attacking(
                "junk",
                honest.url,
                *("--target", victim.id.hex(), "--mib", str(MIB_PER_SHAPE), "--reconnect"),
            ) as junk,
        ):
            await junk.event("ready")
            for _ in forge.JUNK:
                await junk.event("shape-done", 60.0)
                await honest.flows()
            done = await junk.finish()
            await quiet(victim, 0.5)
    # Besides junk, the victim read alice's and bob's frames, and the attacker's hello and
    # proof on each of its links and its pongs.
    others = honest_frames() - honest_before + 2 * done["links"] + done["pongs"]
    junk_read = victim.stats["frames_in"] - read - others
    assert junk_read > 0
    assert victim.stats["delivered"] == delivered, "junk was delivered"
    assert all_drops(honest) - dropped >= junk_read, victim.stats["dropped"]
    assert all(reason == "misbehaving" for reason in done["closes"]), done
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"


async def test_oversize_deep_unrelayable_and_malformed_frames_leave_honest_links_open(
    honest: Honest, tmp_path: Path
) -> None:
    """Data nested 300 deep and a frame that fits ``max_frame`` but not once relayed, both for
    bob; a frame beyond ``max_frame``; and 20 links' worth of malformed frames (each link closed
    as misbehaving, the next one opened with a fresh key): each is dropped or refused, the
    attacker's links close, the honest ones stay open, honest messages flow, bounds hold."""
    victim, bob = honest.victim, honest.bob
    sender, me = "ab" * 20, Identity.generate()
    # From "sender", handed on by the attacker (a frame's last hop is the peer that sent it).
    head = f'{{"to":"{bob.id.hex()}","from":"{sender}","path":["{sender}","{me.id.hex()}"],"nonce":'
    filler = victim.config.max_frame - len(head) - 60
    relayable = [
        head + '"deep","data":{"type":"user","data":' + "[" * 300 + "]" * 300 + "}}",
        head + '"big","data":{"type":"user","data":"' + "x" * filler + '"}}',
    ]
    malformed = [
        "{not json",
        "[]",
        '{"to": 1}',
        "\x00" * 64,
        '{"pr": {"ping": -1}}',
        '{"to": "' + "zz" * 20 + '", "path": []}',
        '"' + "\\ud800" + '"',
        "1e999",
        "[" * 2000 + "]" * 2000,
        wire.proof_frame(b"\x00" * 64).decode(),
    ] * 3
    oversize = ["x" * (victim.config.max_frame + 10)]
    with LinkWatch(honest.nodes) as links:
        async with BoundsWatch(honest.nodes) as bounds:
            files = [
                write_frames(tmp_path / f"{name}.json", batch)
                for name, batch in (("relay", relayable), ("bad", malformed), ("big", oversize))
            ]
            key = ("--key", me.private_bytes().hex())
            async with attacking("frames", honest.url, "--frames-file", files[0], *key) as attacker:
                await attacker.event("done")
            await wait_until(
                lambda: (
                    drops(victim, "too-large-to-relay")
                    and drops(victim, "too-deep") + drops(bob, "too-deep", "unsigned")
                ),
                10.0,
                "the deep frame dropped (by the victim, or by bob), the big one by the victim",
            )
            await honest.flows()
            async with (
                attacking("frames", honest.url, "--frames-file", files[1], "--rounds", "20") as bad,
                attacking("frames", honest.url, "--frames-file", files[2]) as big,
            ):
                flooded = await bad.event("done", 60.0)
                refused = await big.event("done")
            await honest.flows()
    assert drops(victim, "malformed-json") >= 8
    assert len(flooded["closes"]) == 20, flooded
    assert all(reason == "misbehaving" for reason in flooded["closes"]), flooded
    assert not refused["open"], refused
    assert not links.lost
    assert not bounds.exceeded, f"bounds exceeded (largest size, limit): {bounds.exceeded}"
