"""The honest network every adversarial test attacks: a listening victim and two client-only
peers, alice and bob, whose only link is to the victim (so alice's messages to bob cross it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from peer_relay import PeerRelay

from .harness import LOCAL, Inbox, more_open_files, round_trip


@pytest.fixture(scope="session", autouse=True)
def open_files() -> Iterator[None]:
    """Room for the thousands of sockets an attack makes the victim hold."""
    more_open_files()
    yield


@dataclass
class Honest:
    """The victim and its two honest peers, each with its messages kept."""

    victim: PeerRelay
    alice: PeerRelay
    bob: PeerRelay
    inboxes: dict[str, Inbox] = field(default_factory=dict)
    sent: int = 0

    @property
    def nodes(self) -> dict[str, PeerRelay]:
        return {"victim": self.victim, "alice": self.alice, "bob": self.bob}

    @property
    def url(self) -> str:
        assert self.victim.url is not None
        return self.victim.url

    async def flows(self) -> float:
        """An honest message alice -> victim -> bob arrives (seconds it took)."""
        self.sent += 1
        return await round_trip(self.alice, self.inboxes["bob"], self.bob, self.sent)


@pytest.fixture
async def honest() -> AsyncIterator[Honest]:
    victim = await PeerRelay(**LOCAL).start()
    alice = bob = None
    try:
        alice = await PeerRelay(bootstrap=[victim.url or ""]).start()
        bob = await PeerRelay(bootstrap=[victim.url or ""]).start()
        net = Honest(victim, alice, bob)
        net.inboxes = {label: Inbox(node) for label, node in net.nodes.items()}
        await alice.wait_for_peers(1)
        await bob.wait_for_peers(1)
        yield net
    finally:
        for node in (bob, alice, victim):
            if node is not None:
                await node.destroy()
