"""Offers that name URLs: a client-only peer (no server) dials the URL of a handshake-offer
instead of answering it. An attacker could make it dial anything, from as many fresh ids as it
likes, were it not to dial only ws(s) URLs, only for a sender it is connecting to or would link
to, at most once per sender per ``connect_timeout``, and a handful of times in all.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

import peer_relay.node
from peer_relay import Identity, PeerRelay

from .harness import LOCAL, Trap, attacking, quiet, wait_until

SENDERS = 150
"""Fresh ids the offers come from (half name the trap, half a URL that is not ws)."""
REPEATS = 20
"""Offers from one more sender, all naming one URL of the trap."""


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL a node of this process dials, in order (the real dial still happens)."""
    urls: list[str] = []
    real = peer_relay.node.dial

    async def recording(url: str, options: Any) -> Any:
        urls.append(url)
        return await real(url, options)

    monkeypatch.setattr(peer_relay.node, "dial", recording)
    return urls


async def test_offers_from_fresh_ids_make_a_client_dial_a_handful_and_never_a_bad_url(
    dialled: list[str],
) -> None:
    """170 signed offers, relayed to a client-only peer: those naming a silent TCP trap make
    it connect there a handful of times at most (the one sender that repeats itself, once at
    most), those naming an http, javascript, out-of-range or overlong URL are never dialled,
    and the client's own connect() to an honest peer succeeds meanwhile."""
    # When both ask at once, the higher id answers: for a client that cannot be dialled, that
    # means dialling back. The client gets the higher id, so that its connect() may need to.
    low, high = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.id)
    async with (
        PeerRelay(**LOCAL) as relay,
        PeerRelay(bootstrap=[relay.url or ""], identity=high) as client,
        Trap() as trap,  # closed first: the client's dials to it end before the client does
    ):
        await client.wait_for_peers(1)
        assert relay.url in dialled, "the dial recorder must see the node's dials"
        trap_url = f"ws://127.0.0.1:{trap.port}"
        repeat_url = f"{trap_url}/again"
        bad = [
            f"http://127.0.0.1:{trap.port}/",
            "javascript:alert(1)",
            "ws://127.0.0.1:99999",
            f"ftp://127.0.0.1:{trap.port}",
            f" ws://127.0.0.1:{trap.port}",
            "ws://" + "a" * 3000 + ":1",
        ]
        frames_before = client.stats["frames_in"]
        async with attacking(
            "offers",
            relay.url or "",
            *("--target", client.id.hex(), "--senders", str(SENDERS), "--rate", "50"),
            *("--ws-url", trap_url, "--repeat", str(REPEATS), "--repeat-url", repeat_url),
            *(f"--bad-url={url}" for url in bad),
        ) as attacker:
            await attacker.event("ready")
            start = time.monotonic()
            await wait_until(
                lambda: client.stats["frames_in"] >= frames_before + 40, 15.0, "the offers"
            )
            async with PeerRelay(**LOCAL, bootstrap=[relay.url or ""], identity=low) as other:
                await other.wait_for_peers(1)
                with contextlib.suppress(TimeoutError):  # it asks the client too, as a rule
                    await wait_until(
                        lambda: client.id.hex() in other.inspect()["attempts"], 3.0, "its offer"
                    )
                await client.connect(other.id, timeout=5.0)  # generous: it takes milliseconds
                assert other.id in client.peers
            sent = await attacker.event("sent")
            await wait_until(
                lambda: client.stats["frames_in"] >= frames_before + sent["sent"],
                15.0,
                "every offer at the client",
            )
            elapsed = time.monotonic() - start
            await quiet(client, 0.3)
            await attacker.finish()
        assert sent["sent"] == SENDERS + REPEATS
        assert not [url for url in dialled if url in bad], dialled
        assert dialled.count(repeat_url) <= 1, dialled
        # A handful: at most max_connecting at once, and as many again per connect_timeout.
        cfg = client.config
        handful = int(cfg.max_connecting * (1 + elapsed / cfg.connect_timeout))
        assert trap.connections <= handful, f"{trap.connections} dials to the trap in {elapsed}s"
