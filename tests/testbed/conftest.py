"""The testbed's network tests build real namespaces: they need root and iproute2, nftables and
coturn. Without them every test that builds a testbed is SKIPPED with the reason;
PEER_RELAY_REQUIRE_TESTBED=1 turns that skip into a failure (CI)."""

from __future__ import annotations

import os

import pytest

from peer_relay.testbed import TestbedError, check_requirements, cleanup_stale


def _unavailable(reason: str) -> None:
    if os.environ.get("PEER_RELAY_REQUIRE_TESTBED") == "1":
        pytest.fail(f"the testbed is required but unavailable: {reason}")
    pytest.skip(f"testbed unavailable: {reason}")


@pytest.fixture(scope="session")
def testbed_ready() -> None:
    """Skip (or fail) unless a testbed with coturn can be built; clear dead testbeds' leftovers."""
    try:
        check_requirements(turn=True)
    except TestbedError as exc:
        _unavailable(str(exc))
    cleanup_stale()
