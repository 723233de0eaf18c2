"""The testbed's agent on 127.0.0.1, without namespaces: its control protocol over the unix
socket, messages with their send time and hops, deliveries and their failures, and bad control
input answered with an error, never a crash."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from peer_relay.testbed.scenario import AgentClient

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_agent(control: Path, *args: str) -> subprocess.Popen[str]:
    """An agent process on 127.0.0.1; returns once its control socket is there."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer_relay.testbed.agent", "--control", str(control), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 20
    while not control.exists():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    control = tmp_path / "a.sock"
    proc = start_agent(control, "--port", "0", "--host", "127.0.0.1")
    try:
        yield control, proc
    finally:
        stop(proc)


class Raw:
    """A raw control connection: lines out, lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Raw:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 22)
        return cls(reader, writer)

    async def ask(self, line: bytes) -> dict[str, Any]:
        self.writer.write(line + b"\n")
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(self.reader.readline(), 10))
        return answer

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw(agent: tuple[Path, subprocess.Popen[str]]) -> AsyncIterator[Raw]:
    conn = await Raw.open(agent[0])
    yield conn
    conn.close()


async def test_status_reports_the_peer(raw: Raw) -> None:
    status = await raw.ask(b'{"op": "status", "req": 7}')
    assert status["ok"] is True and status["req"] == 7
    assert len(status["id"]) == 40
    assert status["url"].startswith("ws://127.0.0.1:")
    assert status["links"] == [] and status["peers"] == {}
    assert status["rss_kb"] > 10_000
    assert {"frames_in", "delivered", "dropped"} <= set(status["stats"])


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a request is a JSON object"),
        (b'{"req": 1}', "unknown op None"),
        (b'{"op": "explode"}', "unknown op 'explode'"),
        (b'{"op": 3}', "unknown op 3"),
        (b'{"op": "send"}', "send needs 'to'"),
        (b'{"op": "send", "to": "abc"}', "40 hex digits"),
        (b'{"op": "send", "to": "' + b"ab" * 20 + b'", "mode": "shout"}', "mode must be"),
        (b'{"op": "send", "to": "' + b"ab" * 20 + b'", "timeout": -1}', "timeout must be"),
        (b'{"op": "send", "to": "' + b"ab" * 20 + b'", "data": {"x": 1e400}}', "Error"),
        (b"\xff\xfe", "not JSON"),
    ],
)
async def test_bad_requests_are_answered_with_an_error(raw: Raw, line: bytes, error: str) -> None:
    answer = await raw.ask(line)
    assert answer["ok"] is False
    assert error in answer["error"]
    assert (await raw.ask(b'{"op": "ping"}'))["ok"] is True  # still serving, same connection


async def test_a_line_too_long_is_answered_and_skipped(
    agent: tuple[Path, subprocess.Popen[str]],
) -> None:
    conn = await Raw.open(agent[0])
    conn.writer.write(b"x" * (3 << 20) + b'\n{"op": "ping", "req": 2}\n')
    answer = json.loads(await asyncio.wait_for(conn.reader.readline(), 10))
    assert answer == {"req": None, "ok": False, "error": "request longer than 1048576 bytes"}
    pong = json.loads(await asyncio.wait_for(conn.reader.readline(), 10))
    assert pong["req"] == 2 and pong["ok"] is True  # the same connection goes on
    conn.close()
    assert agent[1].poll() is None


async def test_messages_carry_send_time_and_hops_and_deliveries_their_outcome(
    tmp_path: Path,
) -> None:
    a = start_agent(tmp_path / "a.sock", "--port", "0", "--host", "127.0.0.1")
    b: subprocess.Popen[str] | None = None
    try:
        events: list[dict[str, Any]] = []
        ca = await AgentClient.connect(str(tmp_path / "a.sock"), events.append)
        sa = await ca.call("status")
        b = start_agent(tmp_path / "b.sock", "--bootstrap", sa["url"])  # client-only
        cb = await AgentClient.connect(str(tmp_path / "b.sock"), lambda event: None)
        await ca.call("subscribe")
        deadline = time.monotonic() + 15
        while not (await cb.call("status"))["peers"]:
            assert time.monotonic() < deadline, "b did not link to a"
            await asyncio.sleep(0.05)
        sb = await cb.call("status")
        assert sb["url"] is None and sb["peers"] == {sa["id"]: "ws"}
        sent = await cb.call("send", to=sa["id"], seq=1, data={"n": 1})
        done = await cb.call("send", to=sa["id"], seq=2, data=[2], mode="deliver")
        assert done["delivered"] is True and done["elapsed"] >= 0
        deadline = time.monotonic() + 10
        while len(events) < 2:
            assert time.monotonic() < deadline, f"events: {events}"
            await asyncio.sleep(0.02)
        first = next(e for e in events if e["seq"] == 1)
        assert first["sent"] == sent["sent"] and first["received"] >= first["sent"]
        assert first["from"] == sb["id"] and first["verified"] is True and first["hops"] == 1
        nobody = "00" * 20
        failed = await cb.call("send", to=nobody, seq=3, mode="deliver", timeout=0.5)
        assert failed["delivered"] is False and failed["error"]
        ca.close()
        cb.close()
    finally:
        stop(a)
        if b is not None:
            stop(b)


async def test_quit_stops_the_agent_and_removes_its_socket(
    agent: tuple[Path, subprocess.Popen[str]],
) -> None:
    control, proc = agent
    conn = await Raw.open(control)
    assert (await conn.ask(b'{"op": "quit", "req": "q"}')) == {"req": "q", "ok": True}
    conn.close()
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert not control.exists()


def test_sigterm_stops_the_agent_cleanly(agent: tuple[Path, subprocess.Popen[str]]) -> None:
    control, proc = agent
    proc.terminate()
    assert proc.wait(10) == 0
    assert not control.exists()


@pytest.mark.parametrize(
    ("options", "error"),
    [("[1]", "must be a JSON object"), ('{"no_such_limit": 1}', "unknown option")],
)
def test_bad_options_are_refused_in_one_line(tmp_path: Path, options: str, error: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer_relay.testbed.agent",
            "--control",
            str(tmp_path / "x.sock"),
            "--options",
            options,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
