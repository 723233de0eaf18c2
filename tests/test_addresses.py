"""The advertised address of a peer bound to every interface (see peer_relay.addresses)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import urllib.parse

import pytest
from helpers import eventually
from websockets.asyncio.client import connect

from peer_relay import PeerRelay, addresses
from peer_relay.addresses import (
    MAX_CLAIMS,
    QUORUM,
    AddressLearner,
    best_address,
    url_from_host_header,
    url_from_observed,
)


def test_best_address_prefers_global_then_private_and_never_loopback() -> None:
    assert best_address(["127.0.0.1", "169.254.1.2", "::1"]) is None
    assert best_address(["127.0.0.1", "10.0.0.5"]) == "10.0.0.5"
    assert best_address(["10.0.0.5", "8.8.4.4", "192.168.1.2"]) == "8.8.4.4"
    assert best_address(["2001:4860::1", "10.0.0.5"]) == "10.0.0.5"
    assert best_address(["2001:4860::1", "10.0.0.5"], ipv6=True) == "2001:4860::1"
    assert best_address(["2001:4860::1", "8.8.4.4"], ipv6=True) == "8.8.4.4"
    assert best_address(["2001:4860::1", "fe80::1%eth0"], ipv6=True) == "2001:4860::1"
    assert best_address(["junk", "", "10.1.2.3"]) == "10.1.2.3"
    assert best_address(["224.0.0.1", "0.0.0.0"]) is None


def test_host_headers_become_urls_or_are_refused() -> None:
    assert url_from_host_header("10.0.0.7:9000") == "ws://10.0.0.7:9000"
    assert url_from_host_header("relay.example.org") == "ws://relay.example.org:80"
    assert url_from_host_header("[2001:db8::1]:81") == "ws://[2001:db8::1]:81"
    assert url_from_host_header("Relay.Example.org:7") == "ws://relay.example.org:7"
    for bad in (
        None,
        "",
        "127.0.0.1:9000",
        "localhost:9000",
        "[::1]:80",
        "169.254.0.1",
        "10.0.0.7:0",
        "10.0.0.7:99999",
        "10.0.0.7:x",
        "a b:80",
        "evil/path:80",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "x" * 300,
    ):
        assert url_from_host_header(bad) is None, bad
    assert url_from_observed("10.9.8.7", 5) == "ws://10.9.8.7:5"
    assert url_from_observed("2001:db8::2", 5) == "ws://[2001:db8::2]:5"
    for bad_observed in (None, "", "127.0.0.2", "name.example", "1" * 100):
        assert url_from_observed(bad_observed, 5) is None


def test_learner_uses_interfaces_and_learns_only_by_quorum_when_it_fell_back() -> None:
    chosen = AddressLearner(4000, ["127.0.0.1", "10.1.1.1"])
    assert chosen.url == "ws://10.1.1.1:4000" and not chosen.fallback
    assert chosen.heard("ws://203.0.113.9:4000", "10.0.0.1") is None
    assert chosen.heard("ws://203.0.113.9:4000", "10.0.0.2") is None
    assert chosen.url == "ws://10.1.1.1:4000"

    learner = AddressLearner(4000, ["127.0.0.1"])
    assert learner.fallback and learner.url == "ws://127.0.0.1:4000"
    # One liar, however often it says so, is not enough.
    for _ in range(5):
        assert learner.heard("ws://6.6.6.6:4000", "10.0.0.66") is None
    assert learner.heard(None, "10.0.0.1") is None
    assert learner.heard("ws://203.0.113.9:4000", None) is None
    assert learner.readout()["claims"] == {"ws://6.6.6.6:4000": 1}
    assert QUORUM == 2
    assert learner.heard("ws://203.0.113.9:4000", "10.0.0.1") is None
    assert learner.heard("ws://203.0.113.9:4000", "10.0.0.2") == "ws://203.0.113.9:4000"
    assert learner.url == "ws://203.0.113.9:4000" and not learner.fallback
    assert learner.heard("ws://6.6.6.6:4000", "10.0.0.3") is None
    assert learner.url == "ws://203.0.113.9:4000"


def test_learner_claims_are_bounded() -> None:
    learner = AddressLearner(4000, [])
    for i in range(3 * MAX_CLAIMS):
        learner.heard(f"ws://10.0.{i // 250}.{i % 250 + 1}:4000", f"10.9.{i // 250}.{i % 250}")
    assert len(learner.claims) == MAX_CLAIMS
    assert learner.fallback


async def test_a_wildcard_bind_advertises_an_interface_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = best_address(addresses.interface_addresses())
    with caplog.at_level(logging.WARNING, "peer_relay.node"):
        async with PeerRelay(port=0, host="0.0.0.0") as server:
            assert server.url is not None
            host = urllib.parse.urlsplit(server.url).hostname
            if expected is None:
                assert host == "127.0.0.1"
                assert "no address but loopback" in caplog.text
            else:
                assert host == expected
                assert "no address but loopback" not in caplog.text
            assert server.inspect()["address"]["advertised"] == server.url
            # Others can dial it at the URL it advertises.
            async with PeerRelay(bootstrap=[server.url]) as client:
                await client.wait_for_peers(1, timeout=10)


async def test_a_listener_tells_a_dialler_the_address_it_sees() -> None:
    async with PeerRelay(port=0, host="127.0.0.1") as server:
        assert server.url is not None
        async with connect(server.url, open_timeout=5) as ws:
            assert ws.response is not None
            assert ws.response.headers.get(addresses.OBSERVED_HEADER) == "127.0.0.1"


async def _upgrade_from(source: str, port: int, host_header: str) -> None:
    """Send a WebSocket upgrade request with ``host_header`` from ``source``, read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()


async def test_a_loopback_only_host_learns_its_url_from_two_dialers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(addresses, "interface_addresses", lambda: ["127.0.0.1", "::1"])
    async with PeerRelay(port=0, host="0.0.0.0") as server:
        assert server.url is not None and server.url.startswith("ws://127.0.0.1:")
        port = urllib.parse.urlsplit(server.url).port
        assert port is not None
        await _upgrade_from("127.0.0.1", port, "203.0.113.5:9000")
        await _upgrade_from("127.0.0.1", port, "203.0.113.5:9000")
        assert server.url.startswith("ws://127.0.0.1:"), "one source is not a quorum"
        await _upgrade_from("127.0.0.2", port, "203.0.113.5:9000")
        await eventually(lambda: server.url == "ws://203.0.113.5:9000", what="learnt URL")
        assert server.inspect()["address"]["learning"] is False
