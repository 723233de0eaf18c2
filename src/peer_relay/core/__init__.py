"""The node's state machine, in parts: links, neighbours' links, confirmation, routing, inbox,
connect, discovery, bootstrap, population, wired by :class:`Core` (see ``docs/architecture.md``).

Sans-I/O: the core never touches a socket, starts a task, reads a clock or draws its own random
numbers. It is fed events (a link opened, a frame arrived, the application sends, time is now T)
and answers with :mod:`peer_relay.events` values, drained with :meth:`Core.events`. Every
time-dependent call takes ``now`` in seconds (wall-clock based, because signed messages carry a
timestamp); :meth:`Core.get_timer` tells when :meth:`Core.handle_timer` is next due.

Nothing from the network raises out of this module: a frame that cannot be used is dropped,
counted in :attr:`Core.stats` under a reason, and logged at debug level. Misuse by the programmer
(a malformed id, a payload that is not JSON) raises ``ValueError`` or ``TypeError`` at once.
"""

from __future__ import annotations

from .config import Config, Stats, Strategy
from .core import Core
from .inbox import message_key
from .link import LinkState

PARTS = (
    "config",
    "context",
    "bounded",
    "budgets",
    "link",
    "links",
    "neighbours",
    "confirm",
    "routing",
    "inbox",
    "connect",
    "direct",
    "discovery",
    "bootstrap",
    "population",
    "sessions",
    "delivery",
    "readout",
    "core",
)
"""The core's modules, each importing only modules before it (``tests/test_architecture.py``)."""

__all__ = ["Config", "Core", "LinkState", "Stats", "Strategy", "message_key"]
