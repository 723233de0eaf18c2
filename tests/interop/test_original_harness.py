"""Tests of the interop harness itself, against peer-relay@0.0.2 only (no Python node).

They also pin down what 0.0.2 really puts on the wire; run with ``-s`` to see the captures
(they are also written to ``.cache/interop-wire-capture.jsonl``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from .original import (
    REPO_ROOT,
    DriverError,
    OriginalCrashed,
    OriginalNetwork,
    OriginalPeer,
)

pytestmark = pytest.mark.interop

CAPTURE_FILE = REPO_ROOT / ".cache" / "interop-wire-capture.jsonl"
T = 10.0  # seconds; generous per-wait timeout


def buffer_json(data: bytes, **extra: Any) -> dict[str, Any]:
    return {"type": "Buffer", "data": list(data), **extra}


def is_buffer_json(value: Any, length: int | None = None) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == "Buffer"
        and isinstance(value.get("data"), list)
        and all(isinstance(b, int) and 0 <= b < 256 for b in value["data"])
        and (length is None or len(value["data"]) == length)
    )


def id_of(value: Any) -> bytes:
    """An envelope's to/from in either form 0.0.2 uses: hex string or Buffer JSON."""
    if isinstance(value, str):
        return bytes.fromhex(value)
    assert is_buffer_json(value, 20), value
    return bytes(value["data"])


def capture(label: str, frame: Any) -> None:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    print(f"[0.0.2 wire] {label}: {text}")
    CAPTURE_FILE.parent.mkdir(parents=True, exist_ok=True)
    with CAPTURE_FILE.open("a") as fh:
        fh.write(json.dumps({"label": label, "frame": text, "pid": os.getpid()}) + "\n")


async def recv_json(ws: ClientConnection, timeout: float = T) -> Any:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), f"0.0.2 sends text frames, got {type(raw)}"
    return json.loads(raw)


async def recv_until(
    ws: ClientConnection, pred: Any, label: str, timeout: float = T
) -> dict[str, Any]:
    """Receive envelopes until one matches ``pred`` (recording every frame seen)."""
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str)
            msg = json.loads(raw)
            matched = pred(msg)
            capture(label if matched else f"(other frame while waiting for: {label})", raw)
            if matched:
                return msg  # type: ignore[no-any-return]


def numbered(i: int) -> Callable[[Any], bool]:
    return lambda d: isinstance(d, dict) and d.get("i") == i


async def linked(net: OriginalNetwork, a: OriginalPeer, b: OriginalPeer) -> None:
    """Wait until a and b each report the other as a direct peer."""
    await net.wait_peer(a.name, b, timeout=T)
    await net.wait_peer(b.name, a, timeout=T)


# --------------------------------------------------------------------------- driver basics


async def test_driver_rejects_malformed_commands(original: OriginalNetwork) -> None:
    assert original.node_version is not None and original.node_version.startswith("v")
    with pytest.raises(DriverError, match="unknown cmd"):
        await original.request("no-such-command")
    with pytest.raises(DriverError, match="no peer named"):
        await original.request("send", name="ghost", to="00" * 20, data=1)
    a = await original.create("a", port=0)
    with pytest.raises(DriverError, match="40-hex-digit"):
        await original.request("send", name="a", to="not-hex", data=1)
    with pytest.raises(DriverError, match="exists already"):
        await original.create("a")
    # raw garbage lines: answered with an error (req null), the driver stays up
    assert original.proc.stdin is not None
    original.proc.stdin.write(b"this is not json\n[1,2]\nnull\n")
    await original.proc.stdin.drain()
    assert (await original.request("ping"))["ok"]
    assert a.url is not None and a.port is not None
    assert a.url == f"ws://localhost:{a.port}"  # what 0.0.2 advertises, hard-coded host
    assert a.url_ipv4 == f"ws://127.0.0.1:{a.port}"
    original.assert_alive()


async def test_two_peers_bootstrap(original: OriginalNetwork) -> None:
    c1 = await original.create("c1", port=0)
    # bootstrapping through 0.0.2's own advertised URL (ws://localhost:PORT) works too
    c2 = await original.create("c2", port=None, bootstrap=[c1.url or ""])
    assert c2.url is None and c2.port is None
    await linked(original, c1, c2)
    assert await original.peers("c1") == [c2.id]
    assert await original.peer_links("c2") == {c1.id: "ws"}


async def test_direct_message_json_payloads(original: OriginalNetwork) -> None:
    c1 = await original.create("c1", port=0)
    c2 = await original.create("c2", port=None, bootstrap=[c1.url_ipv4 or ""])
    await linked(original, c1, c2)
    payloads: list[Any] = [
        {"nested": {"list": [1, [2, [3, {"deep": True}]]], "empty": {}, "none": None}},
        'héllo wörld ✓ 🚀 \u4e2d\u6587 "quoted" \\ back\nslash',
        None,
        0,
        -17,
        2**53 - 1,
        0.1,
        1e21,
        [True, False, None, "", [], {}],
        {"z": 1, "a": 2, "m": 3},  # key order
    ]
    for i, payload in enumerate(payloads):
        await original.send("c1", c2, {"i": i, "p": payload})
        await original.send("c2", c1, {"i": i, "p": payload})
    for i, payload in enumerate(payloads):
        for receiver, sender in (("c2", c1), ("c1", c2)):
            ev = await original.wait_message(receiver, numbered(i), T, sender=sender)
            assert ev["data"]["p"] == payload
            assert ev["from"] == sender.id_hex
    # key order survives JSON round trips through 0.0.2
    last = next(e for e in original.events if e.get("event") == "message" and e["data"]["i"] == 9)
    assert list(last["data"]["p"]) == ["z", "a", "m"]
    # a bare null payload
    await original.send("c1", c2, None)
    ev = await original.wait_message("c2", lambda d: d is None, T)
    assert ev["from"] == c1.id_hex


async def test_relayed_message_c1_c2_c3(original: OriginalNetwork) -> None:
    c2 = await original.create("c2", port=0)
    c1 = await original.create("c1", port=None, bootstrap=[c2.url_ipv4 or ""])
    c3 = await original.create("c3", port=None, bootstrap=[c2.url_ipv4 or ""], trace=True)
    await linked(original, c1, c2)
    await linked(original, c3, c2)
    await original.send("c1", c3, {"hello": "via c2", "n": [1, 2.5, None]})
    ev = await original.wait_message("c3", lambda d: d == {"hello": "via c2", "n": [1, 2.5, None]})
    assert ev["from"] == c1.id_hex
    # c1 and c3 have no server and no WebRTC: they cannot link, so it really went via c2
    assert c3.id not in await original.peers("c1")
    assert c1.id not in await original.peers("c3")
    frame = next(
        json.loads(f["frame"])
        for f in original.frames("c3", "in")
        if json.loads(f["frame"]).get("data", {}).get("type") == "user"
    )
    capture("relayed user envelope as received by c3 (from c2)", frame)
    assert is_buffer_json(frame["to"], 20) and is_buffer_json(frame["from"], 20)
    assert id_of(frame["from"]) == c1.id and id_of(frame["to"]) == c3.id
    assert frame["path"] == [c1.id_hex, c2.id_hex]


async def test_wrtc_link_between_two_original_peers(original: OriginalNetwork) -> None:
    hub = await original.create("hub", port=0)
    w1 = await original.create("w1", port=None, bootstrap=[hub.url_ipv4 or ""], wrtc=True)
    await linked(original, w1, hub)
    w2 = await original.create("w2", port=None, bootstrap=[hub.url_ipv4 or ""], wrtc=True)
    await linked(original, w2, hub)
    # w2 learns w1 from the hub's foundPeers, sends handshake-offer; w1 answers
    # {ws: null, wrtc: true}; simple-peer signals are relayed through the hub.
    await linked(original, w1, w2)
    assert (await original.peer_links("w1"))[w2.id] == "wrtc"
    assert (await original.peer_links("w2"))[w1.id] == "wrtc"
    await original.destroy("hub")
    await original.send("w1", w2, {"over": "webrtc", "ü": 1})
    ev = await original.wait_message("w2", lambda d: d == {"over": "webrtc", "ü": 1}, T)
    assert ev["from"] == w1.id_hex
    await original.send("w2", w1, ["back", None])
    await original.wait_message("w1", lambda d: d == ["back", None], T, sender=w2)


async def test_socket_datagrams(original: OriginalNetwork) -> None:
    s1 = await original.socket_create("s1", port=0)
    s2 = await original.socket_create("s2", port=None, bootstrap=[s1.url_ipv4 or ""], trace=True)
    addr1 = await original.socket_bind("s1", timeout=T)
    addr2 = await original.socket_bind("s2", timeout=T)
    assert addr1["address"] == s1.id_hex and addr1["family"] == "peer-relay"
    assert addr2["address"] == s2.id_hex
    payload = bytes(range(256))
    await original.socket_send("s1", payload, port=addr2["port"], to=s2.id)
    data, rinfo = await original.wait_socket_message("s2", timeout=T)
    assert data == payload
    assert rinfo == {"address": s1.id_hex, "port": addr1["port"], "family": "peer-relay"}
    # reply to the sender's rinfo
    await original.socket_send("s2", b"pong\x00\xff", port=rinfo["port"], to=rinfo["address"])
    data, rinfo = await original.wait_socket_message("s1", timeout=T)
    assert data == b"pong\x00\xff" and rinfo["address"] == s2.id_hex
    # 0.0.2 bug: buffer.slice(offset, length) instead of slice(offset, offset + length)
    await original.socket_send(
        "s1", b"0123456789", offset=2, length=5, port=addr2["port"], to=s2.id
    )
    data, _ = await original.wait_socket_message("s2", timeout=T)
    assert data == b"234"
    # "127.0.0.1" resolves the port in 0.0.2's process-wide PORT_MAPPINGS table
    await original.socket_send("s1", b"local", port=addr2["port"], to="127.0.0.1")
    data, rinfo = await original.wait_socket_message("s2", timeout=T)
    assert data == b"local"
    assert rinfo == {"address": "127.0.0.1", "port": addr1["port"], "family": "peer-relay"}
    # what the datagram looks like on the wire (direct link s1 -> s2)
    frame = next(
        json.loads(f["frame"])
        for f in original.frames("s2", "in")
        if json.loads(f["frame"]).get("data", {}).get("type") == "user"
    )
    capture("Socket datagram envelope (direct)", frame)
    body = frame["data"]["data"]
    assert set(body) == {"buffer", "address", "port"}
    assert body["buffer"] == buffer_json(payload)
    assert body["address"] == s1.id_hex and body["port"] == addr1["port"]
    assert frame["to"] == s2.id_hex and frame["from"] == s1.id_hex  # hex when not relayed
    await original.socket_close("s2")


# --------------------------------------------------------------------------- raw wire capture


async def test_raw_websocket_capture(original: OriginalNetwork) -> None:
    """A bare Python WebSocket client as a peer of 0.0.2: record what 0.0.2 sends."""
    hub = await original.create("hub", port=0, trace=True)
    my_id = bytes(range(1, 21))
    async with connect(hub.url_ipv4 or "", compression=None, open_timeout=T) as ws:
        first = await asyncio.wait_for(ws.recv(), T)
        capture("hub's first frame (its id)", first)
        assert is_buffer_json(json.loads(first), 20)
        assert bytes(json.loads(first)["data"]) == hub.id
        # our id as Buffer JSON with an EXTRA key: 0.0.2 only reads type/data
        await ws.send(json.dumps(buffer_json(my_id, pr={"v": 1, "keys": ["x"]})))
        await original.wait_peer("hub", my_id, T)
        fp = await recv_until(ws, lambda m: m["data"]["type"] == "findPeers", "hub -> us")
        assert fp["to"] == my_id.hex() and fp["from"] == hub.id_hex  # hex: not relayed
        assert fp["data"] == {"type": "findPeers", "data": hub.id_hex}
        assert fp["path"] == [hub.id_hex]
        assert isinstance(fp["nonce"], str) and fp["nonce"].isdigit()
        assert set(fp) == {"to", "from", "path", "nonce", "data"}

        # a user message from another 0.0.2 peer, relayed to us by the hub
        c1 = await original.create("c1", port=None, bootstrap=[hub.url_ipv4 or ""])
        await linked(original, c1, hub)
        await original.send("c1", my_id, {"to": "raw", "bin": [0, 255]})
        relayed = await recv_until(
            ws, lambda m: m["data"]["type"] == "user", "relayed to us (c1 -> hub -> us)"
        )
        assert is_buffer_json(relayed["to"], 20) and is_buffer_json(relayed["from"], 20)
        assert id_of(relayed["to"]) == my_id and id_of(relayed["from"]) == c1.id
        assert relayed["path"] == [c1.id_hex, hub.id_hex]
        assert relayed["data"] == {"type": "user", "data": {"to": "raw", "bin": [0, 255]}}

        # we send a user envelope (hex ids, a made-up nonce, an unknown top-level key) to c1
        env = {
            "to": c1.id_hex,
            "from": my_id.hex(),
            "path": [my_id.hex()],
            "nonce": "py-1",
            "data": {"type": "user", "data": {"hi": "from python"}},
            "extra": {"kept": True},
        }
        await ws.send(json.dumps(env))
        ev = await original.wait_message("c1", lambda d: d == {"hi": "from python"}, T)
        assert ev["from"] == my_id.hex()
        out = next(
            json.loads(f["frame"])
            for f in original.frames("hub", "out")
            if json.loads(f["frame"]).get("nonce") == "py-1"
        )
        capture("our envelope as the hub forwarded it to c1", out)
        assert out["extra"] == {"kept": True}
        assert is_buffer_json(out["to"], 20) and out["path"] == [my_id.hex(), hub.id_hex]

        # a 0.0.2 Socket datagram relayed to us: the binary buffer is Buffer JSON in `data`
        s1 = await original.socket_create("s1", port=None, bootstrap=[hub.url_ipv4 or ""])
        s1_addr = await original.socket_bind("s1", timeout=T)
        await original.socket_send("s1", b"\x00\x01bin\xff", port=4242, to=my_id)
        dgram = await recv_until(
            ws,
            lambda m: (
                m["data"]["type"] == "user"
                and isinstance(m["data"]["data"], dict)
                and "buffer" in m["data"]["data"]
            ),
            "Socket datagram relayed to us",
        )
        assert dgram["data"]["data"] == {
            "buffer": buffer_json(b"\x00\x01bin\xff"),
            "address": s1.id_hex,
            "port": s1_addr["port"],
        }
    original.assert_alive()


async def test_crash_is_detected(original_node_modules: Path) -> None:
    """A frame that is not an envelope kills 0.0.2; the harness must notice, not hang."""
    net = await OriginalNetwork.start(original_node_modules)
    try:
        hub = await net.create("hub", port=0)
        async with connect(hub.url_ipv4 or "", compression=None, open_timeout=T) as ws:
            await asyncio.wait_for(ws.recv(), T)
            await ws.send(json.dumps(bytes(20).hex()))  # a hex-string id is accepted too
            await net.wait_peer("hub", bytes(20), T)
            await ws.send(json.dumps({"not": "an envelope"}))
            with pytest.raises(OriginalCrashed, match=r"TypeError|exited"):
                await net.next_event(lambda e: False, timeout=T)
        assert net.crashed is not None
        capture("0.0.2 crash on a non-envelope frame", net.crashed)
        with pytest.raises(OriginalCrashed):
            net.assert_alive()
        with pytest.raises(OriginalCrashed):
            await net.peers("hub")
    finally:
        await net.close(check=False)
    assert net.proc.returncode == 1
