"""The ``peer-relay`` command on 127.0.0.1: as real processes, and ``send`` and ``request``
also in this process (``main([...])``), against real ``serve`` and ``listen`` processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from peer_relay.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "peer_relay.cli", *args]


def read_line(proc: subprocess.Popen[str], stream: str, prefix: str, timeout: float = 15) -> str:
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line: str = pipe.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting with {prefix!r} on {stream}")


def close_pipes(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


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
        close_pipes(proc)


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
        assert f"delivered to {listener_id}" in sent.stderr
        line = json.loads(read_line(listener, "stdout", "{"))
        assert line["data"] == {"hello": ["wörld", 1, None]}
        assert line["verified"] is True and len(line["from"]) == 40
    finally:
        listener.send_signal(signal.SIGTERM)
        status = listener.wait(10)
        close_pipes(listener)
        assert status == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, "serve exits cleanly on SIGTERM"


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
    assert "sender verified" in result.stdout


# ----------------------------------------------------------------------------- send and request

NOBODY = "ab" * 20
"""An id no peer holds."""
NOWHERE = "ws://127.0.0.1:9"
"""A bootstrap URL never dialled: the arguments are refused first."""


class Lines:
    """The lines a process writes on stdout, read by a thread so that waiting can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)

    def join(self) -> None:
        """Wait for the end of the output (the process has exited)."""
        self._reader.join(10)

    def expect(self, match: Callable[[str], bool], timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if match(line):
                return line
        raise AssertionError("no such line in time")

    def expect_data(self, data: Any) -> dict[str, Any]:
        line = self.expect(lambda x: x.startswith("{") and json.loads(x)["data"] == data)
        parsed: dict[str, Any] = json.loads(line)
        return parsed


@dataclass
class Network:
    url: str
    echo_id: str
    """A ``listen --echo`` peer."""
    echo: Lines
    plain_id: str
    """A ``listen`` peer without ``--echo``."""
    plain: Lines


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    procs: list[subprocess.Popen[str]] = []
    readers: list[Lines] = []

    def start(*args: str, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            command(*args), stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV
        )
        procs.append(proc)
        return proc

    try:
        # serve logs every link on stderr, which nobody reads here.
        serve = start("serve", "--port", "0", "--host", "127.0.0.1", stderr=subprocess.DEVNULL)
        url = read_line(serve, "stdout", "url ").split()[1]
        echo = start("listen", "--bootstrap", url, "--echo")
        plain = start("listen", "--bootstrap", url)
        echo_id = read_line(echo, "stderr", "listening as ").split()[-1]
        plain_id = read_line(plain, "stderr", "listening as ").split()[-1]
        readers = [Lines(echo), Lines(plain)]
        yield Network(url, echo_id, readers[0], plain_id, readers[1])
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for reader in readers:
            reader.join()
        for proc in procs:
            close_pipes(proc)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``peer-relay ARGS`` in this process: exit status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's way out
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_send_waits_for_the_receipt(network: Network, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"receipt": ["wörld", 1, None]}
    status, out, err = run(
        capsys, "send", "--bootstrap", network.url, network.echo_id, json.dumps(data)
    )
    assert status == 0, err
    assert out == "" and one_line(err) == f"delivered to {network.echo_id}"
    # The receipt came back after the listener had the message.
    assert network.echo.expect_data(data)["verified"] is True


def test_send_to_nobody_fails_within_the_timeout(
    network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    status, out, err = run(
        capsys, "send", "--bootstrap", network.url, "--timeout", "2", NOBODY, "1"
    )
    assert time.monotonic() - started < 4
    assert status == 1 and out == ""
    assert one_line(err).startswith("peer-relay send: not delivered: ")
    assert "Traceback" not in err


def test_send_no_wait_fires_and_forgets(
    network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"no-wait": True}
    status, out, err = run(
        capsys, "send", "--bootstrap", network.url, "--no-wait", network.plain_id, json.dumps(data)
    )
    assert status == 0, err
    assert out == "" and one_line(err).startswith(f"sent to {network.plain_id}")
    # It left before the command exited: it arrives though nobody waited for it.
    network.plain.expect_data(data)


def test_request_gets_the_echo(network: Network, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"q": ["wörld", 1, 2.5, None, True, {}]}
    status, out, err = run(
        capsys, "request", "--bootstrap", network.url, network.echo_id, json.dumps(data)
    )
    assert status == 0, err
    assert json.loads(one_line(out)) == data
    assert "Traceback" not in err


def test_request_without_a_handler_is_a_remote_error(
    network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "request", "--bootstrap", network.url, network.plain_id, "1")
    assert status == 3 and out == ""
    assert one_line(err) == (
        f"peer-relay request: remote error: no request handler at {network.plain_id[:8]}"
    )


def test_request_to_nobody_gets_no_reply(
    network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    status, out, err = run(
        capsys, "request", "-v", "--bootstrap", network.url, "--timeout", "1", NOBODY, "1"
    )
    assert time.monotonic() - started < 3
    assert status == 1 and out == ""
    # -v adds the traceback; the last line still says why.
    assert "Traceback" in err and "DeliveryError" in err
    assert err.strip().splitlines()[-1].startswith("peer-relay request: no reply: ")


def test_send_to_an_unreachable_network_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # takes connections, and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        status, _out, err = run(capsys, "send", "--bootstrap", url, "--timeout", "0.5", NOBODY, "1")
    assert status == 1
    assert one_line(err) == (
        f"peer-relay send: not delivered: could not join the network: no link to {url} within 0.5s"
    )


@pytest.mark.parametrize("verb", ["send", "request"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([NOBODY, "{not json"], "argument JSON: not valid JSON"),
        ([NOBODY, "NaN"], "argument JSON: not valid JSON: NaN is not JSON"),
        ([NOBODY, "9007199254740993"], "argument JSON: data is not interoperable JSON"),
        (["abc", "1"], "argument ID: a peer id is 40 hex digits or 20 bytes, got 'abc'"),
        (["zz" * 20, "1"], "argument ID: a peer id is 40 hex digits or 20 bytes, got 'zz"),
        ([NOBODY, "1", "--bootstrap", "http://x"], "argument --bootstrap: not a ws:// or"),
        ([NOBODY, "1", "--timeout", "-1"], "argument --timeout: must be a positive number"),
        ([NOBODY, "1", "--timeout", "0"], "argument --timeout: must be a positive number"),
        ([NOBODY, "1", "--timeout", "soon"], "argument --timeout: not a number of seconds"),
    ],
)
def test_bad_input_fails_at_once(
    capsys: pytest.CaptureFixture[str], verb: str, args: list[str], says: str
) -> None:
    started = time.monotonic()
    status, out, err = run(capsys, verb, "--bootstrap", NOWHERE, *args)
    assert time.monotonic() - started < 1
    assert status == 2 and out == ""
    assert one_line(err).startswith(f"peer-relay {verb}: error: {says}")


def test_send_needs_a_bootstrap_peer(capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run(capsys, "send", NOBODY, "1")
    assert status == 2
    assert "the following arguments are required: --bootstrap" in one_line(err)


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run(capsys, "request", "--help")
    assert status == 0
    assert "exit status:" in out and "3  remote error" in out
    status, out, _err = run(capsys, "send", "--help")
    assert status == 0 and "--no-wait" in out and "1  not delivered" in out
