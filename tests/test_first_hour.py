"""The first hour of a new user (issue 17): each failure met says what happened and what to do,
in one line and without a traceback (unless ``-v``). The command line as real processes on
127.0.0.1 with ephemeral ports; the Python API on real nodes."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually
from websockets.asyncio.server import ServerConnection, serve

from peer_relay import PeerRelay, node
from peer_relay.ids import buffer_json
from peer_relay.node import Message

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
LOCAL: dict[str, Any] = {"port": 0, "host": "127.0.0.1"}
NOBODY = "ab" * 20
"""An id no peer holds."""
MUST_LISTEN = "one of them must listen (a port) or both must enable WebRTC (wrtc=True)"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "peer_relay.cli", *args]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


async def run(*args: str, env: dict[str, str] = ENV, timeout: float = 30) -> tuple[int, str, str]:
    """``peer-relay ARGS`` as a process: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def started(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``peer-relay ARGS`` running; stopped with SIGTERM (killed if it lingers) at the end."""
    proc = await asyncio.create_subprocess_exec(
        *command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def line_with(stream: asyncio.StreamReader | None, text: str, timeout: float = 15) -> str:
    """The first line of ``stream`` (skipping others) that holds ``text``."""
    assert stream is not None
    seen: list[str] = []

    async def find() -> str:
        while raw := await stream.readline():
            line = raw.decode().rstrip("\n")
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"the stream ended without {text!r}: {seen}")

    try:
        return await asyncio.wait_for(find(), timeout)
    except TimeoutError:
        raise AssertionError(f"no line with {text!r} within {timeout}s: {seen}") from None


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on (one the system just gave out)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


@contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# ----------------------------------------------------------------------------- 1. connect()


async def test_connect_between_client_only_peers_says_one_must_listen_every_time() -> None:
    # It used to vary: "unreachable" at once, or a timeout after 10 s when both asked at once.
    for both in (False, True, False, True):
        async with (
            PeerRelay(**LOCAL) as relay,
            PeerRelay(bootstrap=[relay.url or ""]) as a,
            PeerRelay(bootstrap=[relay.url or ""]) as b,
        ):
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            started_at = time.monotonic()
            calls = [a.connect(b.id), b.connect(a.id)] if both else [a.connect(b.id)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert time.monotonic() - started_at < a.config.connect_timeout / 2
            for outcome, other in zip(outcomes, (b, a), strict=False):
                assert type(outcome) is ConnectionError, outcome
                assert str(outcome) == (
                    f"connect to {other.id.hex()[:8]}: neither peer can reach the other: "
                    f"{MUST_LISTEN}"
                )


async def test_a_connect_timeout_is_a_timeout_error_that_says_what_timed_out() -> None:
    async with (
        PeerRelay(**LOCAL) as relay,
        PeerRelay(bootstrap=[relay.url or ""], connect_timeout=1.0) as a,
    ):
        await a.wait_for_peers(1)
        with pytest.raises(TimeoutError) as info:
            await a.connect(NOBODY)
        assert str(info.value) == (
            "connect to abababab: no direct link within connect_timeout (1s): it did not "
            "answer, or the link it answered with did not open; this peer cannot be dialled "
            "(no port, no WebRTC), so the other must listen (a port) or both must enable "
            "WebRTC (wrtc=True)"
        )
        with pytest.raises(TimeoutError) as info:
            await a.connect(NOBODY[:-2] + "cd", timeout=0.2)
        assert str(info.value).startswith(
            "connect to abababab: no direct link within 0.2s (the timeout given)"
        )


# ----------------------------------------------------------------------------- 2. messages()


async def test_messages_ends_once_the_peer_is_destroyed() -> None:
    async with PeerRelay(**LOCAL) as relay, PeerRelay(bootstrap=[relay.url or ""]) as client:
        got: list[Any] = []

        async def read() -> None:
            async for message in relay.messages():
                got.append(message.data)

        reader = asyncio.ensure_future(read())
        await client.wait_for_peers(1)
        for n in range(3):
            await client.deliver(relay.id, n)
        await eventually(lambda: got == [0, 1, 2], what="the reader to wait for more")
        await relay.destroy()
        await asyncio.wait_for(reader, 5)  # it ended: nobody had to cancel it
        assert [m async for m in relay.messages()] == []  # and ends at once from now on


async def test_messages_kept_when_the_peer_is_destroyed_are_still_read() -> None:
    async with PeerRelay(**LOCAL) as relay, PeerRelay(bootstrap=[relay.url or ""]) as client:
        inbox = relay.messages()
        await client.wait_for_peers(1)
        for n in range(3):
            await client.deliver(relay.id, n)
        await relay.destroy()
        got = await asyncio.wait_for(_data(inbox), 5)
        assert got == [0, 1, 2]


async def _data(inbox: AsyncIterator[Message]) -> list[Any]:
    return [message.data async for message in inbox]


# ----------------------------------------------------------------------------- 3. a full inbox


async def test_a_full_inbox_is_logged_once_in_a_while_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "INBOX_WARNING_INTERVAL", 0.5)
    caplog.set_level(logging.WARNING, "peer_relay.node")
    sent, kept = 300, 8

    def warnings() -> list[int]:
        counts = []
        for record in caplog.records:
            found = re.search(r"dropped (\d+) messages? from messages\(\)", record.getMessage())
            if found and record.levelno == logging.WARNING:
                counts.append(int(found.group(1)))
        return counts

    async with (
        PeerRelay(**LOCAL, max_inbox=kept) as relay,
        PeerRelay(bootstrap=[relay.url or ""]) as client,
    ):
        await client.wait_for_peers(1)
        await client.deliver(relay.id, "a session first, so the burst need not wait for one")
        inbox = relay.messages()
        for n in range(sent):
            client.send(relay.id, n)
        await eventually(lambda: relay.stats["delivered"] == 1 + sent, what="the burst")
        assert relay.stats["dropped"]["inbox-full"] == sent - kept
        # The first drop is told at once; the rest, added up, once the interval is over.
        await eventually(lambda: sum(warnings()) == sent - kept, what="the second warning")
        counts = warnings()
        assert counts[0] == 1 and 2 <= len(counts) <= 6, counts
        assert "read them faster or raise max_inbox" in caplog.records[0].getMessage()
        assert [(await anext(inbox)).data for _ in range(kept)] == list(range(sent - kept, sent))


# ----------------------------------------------------------------------------- 4. joining


async def test_send_fails_at_once_when_the_bootstrap_peer_refuses() -> None:
    with closed_port() as port:
        url = f"ws://127.0.0.1:{port}"
        started_at = time.monotonic()
        status, out, err = await run("send", "--bootstrap", url, NOBODY, "1")
    assert time.monotonic() - started_at < 5, "not the whole --timeout (10 s)"
    assert status == 1 and out == ""
    assert one_line(err) == (
        f"peer-relay send: not delivered: could not join the network: {url}: connection "
        "refused: nothing listens there (is the peer running?)"
    )


async def test_request_refused_for_a_0_0_2_bootstrap_peer_says_to_allow_unsigned() -> None:
    async def original(ws: ServerConnection) -> None:
        # What a peer of the original 0.0.2 sends first: its id, and no proof of it.
        await ws.send(json.dumps(buffer_json(os.urandom(20))))
        await ws.wait_closed()

    async with serve(original, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        started_at = time.monotonic()
        status, out, err = await run("request", "--bootstrap", url, NOBODY, "1")
    assert time.monotonic() - started_at < 5, "not the whole --timeout (10 s)"
    assert status == 1 and out == "" and "Traceback" not in err
    assert one_line(err) == (
        f"peer-relay request: no reply: could not join the network: {url}: it is a peer of "
        "the original 0.0.2, which cannot prove its id, and unsigned peers are not admitted: "
        "admit them with allow_unsigned=True (--allow-unsigned)"
    )


async def test_listen_says_it_cannot_reach_its_bootstrap_peer_and_keeps_trying() -> None:
    with closed_port() as port:
        url = f"ws://127.0.0.1:{port}"
        async with started("listen", "--bootstrap", url) as listen:
            line = await line_with(listen.stderr, "cannot reach")
            assert line == (
                f"peer-relay listen: cannot reach any bootstrap peer: {url}: connection "
                "refused: nothing listens there (is the peer running?); it keeps trying, less "
                "and less often (up to once a minute)"
            )
            assert listen.returncode is None, "it keeps running"
    assert listen.returncode == 0


async def test_listen_says_it_lost_its_last_link_and_then_that_it_cannot_reach_it() -> None:
    async with started("serve", "--port", "0", "--host", "127.0.0.1") as relay:
        relay_id = (await line_with(relay.stdout, "id ")).split()[1]
        url = (await line_with(relay.stdout, "url ")).split()[1]
        async with started("listen", "--bootstrap", url) as listen:
            listen_id = (await line_with(listen.stderr, "listening as ")).split()[-1]
            await line_with(relay.stderr, f"linked to {listen_id[:8]}")
            relay.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(relay.wait(), 10) == 0
            lost = await line_with(listen.stderr, "peer-relay listen: ")
            assert lost.startswith(
                f"peer-relay listen: lost the last link (to {relay_id[:8]}: remote closed"
            )
            assert lost.endswith(
                "); dialling the bootstrap peers again in 5s, then less and less often"
            )
            after = await line_with(listen.stderr, "peer-relay listen: ")
            assert after.startswith(
                f"peer-relay listen: cannot reach any bootstrap peer: {url}: connection refused"
            )


async def test_the_node_reads_out_why_its_bootstrap_peers_failed() -> None:
    with closed_port() as port:
        url = f"ws://127.0.0.1:{port}"
        async with PeerRelay(bootstrap=[url]) as peer:
            await eventually(lambda: bool(peer.bootstrap_failures()), what="the dial to fail")
            [failure] = peer.bootstrap_failures()
            assert (failure.url, failure.lasting) == (url, True)
            assert failure.reason.startswith("connection refused")
            with pytest.raises(TimeoutError, match=f"0 of 1 links open after 0.1s; {url}: conn"):
                await peer.wait_for_peers(1, timeout=0.1)


# ----------------------------------------------------------------------------- 5. tracebacks


async def test_a_port_in_use_is_one_line_and_a_traceback_only_with_v() -> None:
    with taken_port() as port:
        status, out, err = await run("serve", "--port", str(port), "--host", "127.0.0.1")
        assert status == 1 and out == ""
        said = (
            f"peer-relay serve: cannot listen on 127.0.0.1:{port}: the port is in use (another "
            "peer-relay, or another program, listens there): choose another --port, or --port 0 "
            "for any free port"
        )
        assert one_line(err) == said
        status, _out, err = await run("serve", "-v", "--port", str(port), "--host", "127.0.0.1")
        assert status == 1
        assert "Traceback" in err and "Errno 98" in err
        assert err.strip().splitlines()[-1] == said


async def test_a_bad_identity_file_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "key.hex"
    key.write_text("not a key\n")
    said = (
        f"--identity {key} is not an identity file (one holds a private key as 64 hex digits): "
        "name another file, or move this one away to have a new key made there"
    )
    status, out, err = await run("listen", "--identity", str(key), "--bootstrap", "ws://x:1")
    assert (status, out, one_line(err)) == (2, "", f"peer-relay listen: {said}")
    status, out, err = await run("id", "--identity", str(key))
    assert (status, out, one_line(err)) == (2, "", f"peer-relay id: {said}")


async def test_serve_web_without_npm_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**ENV, "PATH": str(empty), "PEER_RELAY_CACHE": str(tmp_path / "cache")}
    status, out, err = await run("serve", "--port", "0", "--host", "127.0.0.1", "--web", env=env)
    assert status == 1 and out == "", "refused before the peer starts"
    assert one_line(err) == (
        "peer-relay serve: --web cannot build the browser page: npm is needed once, to install "
        "the npm package pyodide; install Node.js (with npm), or run without --web"
    )


# ----------------------------------------------------------------------------- 6. the Python API


async def test_a_bad_peer_id_says_what_an_id_is() -> None:
    async with PeerRelay() as peer:
        with pytest.raises(ValueError, match=r"^a peer id is 40 hex digits or 20 bytes, got 'ab"):
            peer.send("abc", 1)
        with pytest.raises(ValueError, match=r"^a peer id is 40 hex digits or 20 bytes, got 3 b"):
            await peer.deliver(b"abc", 1)
        with pytest.raises(TypeError, match=r"^a peer id is 40 hex digits or 20 bytes, not int$"):
            await peer.connect(42)


def test_bootstrap_as_one_string_is_a_type_error_saying_it_is_a_list() -> None:
    with pytest.raises(TypeError) as info:
        PeerRelay(bootstrap="ws://relay.example.org:8000")
    assert str(info.value) == (
        "bootstrap must be a list of ws:// or wss:// URLs, not one string: wrap it in [...]"
    )


async def test_nan_is_refused_as_not_json() -> None:
    said = "data must be JSON: NaN and Infinity are not JSON (found "
    async with PeerRelay() as peer:
        with pytest.raises(ValueError, match=re.escape(said + "nan); send null or a string")):
            peer.send(NOBODY, [1, math.nan])
        with pytest.raises(ValueError, match=re.escape(said + "inf)")):
            await peer.deliver(peer.id, {"x": math.inf})


# ----------------------------------------------------------------------------- 7. smaller ones


async def test_a_client_that_closes_normally_is_no_send_failure_at_its_relay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "peer_relay")
    async with PeerRelay(**LOCAL, sessions=False) as relay:
        reasons: list[str] = []
        relay.on("peer-closed", lambda peer_id, reason: reasons.append(reason))
        client = PeerRelay(bootstrap=[relay.url or ""])
        await client.start()
        await client.wait_for_peers(1)
        sending = True

        async def stream() -> None:
            # The relay sends all the while: some sends meet the link as its close comes in.
            while sending:
                relay.send(client.id, "x" * 100)
                await asyncio.sleep(0)

        streamer = asyncio.ensure_future(stream())
        await eventually(lambda: client.stats["delivered"] > 10, what="the stream to flow")
        await client.destroy()
        await eventually(lambda: bool(reasons), what="the relay to see the close")
        sending = False
        await streamer
        assert reasons[0].startswith("remote closed"), reasons
        assert "send failed" not in caplog.text


def test_the_license_is_an_spdx_string_without_a_deprecated_classifier() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    # A license string needs setuptools 77 or later (PEP 639).
    assert "setuptools>=77" in project["build-system"]["requires"]


COMMANDS = ["serve", "listen", "send", "request", "id", "demo", "testbed"]


@pytest.mark.parametrize("name", COMMANDS)
async def test_help_describes_the_command_and_every_option_with_its_default(name: str) -> None:
    status, out, _err = await run(name, "--help")
    assert status == 0
    usage, _, rest = out.partition("\n\n")
    assert usage.startswith(f"usage: peer-relay {name}")
    assert not rest.startswith("options:"), "a description comes first"
    options = rest[rest.index("options:\n") :].split("\n\n")[0].splitlines()[1:]
    entries: list[list[str]] = []
    for line in options:
        if line.startswith("  -"):
            entries.append([line])
        else:
            entries[-1].append(line)
    for entry in entries:
        invocation, _, text = entry[0].strip().partition("  ")
        text = " ".join([text, *(line.strip() for line in entry[1:])]).strip()
        assert text, f"{invocation}: no help"
        if re.search(r"-[\w-]+ [A-Z{]", invocation):  # an option that takes a value
            assert "default" in text or "required" in text, f"{invocation}: {text}"


async def test_serve_help_shows_the_hosts_default() -> None:
    _status, out, _err = await run("serve", "--help")
    assert re.search(r"--host HOST\s+address to listen on \(default 0\.0\.0\.0", out), out


async def test_id_without_an_identity_file_is_refused() -> None:
    status, out, err = await run("id")
    assert status == 2 and out == "", "no id of a key that is thrown away"
    assert one_line(err) == (
        "peer-relay id: error: the following arguments are required: --identity "
        "(see 'peer-relay id --help')"
    )
