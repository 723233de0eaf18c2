"""Fixtures that run real peer-relay@0.0.2 peers (Node 20) next to the Python tests.

Without node/npm, or if the npm install fails, every test using these fixtures is SKIPPED
with the reason. Set PEER_RELAY_REQUIRE_ORIGINAL=1 to turn that skip into a failure (CI).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .original import OriginalNetwork, OriginalUnavailable, ensure_original


def _unavailable(reason: str) -> None:
    if os.environ.get("PEER_RELAY_REQUIRE_ORIGINAL") == "1":
        pytest.fail(f"peer-relay@0.0.2 is required but unavailable: {reason}")
    pytest.skip(f"peer-relay@0.0.2 unavailable: {reason}")


@pytest.fixture(scope="session")
def original_node_modules() -> Path:
    """node_modules holding peer-relay@0.0.2 and @roamhq/wrtc@0.10.0 (installed once)."""
    try:
        return ensure_original()
    except OriginalUnavailable as exc:
        _unavailable(str(exc))
        raise  # unreachable: skip/fail raise


@pytest.fixture
async def original(original_node_modules: Path) -> AsyncIterator[OriginalNetwork]:
    """A fresh Node process hosting 0.0.2 peers; fails the test if 0.0.2 crashed."""
    try:
        # PEER_RELAY_ORIGINAL_DEBUG=peer-relay:* turns on 0.0.2's own debug log (to stderr)
        net = await OriginalNetwork.start(
            original_node_modules, debug=os.environ.get("PEER_RELAY_ORIGINAL_DEBUG")
        )
    except OriginalUnavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        yield net
        net.assert_alive()
    finally:
        await net.close(check=False)
        tail = net.stderr_tail()
        if tail:  # shown by pytest only when the test fails
            print("--- node driver stderr (tail) ---\n" + tail)
