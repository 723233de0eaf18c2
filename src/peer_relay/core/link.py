"""One direct link: its state and everything known about it (owned by :class:`Links`)."""

from __future__ import annotations

from array import array
from enum import IntEnum
from typing import Final


class LinkState(IntEnum):
    """Where a link is in its life. The order matters: every state below OPEN is a handshake."""

    DIALING = 0
    HELLO = 1
    PROOF = 2
    OPEN = 3
    DRAINING = 4
    """We closed an open link: frames the remote sent before it saw the close are still
    delivered or relayed until the adapter reports the link gone (or its deadline passes)."""


# The states as plain ints for the hot paths: compiled by mypyc, comparisons of Final ints are
# native, of enum members generic. Link.state holds these; LinkState(link.state) names one.
DIALING: Final = 0
HELLO: Final = 1
PROOF: Final = 2
OPEN: Final = 3
DRAINING: Final = 4


class Link:
    """One direct link and everything known about it."""

    __slots__ = (
        "authenticated",
        "awaiting",
        "created",
        "deadline",
        "expected",
        "handle",
        "held",
        "inbound_pending",
        "listed",
        "listed_at",
        "my_nonce",
        "opened_at",
        "outbound",
        "peer_hex",
        "peer_id",
        "peer_int",
        "pending",
        "ping_at",
        "ping_due",
        "ping_graced",
        "ping_seq",
        "remote_key",
        "remote_nonce",
        "rtc_described",
        "shared_at",
        "shared_version",
        "shares",
        "slot",
        "source",
        "state",
        "strikes",
        "transport",
        "url",
    )

    def __init__(self, handle: int, outbound: bool, transport: str, deadline: float) -> None:
        self.handle = handle
        self.outbound = outbound
        self.transport = transport
        self.state: int = DIALING
        self.deadline = deadline
        self.created = 0.0  # when the link started (our dial, or the connection accepted)
        self.expected: bytes | None = None
        self.peer_id = b""
        self.peer_hex = ""
        self.peer_int = 0
        self.my_nonce = b""
        self.remote_key: bytes | None = None
        self.remote_nonce = b""
        self.authenticated = False
        self.opened_at = 0.0
        self.strikes = 0
        self.rtc_described = False  # a WebRTC link that was handed the remote's description
        self.url: str | None = None  # the URL we dialled
        # Where an inbound connection came from (its address; None for links we started, and
        # where the host cannot tell): the unit of the per-source handshake budget.
        self.source: str | None = None
        self.inbound_pending = False
        # User messages sent on the link and not yet confirmed (see confirm.py): those the
        # outstanding ping (number ping_seq, due back by ping_due) covers, and those after it,
        # which the next ping covers (sent at ping_at, or when the outstanding one comes back).
        self.awaiting: list[bytes] = []
        self.pending: list[bytes] = []
        self.held = 0  # their bytes
        self.ping_seq = 0
        self.ping_due = float("inf")
        self.ping_at = float("inf")
        self.ping_graced = False  # ping_due was pushed back once because our host stalled
        # The remote's own links (see neighbours.py): the top 48 bits of each id and the slot,
        # and when its list came; the version of our list it last got from us, and when.
        self.slot = -1  # its number in the routing keys of neighbours.py while open
        self.listed: array[int] | None = None
        self.listed_at = float("-inf")
        self.shared_version = -1
        self.shared_at = float("-inf")
        self.shares = 0
