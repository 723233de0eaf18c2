"""Across hosts (network namespaces): a server bound to 0.0.0.0 advertises a URL that peers on
other hosts can dial, and a client on another host links to a server it only learnt about."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from peer_relay.testbed import HostSpec, Testbed

PEER_RELAY = str(Path(sys.executable).with_name("peer-relay"))

CLIENT = r"""
import asyncio, json, sys
from peer_relay import PeerRelay

async def main() -> None:
    boot, target = sys.argv[1], bytes.fromhex(sys.argv[2])
    async with PeerRelay(bootstrap=[boot]) as peer:
        for _ in range(200):
            if target in peer.peers:
                break
            await asyncio.sleep(0.1)
        print(json.dumps({"peers": [p.hex() for p in peer.peers],
                          "transport": peer.link_transport(target)}), flush=True)

asyncio.run(main())
"""


LOOPBACK_ONLY = r"""
import asyncio, json, sys
from peer_relay import PeerRelay, addresses

# As in a container whose interfaces the scan cannot see: only loopback.
addresses.interface_addresses = lambda: ["127.0.0.1"]

async def main() -> None:
    async with PeerRelay(port=0, host="0.0.0.0", bootstrap=sys.argv[1:]) as peer:
        first = peer.url
        for _ in range(200):
            if len(peer.peers) >= 2 and peer.url != first:
                break
            await asyncio.sleep(0.1)
        print(json.dumps({"first": first, "url": peer.url}), flush=True)

asyncio.run(main())
"""


def _serve(tb: Testbed, host: str, *args: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``peer-relay serve`` on ``host`` (0.0.0.0, a free port); its id and URL."""
    proc = tb.popen(
        host,
        [PEER_RELAY, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(lines) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        key, _, value = line.strip().partition(" ")
        lines[key] = value.strip()
    assert "id" in lines and "url" in lines, f"serve on {host} printed {lines}"
    return proc, lines["id"], lines["url"]


@pytest.mark.usefixtures("testbed_ready")
def test_a_wildcard_server_advertises_a_url_that_other_hosts_dial() -> None:
    with Testbed([HostSpec("h1"), HostSpec("h2"), HostSpec("h3")]) as tb:
        _, id1, url1 = _serve(tb, "h1")
        _, id3, url3 = _serve(tb, "h3", "--bootstrap", url1)
        # Not the loopback address that the host name resolves to: an address of the host.
        assert urllib.parse.urlsplit(url1).hostname == tb.address("h1")
        assert urllib.parse.urlsplit(url3).hostname == tb.address("h3")
        # A client-only peer on h2 is told of h3's server by h1's, and dials the URL it learnt.
        done = tb.run("h2", [sys.executable, "-c", CLIENT, url1, id3], timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert id3 in result["peers"] and result["transport"] == "ws", result
        assert id1 in result["peers"]


@pytest.mark.usefixtures("testbed_ready")
def test_a_loopback_only_relay_learns_its_address_from_the_relays_it_dials() -> None:
    with Testbed([HostSpec("h1"), HostSpec("h2"), HostSpec("h3")]) as tb:
        _, _, url1 = _serve(tb, "h1")
        _, _, url3 = _serve(tb, "h3", "--bootstrap", url1)
        done = tb.run("h2", [sys.executable, "-c", LOOPBACK_ONLY, url1, url3], timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert urllib.parse.urlsplit(result["first"]).hostname == "127.0.0.1"
        # Both relays it dialled saw it at h2's address: two reporters, believed.
        learnt = urllib.parse.urlsplit(result["url"])
        assert learnt.hostname == tb.address("h2"), result
        assert learnt.port == urllib.parse.urlsplit(result["first"]).port
