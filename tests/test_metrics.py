"""Metrics, the status endpoint, ``peer-relay status`` and JSON logs, against live nodes on
127.0.0.1 (ephemeral ports), scraped over real HTTP."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from peer_relay import PeerRelay
from peer_relay.logs import JsonFormatter, add_log_format_argument, setup_logging
from peer_relay.metrics import (
    MetricsError,
    MetricsServer,
    add_metrics_arguments,
    parse_metrics_spec,
    serving_metrics,
    start_metrics,
)
from peer_relay.status import format_status, status_main, status_url

LOCAL: dict[str, Any] = {"port": 0, "host": "127.0.0.1"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def http_get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, bytes]:
    """GET (in a thread: the node serves on this loop) and return the status and body."""
    assert server.url is not None
    status, _headers, body = await asyncio.to_thread(_get, server.url.rstrip("/") + path, method)
    return status, body


async def scrape(server: MetricsServer) -> Samples:
    status, body = await http_get(server, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scraped_until(
    server: MetricsServer, check: Callable[[Samples], bool], what: str, timeout: float = 10.0
) -> Samples:
    """Scrape until ``check`` holds (polling, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape(server)
        if check(samples):
            return samples
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def chain() -> AsyncIterator[tuple[PeerRelay, PeerRelay, PeerRelay]]:
    """c1 - hub - c3: the hub listens, c1 and c3 are client-only (no direct link possible)."""
    async with (
        PeerRelay(**LOCAL) as hub,
        PeerRelay(bootstrap=[hub.url or ""]) as c1,
        PeerRelay(bootstrap=[hub.url or ""]) as c3,
    ):
        await c1.wait_for_peers(1)
        await c3.wait_for_peers(1)
        await eventually(lambda: len(hub.peers) == 2, what="the hub's two links")
        yield c1, hub, c3


async def malformed_frame(url: str) -> None:
    """Open a raw WebSocket to ``url``, read the node's hello, answer with a frame that is not
    JSON; the node drops it (``malformed-json``) and closes the link."""
    async with connect(url, open_timeout=5, compression=None) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("this is not json {")
        with pytest.raises(Exception):  # noqa: B017 (closed by the node: any close will do)
            await asyncio.wait_for(ws.recv(), 5)


# ----------------------------------------------------------------------------- HOST:PORT


def test_metrics_addresses_parse() -> None:
    assert parse_metrics_spec("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_metrics_spec("localhost:0") == ("localhost", 0)
    assert parse_metrics_spec("[::1]:9100") == ("::1", 9100)
    assert parse_metrics_spec("0.0.0.0:65535") == ("0.0.0.0", 65535)
    for bad in (
        "9100",
        ":9100",
        "host:",
        "host:99999",
        "host:-1",
        "::1:9100",
        "[::1:9100",
        "a b:1",
    ):
        with pytest.raises(ValueError, match="metrics address"):
            parse_metrics_spec(bad)


def test_metrics_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="peer-relay serve")
    add_metrics_arguments(parser)
    add_log_format_argument(parser)
    args = parser.parse_args(["--metrics", "127.0.0.1:0", "--log-format", "json"])
    assert (args.metrics, args.log_format) == ("127.0.0.1:0", "json")
    assert parser.parse_args([]).metrics is None
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--metrics", "nonsense"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--metrics" in err[-1] and "HOST:PORT" in err[-1]
    assert "Traceback" not in "\n".join(err)


# ----------------------------------------------------------------------------- /metrics


async def test_a_chain_scraped_over_http(chain: tuple[PeerRelay, PeerRelay, PeerRelay]) -> None:
    c1, hub, c3 = chain
    async with (
        serving_metrics(c1, "127.0.0.1:0") as m1,
        serving_metrics(hub, "127.0.0.1:0") as mh,
        serving_metrics(c3, "127.0.0.1:0") as m3,
    ):
        assert m1 is not None and mh is not None and m3 is not None
        assert len({m1.port, mh.port, m3.port}) == 3 and 0 not in {m1.port, mh.port, m3.port}
        sent = 7
        for i in range(sent):
            await c1.deliver(c3.id, {"n": i})

        # Each server has its own registry: each reports its own node only.
        for server, node in ((m1, c1), (mh, hub), (m3, c3)):
            samples = await scrape(server)
            info = [k for k in samples if k[0] == "peer_relay_info"]
            assert len(info) == 1
            assert dict(info[0][1])["id"] == node.id.hex()
            assert dict(info[0][1])["url"] == (node.url or "")
            assert value(samples, "peer_relay_up") == 1
            assert (value(samples, "process_resident_memory_bytes") or 0) > 1 << 20

        receiver = await scrape(m3)
        assert value(receiver, "peer_relay_messages_delivered_total") == sent
        assert value(receiver, "peer_relay_links", transport="ws", state="open") == 1
        assert value(receiver, "peer_relay_links", transport="webrtc", state="open") == 0
        assert value(receiver, "peer_relay_sessions") == 1

        before = hub.stats
        relay = await scrape(mh)
        after = hub.stats
        assert value(relay, "peer_relay_links", transport="ws", state="open") == 2
        assert value(relay, "peer_relay_links_opened_total") == 2
        relayed = value(relay, "peer_relay_messages_relayed_total")
        assert relayed is not None and relayed >= sent  # the receipts and session too
        assert before["relayed"] <= relayed <= after["relayed"]
        assert value(relay, "peer_relay_messages_delivered_total") == 0
        for name, key in (
            ("peer_relay_frames_received_total", "frames_in"),
            ("peer_relay_frames_sent_total", "frames_out"),
            ("peer_relay_received_bytes_total", "bytes_in"),
            ("peer_relay_sent_bytes_total", "bytes_out"),
        ):
            got = value(relay, name)
            assert got is not None and before[key] <= got <= after[key], name
        assert (value(relay, "peer_relay_received_bytes_total") or 0) > 100 * sent
        assert value(relay, "peer_relay_bound_limit", structure="links") == 20
        assert value(relay, "peer_relay_bound_size", structure="links") == 2

        sender = await scrape(m1)
        originated = value(sender, "peer_relay_messages_originated_total")
        assert originated is not None and originated >= sent


async def test_a_drop_reason_appears_once_provoked(
    chain: tuple[PeerRelay, PeerRelay, PeerRelay],
) -> None:
    _c1, hub, _c3 = chain
    async with serving_metrics(hub, "127.0.0.1:0") as server:
        assert server is not None
        samples = await scrape(server)
        assert value(samples, "peer_relay_drops_total", reason="malformed-json") is None
        await malformed_frame(hub.url or "")
        samples = await scraped_until(
            server,
            lambda s: value(s, "peer_relay_drops_total", reason="malformed-json") == 1,
            "the malformed-json drop",
        )
        assert hub.stats["dropped"]["malformed-json"] == 1
        # The link of the raw client never opened: still two open links, both ws.
        assert value(samples, "peer_relay_links", transport="ws", state="open") == 2


async def test_latency_histograms_are_exposed_once_fed() -> None:
    async with PeerRelay(**LOCAL) as peer:
        server = await start_metrics(peer, "127.0.0.1:0")
        try:
            samples = await scrape(server)
            name = "peer_relay_delivery_duration_seconds"
            handshakes = "peer_relay_handshake_duration_seconds_count"
            assert value(samples, f"{name}_count", kind="deliver") == 0
            assert value(samples, handshakes, transport="ws") == 0
            server.observe_delivery(0.004)
            server.observe_delivery(0.3, "request")
            server.observe_handshake(0.02, "ws")
            samples = await scrape(server)
            assert value(samples, f"{name}_count", kind="deliver") == 1
            assert value(samples, f"{name}_bucket", kind="deliver", le="0.005") == 1
            assert value(samples, f"{name}_bucket", kind="deliver", le="0.0025") == 0
            assert value(samples, f"{name}_sum", kind="request") == pytest.approx(0.3)
            assert value(samples, handshakes, transport="ws") == 1
        finally:
            await server.close()


async def test_the_server_answers_only_what_it_serves() -> None:
    async with PeerRelay(**LOCAL) as peer, serving_metrics(peer, "127.0.0.1:0") as server:
        assert server is not None
        status, body = await http_get(server, "/nothing-here")
        assert status == 404 and b"/metrics" in body
        status, body = await http_get(server, "/metrics", "POST")
        assert status == 405
        status, body = await http_get(server, "/metrics", "HEAD")
        assert status == 200 and body == b""
        assert server.url is not None
        _status, headers, page = await asyncio.to_thread(_get, server.url)
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in headers["Content-Security-Policy"]
        assert b"status.json" in page and b"<script" in page and b"src=" not in page
        port = server.port
    # Closed with the context: the port no longer answers.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port or 0), timeout=2):
        pass


async def test_an_unstarted_node_reports_that_it_is_not_up() -> None:
    peer = PeerRelay(**LOCAL)
    server = await MetricsServer(peer).start()
    try:
        samples = await scrape(server)
        assert value(samples, "peer_relay_up") == 0
        assert value(samples, "peer_relay_messages_delivered_total") == 0
        status, body = await http_get(server, "/status.json")
        assert status == 200 and json.loads(body)["running"] is False
    finally:
        await server.close()
        await peer.destroy()


async def test_a_port_in_use_is_explained_in_one_line() -> None:
    async with PeerRelay(**LOCAL) as peer, serving_metrics(peer, "127.0.0.1:0") as server:
        assert server is not None
        with pytest.raises(MetricsError) as caught:
            await start_metrics(peer, f"127.0.0.1:{server.port}")
        message = str(caught.value)
        assert message.startswith(f"cannot serve metrics on 127.0.0.1:{server.port}: ")
        assert "in use" in message and "\n" not in message
        assert not isinstance(caught.value, OSError)


# ----------------------------------------------------------------------------- /status.json


async def test_status_json_shows_links_counters_and_drops(
    chain: tuple[PeerRelay, PeerRelay, PeerRelay],
) -> None:
    c1, hub, c3 = chain
    async with serving_metrics(hub, "127.0.0.1:0") as server:
        assert server is not None
        await c1.deliver(c3.id, "through the hub")
        await malformed_frame(hub.url or "")
        await eventually(lambda: "malformed-json" in hub.stats["dropped"], what="the drop")
        status, body = await http_get(server, "/status.json")
        assert status == 200
        snap = json.loads(body)
        assert snap["id"] == hub.id.hex() and snap["url"] == hub.url
        assert snap["running"] is True
        open_links = {x["peer"]: x for x in snap["links"] if x["state"] == "open"}
        assert set(open_links) == {c1.id.hex(), c3.id.hex()}
        assert all(x["transport"] == "ws" and x["authenticated"] for x in open_links.values())
        assert all(x["outbound"] is False for x in open_links.values())
        # Both links opened before this server started: their age comes from the core.
        assert all(x["age"] is not None and 0 <= x["age"] < 60 for x in open_links.values())
        # Per link traffic: the delivery went in from c1 and out to c3, its receipt back.
        for peer in (c1, c3):
            traffic = open_links[peer.id.hex()]["traffic"]
            assert traffic["frames_in"] >= 1 and traffic["frames_out"] >= 1
            assert traffic["bytes_in"] > 0 and traffic["bytes_out"] > 0
        moved_in = sum(x["traffic"]["bytes_in"] for x in snap["links"] if x["traffic"])
        assert moved_in <= hub.stats["bytes_in"]
        assert snap["counters"]["relayed"] >= 1
        assert snap["dropped"]["malformed-json"] == 1
        assert snap["bounds"]["links"] == [2, 20]
        assert snap["rss_bytes"] is None or snap["rss_bytes"] > 1 << 20


async def test_link_ages_come_from_the_peer_events() -> None:
    async with PeerRelay(**LOCAL) as hub, serving_metrics(hub, "127.0.0.1:0") as server:
        assert server is not None
        async with PeerRelay(bootstrap=[hub.url or ""]) as client:
            await client.wait_for_peers(1)
            await eventually(lambda: len(hub.peers) == 1, what="the link")
            snap = server.status()
            (link,) = snap["links"]
            assert link["peer"] == client.id.hex()
            assert link["age"] is not None and 0 <= link["age"] < 10
        await eventually(lambda: not hub.peers, what="the link to close")
        assert all(x["state"] != "open" for x in server.status()["links"])


# ----------------------------------------------------------------------------- peer-relay status


async def test_status_command_against_a_live_node(
    chain: tuple[PeerRelay, PeerRelay, PeerRelay],
) -> None:
    c1, hub, c3 = chain
    async with serving_metrics(hub, "127.0.0.1:0") as server:
        assert server is not None
        await c1.deliver(c3.id, "hello")
        await malformed_frame(hub.url or "")
        await eventually(lambda: "malformed-json" in hub.stats["dropped"], what="the drop")
        for target in (f"127.0.0.1:{server.port}", server.url or "", f"{server.url}status.json"):
            out = io.StringIO()
            code = await asyncio.to_thread(status_main, [target], out)
            assert code == 0
            text = out.getvalue()
            assert f"peer      {hub.id.hex()}" in text
            assert f"url       {hub.url}" in text
            assert "links     2 open (ws 2, webrtc 0)" in text
            assert c1.id.hex() in text and c3.id.hex() in text
            assert "malformed-json" in text
            assert "messages relayed" in text
        out = io.StringIO()
        assert await asyncio.to_thread(status_main, [server.url or "", "--json"], out) == 0
        assert json.loads(out.getvalue())["id"] == hub.id.hex()


async def test_status_watch_refreshes_with_rates_until_the_node_goes_away(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with PeerRelay(**LOCAL) as peer:
        server = await start_metrics(peer, "127.0.0.1:0")
        out = io.StringIO()
        watching = asyncio.ensure_future(
            asyncio.to_thread(status_main, [server.url or "", "--watch", "--interval", "0.05"], out)
        )
        try:
            await eventually(lambda: out.getvalue().count("peer      ") >= 3, what="3 refreshes")
            assert "/s" in out.getvalue()  # rates, from the refresh before
        finally:
            await server.close()
        assert await asyncio.wait_for(watching, 10) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "could not reach" in err[0]


def test_status_rates_come_from_two_snapshots() -> None:
    def snap(t: float, delivered: int, drops: int) -> dict[str, Any]:
        counters = dict.fromkeys(("frames_in", "frames_out", "bytes_in", "bytes_out"), 0)
        counters.update(delivered=delivered, relayed=0, originated=0, rerouted=0)
        return {
            "time": t,
            "id": "ab" * 20,
            "url": None,
            "links": [],
            "counters": counters,
            "dropped": {"no-route": drops},
        }

    text = format_status(snap(12.0, 50, 9), snap(10.0, 30, 1))
    assert "  messages delivered                50        10.0/s\n" in text
    assert "  no-route                           9         4.0/s" in text
    assert "(no server: not dialable)" in text and "links     none" in text


async def test_status_command_against_a_dead_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code = await asyncio.to_thread(status_main, [f"127.0.0.1:{port}"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"peer-relay status: could not reach http://127.0.0.1:{port}/")
    assert "--metrics" in lines[0] and "Traceback" not in captured.err


def test_status_urls() -> None:
    assert status_url("127.0.0.1:9100") == "http://127.0.0.1:9100/status.json"
    assert status_url("http://h:1/") == "http://h:1/status.json"
    assert status_url("http://h:1/status") == "http://h:1/status.json"
    assert status_url("http://h:1/relay/metrics") == "http://h:1/relay/status.json"
    assert status_url("https://h/status.json") == "https://h/status.json"
    with pytest.raises(ValueError):
        status_url("ftp://h/")


def test_status_command_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        status_main(["127.0.0.1:1", "--interval", "0"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert status_main(["ftp://x/"]) == 2


# ----------------------------------------------------------------------------- logs


def test_json_log_lines() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "peer_relay.node", logging.INFO, __file__, 1, "a %s\nb", ("x",), None
    )
    record.created = 0.25
    line = formatter.format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.250Z",
        "level": "INFO",
        "logger": "peer_relay.node",
        "message": "a x\nb",
    }
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord(
            "peer_relay.cli", logging.ERROR, __file__, 2, "failed", (), sys.exc_info()
        )
    entry = json.loads(formatter.format(failed))
    assert entry["level"] == "ERROR" and entry["message"] == "failed"
    assert "Traceback" in entry["exception"] and "RuntimeError: boom" in entry["exception"]


def test_setup_logging_json_and_text() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_level = root.level
    log = logging.getLogger("peer_relay.test_metrics")
    try:
        # pytest's handlers are on the root logger: like basicConfig, it leaves them alone...
        assert root.handlers and setup_logging(logging.INFO, "json", stream) is None
        # ... unless forced.
        handler = setup_logging(logging.INFO, "json", stream, force=True)
        again = setup_logging(logging.INFO, "json", stream, force=True)  # replaces, not adds
        assert handler not in root.handlers and again in root.handlers
        log.info("hello %d", 1)
        log.debug("not shown")
        logging.getLogger("elsewhere").info("not shown either")
        (line,) = stream.getvalue().splitlines()
        assert json.loads(line)["message"] == "hello 1"
        setup_logging(logging.DEBUG, "text", stream, force=True)
        log.debug("plain")
        assert stream.getvalue().splitlines()[-1].endswith("peer_relay.test_metrics DEBUG plain")
        with pytest.raises(ValueError):
            setup_logging(logging.INFO, "xml")
    finally:
        for h in [h for h in root.handlers if type(h).__module__ == "peer_relay.logs"]:
            root.removeHandler(h)
        root.setLevel(saved_level)
        logging.getLogger("peer_relay").setLevel(logging.NOTSET)


def test_json_logs_in_a_fresh_process() -> None:
    """Where nothing set up logging yet (a command), JSON lines go to stderr."""
    code = (
        "import logging\n"
        "from peer_relay.logs import setup_logging\n"
        "setup_logging(logging.INFO, 'json')\n"
        "log = logging.getLogger('peer_relay.node')\n"
        "log.info('peer %s started', 'abcd')\n"
        "log.debug('hidden')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    log.exception('failed')\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert done.stdout == ""
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert first["message"] == "peer abcd started" and first["level"] == "INFO"
    assert first["logger"] == "peer_relay.node" and first["time"].endswith("Z")
    assert "exception" not in first
    assert second["level"] == "ERROR" and "ZeroDivisionError" in second["exception"]
