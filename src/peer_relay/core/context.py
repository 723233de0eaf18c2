"""What every part of the core shares: who we are, the config, the outbox, the counters, the
one seeded random source and the one timer."""

from __future__ import annotations

import logging
import random

from .. import wire
from ..events import Event, SendFrame
from ..identity import Identity
from ..ids import short
from .config import Config, Stats

log = logging.getLogger("peer_relay.core")


class Context:
    """The state the parts of one core share; each part keeps a reference to it.

    ``events`` is the outbox that :meth:`peer_relay.core.Core.events` drains. ``next_tick`` is
    the core's one timer: parts that start waiting on a deadline call :meth:`wake`.
    """

    __slots__ = (
        "closed",
        "config",
        "events",
        "hex",
        "id",
        "identity",
        "int",
        "key_b64",
        "next_tick",
        "rng",
        "stats",
        "url",
    )

    def __init__(self, identity: Identity, config: Config, rng: random.Random) -> None:
        self.identity = identity
        self.id = identity.id
        self.hex = identity.id.hex()
        self.int = int.from_bytes(identity.id, "big")
        self.key_b64 = wire.b64encode(identity.public_key)
        self.config = config
        self.url = config.url
        self.rng = rng
        self.stats = Stats()
        self.events: list[Event] = []
        self.next_tick = float("inf")
        self.closed = False

    def send(self, handle: int, frame: bytes) -> None:
        """Queue ``frame`` for link ``handle`` and count it."""
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame)
        self.events.append(SendFrame(handle, frame))

    def drop(self, reason: str, detail: str = "") -> None:
        """Count a dropped frame under ``reason`` and log it at debug level."""
        self.stats.dropped[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s dropped: %s %s", short(self.hex), reason, detail)

    def wake_at(self, when: float) -> None:
        """Something waits on a deadline at ``when``: tick then at the latest."""
        if when < self.next_tick:
            self.next_tick = when

    def wake(self, now: float) -> None:
        """Something waits on a deadline now: tick within ``tick_interval``."""
        at = now + self.config.tick_interval
        if at < self.next_tick:
            self.next_tick = at
