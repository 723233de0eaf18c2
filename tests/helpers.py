"""Shared test helpers: polling with a deadline (never fixed sleeps), node factories."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from peer_relay import PeerRelay


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` holds, polling; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def frame_reasons(stats: dict[str, object]) -> dict[str, int]:
    """The drop counters of a node's stats."""
    dropped = stats.get("dropped", {})
    assert isinstance(dropped, dict)
    return dropped


async def settled(nodes: list[PeerRelay], quiet: float = 2.0, timeout: float = 40.0) -> None:
    """Wait until no link has opened or closed anywhere for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def churn() -> int:
        return sum(n.stats["links_opened"] + n.stats["links_closed"] for n in nodes)

    last, since = churn(), loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, "the network did not settle"
        await asyncio.sleep(0.1)
        now = churn()
        if now != last:
            last, since = now, loop.time()
