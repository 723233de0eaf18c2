"""Benchmark RTCLink on loopback: setup time and one-way throughput.

Two links in one process, signals passed through queues (as a relay would)::

    .venv/bin/python benchmarks/webrtc_link.py [--runs 10] [--duration 5] [--rcvbuf N]

Prints the setup time (initiator's start(), i.e. offer creation, until the data
channel is open on both sides; median of --runs) and, for 100-byte and 4 KiB frames,
the frames/s received while the sender keeps the channel's buffer full for --duration
seconds.  UDP receive-buffer overflows (RcvbufErrors in /proc/net/snmp) during each
run are printed too.  ``--rcvbuf`` sets RTCConfig.rcvbuf (default 0: aioice's 256 KiB);
both ends share one event loop here, so the receiver competes with the sender for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from peer_relay.transports.webrtc import (
    BufferFullError,
    LinkNotOpenError,
    RTCConfig,
    RTCLink,
)


class Side:
    def __init__(self, initiator: bool, config: RTCConfig) -> None:
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.received = 0
        self.link = RTCLink(
            initiator=initiator,
            on_signal=self.outbox.put_nowait,
            on_open=self.opened.set,
            on_frame=self._on_frame,
            on_close=lambda reason: self.closed.set(),
            config=config,
        )

    def _on_frame(self, frame: str) -> None:
        self.received += 1


async def _relay(src: Side, dst: Side) -> None:
    while True:
        dst.link.add_signal(await src.outbox.get())


@contextlib.asynccontextmanager
async def pair(config: RTCConfig) -> AsyncIterator[tuple[Side, Side, float]]:
    """An open pair of links and the seconds it took to open."""
    a, b = Side(True, config), Side(False, config)
    relays = [asyncio.create_task(_relay(a, b)), asyncio.create_task(_relay(b, a))]
    try:
        await b.link.start()
        t0 = time.perf_counter()
        await a.link.start()
        await asyncio.wait_for(asyncio.gather(a.opened.wait(), b.opened.wait()), 15)
        yield a, b, time.perf_counter() - t0
    finally:
        await a.link.close()
        await b.link.close()
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


def rcvbuf_errors() -> int | None:
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return None
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return None
    return int(udp[1][udp[0].index("RcvbufErrors")])


async def throughput(config: RTCConfig, size: int, duration: float) -> tuple[float, int | None]:
    """Frames/s received over `duration` while the sender keeps its buffer full."""
    frame = "x" * size
    async with pair(config) as (a, b, _):
        errors_before = rcvbuf_errors()
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + duration
        while loop.time() < deadline:
            try:
                for _ in range(64):
                    a.link.send(frame)
            except BufferFullError:
                await a.link.drain()
            else:
                await asyncio.sleep(0)  # let aiortc's SCTP tasks run
        received = b.received
        elapsed = loop.time() - start
        errors_after = rcvbuf_errors()
    overflow = None
    if errors_before is not None and errors_after is not None:
        overflow = errors_after - errors_before
    return received / elapsed, overflow


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rcvbuf", type=int, default=RTCConfig.rcvbuf)
    parser.add_argument("--max-buffered", type=int, default=RTCConfig.max_buffered)
    args = parser.parse_args()
    config = RTCConfig(
        host_addresses=("127.0.0.1",), rcvbuf=args.rcvbuf, max_buffered=args.max_buffered
    )

    setups = []
    for _ in range(args.runs):
        async with pair(config) as (_a, _b, seconds):
            setups.append(seconds * 1000)
    print(
        f"setup (offer -> channel open on both sides), {args.runs} runs: "
        f"median {statistics.median(setups):.1f} ms, "
        f"min {min(setups):.1f} ms, max {max(setups):.1f} ms"
    )

    for size in (100, 4096):
        try:
            rate, overflow = await throughput(config, size, args.duration)
        except LinkNotOpenError:
            print(f"{size:>5}-byte frames: link closed during the run")
            continue
        extra = "" if overflow is None else f", UDP RcvbufErrors during run: {overflow}"
        print(
            f"{size:>5}-byte frames, one way, {args.duration:g} s: {rate:,.0f} frames/s "
            f"({rate * size / 1e6:.2f} MB/s){extra}"
        )


if __name__ == "__main__":
    asyncio.run(main())
