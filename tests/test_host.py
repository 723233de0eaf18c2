"""The one pump (peer_relay.host.Pump), against a scripted core and a recording host: dispatch by
kind, draining until the core is quiet, the exception policy, and the timer."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from peer_relay.core import Core
from peer_relay.events import (
    CloseLink,
    ConnectResult,
    Delivered,
    DeliveryResult,
    DialWebSocket,
    Event,
    PeerLinked,
    PeerUnlinked,
    Reply,
    RequestReceived,
    SendFrame,
    SignalIn,
    StartWebRTC,
)
from peer_relay.host import Host, Pump


class ScriptedCore:
    """The four methods of Core the pump calls; events and deadlines are set by the test."""

    def __init__(self) -> None:
        self.pending: list[Event] = []
        self.timer: float | None = None
        self.undeliverable: list[tuple[int, bytes, float]] = []
        self.timer_calls: list[float] = []
        self.on_undeliverable: list[Event] = []
        self.fail_timer = False

    def events(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        if self.fail_timer:
            raise RuntimeError("a bug in the core")

    def frame_undeliverable(self, handle: int, frame: bytes, now: float) -> None:
        self.undeliverable.append((handle, frame, now))
        self.pending.extend(self.on_undeliverable)
        self.on_undeliverable = []


class RecordingHost:
    """Records every call; ``refuse`` holds handles whose frames it will not take."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.clock = 100.0
        self.refuse: set[int] = set()
        self.fail: set[str] = set()

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise ValueError(f"{name} failed")

    def now(self) -> float:
        return self.clock

    def set_timer(self, when: float | None) -> None:
        self._record("set_timer", when)

    def send_frame(self, handle: int, frame: bytes) -> bool:
        self._record("send_frame", handle, frame)
        return handle not in self.refuse

    def close_link(self, handle: int, reason: str) -> None:
        self._record("close_link", handle, reason)

    def dial_websocket(self, handle: int, url: str, expected_id: bytes | None) -> None:
        self._record("dial_websocket", handle, url, expected_id)

    def start_webrtc(self, handle: int, peer_id: bytes, initiator: bool) -> None:
        self._record("start_webrtc", handle, peer_id, initiator)

    def signal_in(self, handle: int, signal: Any) -> None:
        self._record("signal_in", handle, signal)

    def delivered(self, event: Delivered) -> None:
        self._record("delivered", event)

    def peer_linked(self, event: PeerLinked) -> None:
        self._record("peer_linked", event)

    def peer_unlinked(self, event: PeerUnlinked) -> None:
        self._record("peer_unlinked", event)

    def connect_result(self, event: ConnectResult) -> None:
        self._record("connect_result", event)

    def delivery_result(self, event: DeliveryResult) -> None:
        self._record("delivery_result", event)

    def request_received(self, event: RequestReceived) -> None:
        self._record("request_received", event)

    def reply(self, event: Reply) -> None:
        self._record("reply", event)


PEER = bytes(range(20))


def setup() -> tuple[ScriptedCore, RecordingHost, Pump]:
    core, host = ScriptedCore(), RecordingHost()
    host_: Host = host  # the recording host implements the protocol
    return core, host, Pump(cast(Core, core), host_)


def test_each_kind_of_event_goes_to_its_method_in_order() -> None:
    core, host, pump = setup()
    delivered = Delivered({"a": 1}, PEER, True, 2)
    linked = PeerLinked(PEER, "ws", True)
    unlinked = PeerUnlinked(PEER, "gone")
    result = ConnectResult(PEER, False, "timeout")
    core.pending = [
        SendFrame(1, b"{}"),
        delivered,
        CloseLink(2, "bye"),
        DialWebSocket(3, "ws://x", None),
        StartWebRTC(4, PEER, True),
        SignalIn(4, {"sdp": "v=0"}),
        linked,
        unlinked,
        result,
    ]
    pump.drive()
    assert host.calls == [
        ("send_frame", 1, b"{}"),
        ("delivered", delivered),
        ("close_link", 2, "bye"),
        ("dial_websocket", 3, "ws://x", None),
        ("start_webrtc", 4, PEER, True),
        ("signal_in", 4, {"sdp": "v=0"}),
        ("peer_linked", linked),
        ("peer_unlinked", unlinked),
        ("connect_result", result),
    ]
    assert not pump.errors


def test_a_refused_frame_is_reported_and_what_that_produces_is_drained_too() -> None:
    core, host, pump = setup()
    host.refuse = {1}
    core.pending = [SendFrame(1, b"a"), SendFrame(2, b"b")]
    core.on_undeliverable = [SendFrame(2, b"a")]  # the core re-routes the refused frame
    pump.drive()
    assert core.undeliverable == [(1, b"a", 100.0)]
    assert host.calls == [("send_frame", 1, b"a"), ("send_frame", 2, b"b"), ("send_frame", 2, b"a")]
    assert core.pending == []


def test_a_failing_handler_is_logged_and_counted_and_the_drain_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, host, pump = setup()
    host.fail = {"close_link", "send_frame"}
    core.timer = 5.0
    core.pending = [CloseLink(1, "x"), SendFrame(2, b"f"), PeerUnlinked(PEER, "y")]
    with caplog.at_level(logging.ERROR, logger="peer_relay.host"):
        pump.drive()
    assert [call[0] for call in host.calls] == [
        "close_link",
        "send_frame",
        "peer_unlinked",
        "set_timer",
    ]
    # A frame whose send raised is reported undeliverable: the core re-routes and counts it.
    assert core.undeliverable == [(2, b"f", 100.0)]
    assert pump.errors == {"CloseLink": 1, "SendFrame": 1}
    assert len([r for r in caplog.records if r.exc_info]) == 2


def test_an_unknown_event_is_an_error_not_a_crash() -> None:
    core, _host, pump = setup()
    core.pending = [cast(Event, object())]
    pump.drive()
    assert pump.errors == {"object": 1}


def test_the_timer_is_re_armed_only_when_the_deadline_changes() -> None:
    core, host, pump = setup()
    pump.drive()
    assert host.calls == []  # no deadline, none armed
    core.timer = 10.0
    pump.drive()
    pump.drive()
    core.timer = 12.0
    pump.drive()
    core.timer = None
    pump.drive()
    assert host.calls == [("set_timer", 10.0), ("set_timer", 12.0), ("set_timer", None)]


def test_when_the_timer_fires_the_core_runs_at_the_hosts_time_and_the_timer_is_re_armed() -> None:
    core, host, pump = setup()
    core.timer = 10.0
    pump.drive()
    host.clock = 10.0
    pump.timer_fired()  # the host's timer is spent: the same deadline is armed again
    assert core.timer_calls == [10.0]
    assert host.calls == [("set_timer", 10.0), ("set_timer", 10.0)]


def test_a_core_that_raises_still_gets_its_timer_re_armed() -> None:
    core, host, pump = setup()
    core.timer = 10.0
    core.fail_timer = True
    with pytest.raises(RuntimeError, match="a bug in the core"):
        pump.timer_fired()
    assert host.calls == [("set_timer", 10.0)]


def test_trace_sees_every_event_first() -> None:
    core, _host, pump = setup()
    seen: list[Event] = []
    pump.trace = seen.append
    core.pending = [SendFrame(1, b"x"), CloseLink(1, "done")]
    pump.drive()
    assert seen == [SendFrame(1, b"x"), CloseLink(1, "done")]
    assert pump.core is cast(Core, core)
