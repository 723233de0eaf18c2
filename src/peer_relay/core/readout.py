"""Read-outs of a core's state for diagnostics, tests and the simulator's report: the sizes of
its bounded structures next to their limits, and whom it deals with."""

from __future__ import annotations

from typing import Any, NamedTuple

from .config import Config
from .connect import Connector
from .discovery import Discovery
from .inbox import Inbox
from .link import LinkState
from .links import Links
from .routing import Router


class Parts(NamedTuple):
    """The parts of one core that hold state worth reading out."""

    links: Links
    router: Router
    inbox: Inbox
    discovery: Discovery
    connector: Connector


def bounds(cfg: Config, parts: Parts) -> dict[str, tuple[int, int]]:
    """Every bounded structure's size now, next to its limit (per link: the largest)."""
    links, connector, discovery = parts.links, parts.connector, parts.discovery
    held = max((len(link.awaiting) + len(link.pending) for link in links.open), default=0)
    held_bytes = max((link.held for link in links.open), default=0)
    return {
        "links": (len(links.open), cfg.max_links),
        "pending_links": (links.pending_inbound(), cfg.max_pending_links),
        "opening": (links.opening(), cfg.max_dialing),
        "connecting": (len(connector.attempts), max(cfg.max_connecting, 1) + cfg.max_links),
        "webrtc": (len(connector.rtc_by_peer), cfg.max_pending_links + cfg.max_links),
        "seen": (len(parts.inbox.seen), cfg.max_seen),
        "delivered": (len(parts.inbox.delivered), cfg.max_seen),
        "routes": (len(parts.router.routes), cfg.max_routes),
        "queue": (len(parts.router.queue), cfg.max_queue),
        "unconfirmed": (held, cfg.max_unconfirmed),
        "unconfirmed_bytes": (held_bytes, cfg.max_frame),
        "candidates": (len(discovery.candidates), 160 * cfg.k),
        "introducers": (len(discovery.introducers), discovery.introducers.limit),
        "asked": (len(discovery.asked), discovery.asked.limit),
        "undialable": (len(connector.undialable), cfg.max_undialable),
        "answered": (len(connector.answered), connector.answered.limit),
        "budgets": (parts.inbox.budgets.sizes(), cfg.max_budgets),
    }


def inspect(parts: Parts) -> dict[str, Any]:
    """Every link with its state (its handle, and when it opened on the core's clock once
    open), the attempts in flight, the peers answered, the peers left alone, and the peers with
    a WebRTC link, as plain values (ids in hex)."""
    connector = parts.connector
    return {
        "links": [
            {
                "peer": (link.peer_id or link.expected or b"").hex() or None,
                "state": LinkState(link.state).name.lower(),
                "transport": link.transport,
                "outbound": link.outbound,
                "authenticated": link.authenticated,
                "handle": link.handle,
                "opened_at": link.opened_at if link.opened_at else None,
            }
            for link in parts.links.by_handle.values()
        ],
        "attempts": [peer_id.hex() for peer_id in connector.attempts],
        "answered": [peer_id.hex() for peer_id in connector.answered.entries],
        "undialable": [peer_id.hex() for peer_id in connector.undialable.entries],
        "webrtc": [peer_id.hex() for peer_id in connector.rtc_by_peer],
    }
