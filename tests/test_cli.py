"""The ``peer-relay`` command, run as real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "peer_relay.cli", *args]


def read_line(proc: subprocess.Popen[str], stream: str, prefix: str, timeout: float = 15) -> str:
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting with {prefix!r} on {stream}")


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    proc = subprocess.Popen(
        command("serve", "--port", "0", "--host", "127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        node_id = read_line(proc, "stdout", "id ").split()[1]
        url = read_line(proc, "stdout", "url ").split()[1]
        yield proc, node_id, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_listen_send(server: tuple[subprocess.Popen[str], str, str]) -> None:
    proc, node_id, url = server
    assert len(node_id) == 40 and url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    listener = subprocess.Popen(
        command("listen", "--bootstrap", url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        listener_id = read_line(listener, "stderr", "listening as ").split()[-1]
        # The listener may still be forming its link; the sender's message waits for it.
        sent = subprocess.run(
            command("send", "--bootstrap", url, listener_id, '{"hello": ["wörld", 1, null]}'),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        line = json.loads(read_line(listener, "stdout", "{"))
        assert line["data"] == {"hello": ["wörld", 1, None]}
        assert line["verified"] is True and len(line["from"]) == 40
    finally:
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(10) == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, "serve exits cleanly on SIGTERM"


def test_send_rejects_bad_input() -> None:
    bad_json = subprocess.run(
        command("send", "--bootstrap", "ws://127.0.0.1:9", "ab" * 20, "{not json"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    bad_id = subprocess.run(
        command("send", "--bootstrap", "ws://127.0.0.1:9", "abc", "1"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert bad_id.returncode != 0 and "hex" in bad_id.stderr


def test_id_is_stable_and_key_file_private(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "node.key"
    first = subprocess.run(
        command("id", "--identity", str(key)), capture_output=True, text=True, env=ENV, check=True
    ).stdout.strip()
    second = subprocess.run(
        command("id", "--identity", str(key)), capture_output=True, text=True, env=ENV, check=True
    ).stdout.strip()
    assert first == second and len(first) == 40
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        command("demo", "--nodes", "10", "--messages", "4", "--seed", "1"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4/4 delivered" in result.stdout
    assert "signature verified" in result.stdout
