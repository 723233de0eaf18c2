"""Every bound and policy of a node (:class:`Config`), and the counters of what it did
(:class:`Stats`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .. import wire

Strategy = Literal["spread", "original"]


@dataclass(frozen=True, slots=True)
class Config:
    """Every bound and policy of a node, with safe defaults."""

    url: str | None = None
    """The WebSocket URL other peers should dial; None for a peer that cannot be dialled."""
    webrtc: bool = False
    """Whether this peer can form WebRTC links."""
    k: int = 20
    """Bucket size of the routing table and of the candidate table."""
    max_links: int = 20
    """Most direct links kept open; extra ones push out the least useful link."""
    max_pending_links: int = 32
    """Most inbound connections still in their hello and proof, all sources together. When
    full, a newcomer takes the slot of the oldest one from the source holding most."""
    max_pending_per_source: int = 4
    """Most inbound connections in their hello and proof from one source address (an IPv4
    address, an IPv6 /64); more are closed at once."""
    hello_timeout: float = 3.0
    """Seconds an inbound connection has to send its hello and proof (they take milliseconds)."""
    max_dialing: int = 32
    """Most of our own WebSocket dials and WebRTC links still opening (apart from inbound)."""
    max_connecting: int = 8
    """Most connection attempts (relayed handshakes) in flight at once."""
    connect_timeout: float = 10.0
    link_timeout: float = 10.0
    """Seconds a link we dialled has to complete its hello and proof, and a closed link to
    drain."""
    max_hops: int = wire.MAX_HOPS
    max_frame: int = 1 << 20
    """Largest frame accepted or sent, in bytes."""
    seen_ttl: float = 120.0
    """Seconds a message id stays in the duplicate filter (at least twice ``replay_window``)."""
    max_seen: int = 65_536
    """Most message ids held by each duplicate filter."""
    max_queue: int = 1024
    """Most messages waiting for a first link."""
    max_routes: int = 1024
    """Most reverse paths remembered (each at most ``max_hops`` ids)."""
    route_ttl: float = 60.0
    """Seconds a reverse path learnt from a verified message is used as a route hint."""
    max_undialable: int = 1024
    redundancy: int = 1
    """How many next hops each message is forwarded to."""
    detour: bool = True
    """Forward even when no link is closer to the target than we are (else drop: no route)."""
    max_detours: int = 5
    """Hops in a row a message may take without coming closer to its target (by id) before it
    is dropped (``no-route``): enough to go round a gap in a table, not to wander the network
    looking for a peer that has left."""
    share_links: bool = True
    """Tell our peers which peers we are linked to, and route with what they tell us: a hop
    goes to the peer whose own link is closest to the target (see ``core/neighbours.py``)."""
    max_listed: int = 32
    """Most link ids a peer's list may hold (we list at most this many of ours); the rest of a
    longer list is cut off (``links-cut``)."""
    share_interval: float = 10.0
    """Least seconds between two lists of our links sent to the same peer. Our peers learn of
    a change of our links a second later, or this long after the list before (a new link gets
    our list in its proof, and the next a second after a change)."""
    require_auth: bool = True
    """Refuse peers that cannot prove their id and messages that are not signed."""
    sign: bool = True
    """Sign the messages this peer originates."""
    replay_window: float = 60.0
    """Seconds a signed message's timestamp may differ from our clock."""
    refresh_interval: float = 15.0
    tick_interval: float = 1.0
    near_links: int = 4
    """Links to the peers nearest our own id that eviction never touches."""
    link_grace: float = 20.0
    """Seconds a new link is safe from eviction."""
    spare_links: int = 4
    """Links our own population leaves free for peers that dial us (nearest neighbours excepted):
    a full peer must evict to accept anyone, so headroom keeps joins cheap."""
    max_strikes: int = 8
    """Malformed frames tolerated from one link per ``strike_window`` before it is closed."""
    strike_window: float = 60.0
    confirm_timeout: float = 3.0
    """Seconds a peer of ours has to answer the ping that follows user messages we send it.
    Past that the link is taken for dead (a crashed peer stays silent until the transport's
    keepalive notices, tens of seconds later), closed, and the messages go another way. A
    timer that fires over a quarter of it late means our host stalled (blocked, or a long
    collection) while the answers may wait unread in its sockets: the pings then overdue get
    half of it more, once, before they count."""
    confirm_delay: float = 0.05
    """Seconds between the first user message sent on a link and the ping that follows it: one
    ping (and one pong) covers every message sent in that window, instead of one per message;
    half of ``max_unconfirmed`` (or of ``max_frame`` bytes) waiting sends it at once. A silent
    peer is found out ``confirm_delay + confirm_timeout`` after the message. 0: at once."""
    max_unconfirmed: int = 64
    """Most user messages per link kept for re-routing until the remote confirms them, and at
    most ``max_frame`` bytes of them (0: no confirmation at all)."""
    control_rate: float = 50.0
    """Discovery and connection requests answered per second in all (burst: twice that)."""
    peer_control_rate: float = 5.0
    """Requests answered per second for one sender id (burst: twice that). A sender past its
    budget is refused before its signature is checked."""
    link_control_rate: float = 25.0
    """Requests answered per second that arrive through one link (burst: twice that), and
    messages per second arriving through one link that may fail their signature check before
    requests through it are refused unchecked."""
    slow_check_rate: float = 64 * 1024
    """Bytes per second, per link, of signed data written again on its way (by a 0.0.2 relay)
    that is read and put in canonical form before its check, and then fails it (burst: twice
    that). Data larger than the burst, or past the budget, is dropped unchecked."""
    max_budgets: int = 4096
    """Most per-sender and per-link budgets remembered (the least recently used go first)."""
    sessions: bool = True
    """Whether ``send()`` encrypts end to end through a session (``deliver()`` and
    ``request()`` always do). Off, it sends plain signed messages, which peers of 0.0.2 read;
    ``PeerRelay`` turns it off with ``allow_unsigned`` or ``sign=False``."""
    max_sessions: int = 1024
    """Most peers with session state (keys, handshakes, queued messages); the least recently
    used go first."""
    max_session_queue: int = 256
    """Most messages per peer waiting for its session to open (``PeerRelay.drain()`` waits
    for them); more are dropped (``session-queue-full``), or fail for ``deliver()``."""
    session_timeout: float = 10.0
    """Seconds a session handshake may take before the messages waiting for it fail."""
    session_rekey: float = 600.0
    """Seconds after which a session in use is replaced by a new handshake (new keys)."""
    session_idle: float = 300.0
    """Seconds after which an unused session is forgotten."""
    session_resend: float = 10.0
    """Seconds a sealed message is kept, to be sent again in a new session should its peer turn
    out to have restarted and lost the old one (0: never)."""
    session_resend_count: int = 64
    """Most messages kept so per session."""
    session_resend_bytes: int = 64 * 1024
    """Most bytes of messages kept so per session (a larger message is not kept)."""
    initial_rto: float = 1.0
    """Seconds to wait for a receipt before sending again, until round trips are measured."""
    max_deliveries: int = 1024
    """Most deliveries, requests and replies of ours waiting for their receipt."""
    max_requests: int = 256
    """Most requests handed to our handler and not answered yet; more are refused (busy)."""
    bootstrap_retry: float = 5.0
    """First delay before dialling the bootstrap peers again after losing every link."""
    direct_after: int = 32
    """A peer we exchange this many messages with through relays, within ``direct_window``,
    is offered a direct link in the background (WebRTC when both do it, else WebSocket when
    one listens); the relayed path carries traffic until the link opens. 0: never."""
    direct_window: float = 30.0
    """Seconds over which ``direct_after`` counts a peer's relayed messages."""
    strategy: Strategy = "spread"
    """Population policy: ``spread`` (Kademlia-style) or ``original`` (0.0.2's)."""

    @property
    def near_count(self) -> int:
        """How many nearest-neighbour links are wanted and protected: at most half the budget."""
        return min(self.near_links, self.max_links // 2)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) in (int, float) and value < 0:
                raise ValueError(f"{f.name} must not be negative")
        if self.k < 1 or self.max_links < 1 or self.redundancy < 1 or self.max_frame < 64:
            raise ValueError("k, max_links, redundancy and max_frame must be positive")
        if self.max_pending_per_source < 1 or self.max_pending_links < 1:
            raise ValueError("max_pending_links and max_pending_per_source must be positive")
        if self.seen_ttl < 2 * self.replay_window:
            raise ValueError("seen_ttl must be at least twice replay_window")


@dataclass
class Stats:
    """Counters of what a node did. ``dropped`` counts dropped frames by reason."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    originated: int = 0
    delivered: int = 0
    relayed: int = 0
    rerouted: int = 0
    links_opened: int = 0
    links_closed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dropped"] = dict(self.dropped)
        return out
