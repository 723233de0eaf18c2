"""The checks every WebRTC link applies to the remote's simple-peer signals, in one place.

Signals reach a link from the network (relayed and verified by the core, but written by the
remote), so nothing here raises on any input: a signal is either accepted, as the parts to apply
in order, or dropped with one reason from :data:`REASONS`. The aiortc link
(:mod:`peer_relay.transports.webrtc`) and the browser link (:mod:`peer_relay.browser.peer`) use
the same :class:`SignalFilter`, so the same fault is counted under the same reason on both.

The format is simple-peer's (6 and 9): a description is ``{"type": "offer"|"answer", "sdp"}``,
a candidate is ``{"candidate": {"candidate", "sdpMid", "sdpMLineIndex"}}`` with or without
``"type": "candidate"``; signals are told apart by their keys, never by ``type``.

Pure: no aiortc, no asyncio, no I/O (the browser build ships this module to Pyodide).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, cast

__all__ = [
    "MAX_CANDIDATE_CHARS",
    "MAX_REMOTE_CANDIDATES",
    "MAX_SDP_CHARS",
    "MAX_SIGNALS",
    "REASONS",
    "Candidate",
    "Description",
    "Remote",
    "SignalFilter",
    "is_mdns_host",
    "parse_candidate",
    "parse_description",
    "strip_mdns_candidates",
]

MAX_SDP_CHARS: Final = 64 * 1024
MAX_CANDIDATE_CHARS: Final = 1024
MAX_REMOTE_CANDIDATES: Final = 64
MAX_SIGNALS: Final = 256

#: Every reason a remote signal is dropped for.
REASONS: Final = (
    "closed",  # the link is closing
    "not-an-object",  # not a JSON object
    "too-many-signals",  # more than MAX_SIGNALS on one link
    "renegotiate",  # simple-peer 9 renegotiation: a data-only link never renegotiates
    "transceiverRequest",  # simple-peer 9 media request: a data-only link has no media
    "unknown-signal",  # neither "sdp" nor "candidate"
    "bad-sdp",  # "sdp" not a non-empty string
    "sdp-too-long",  # "sdp" longer than MAX_SDP_CHARS
    "bad-description-type",  # "type" of a description neither "offer" nor "answer"
    "unexpected-offer",  # an offer to the initiator
    "unexpected-answer",  # an answer to the answerer
    "duplicate-description",  # a second description (no renegotiation)
    "bad-candidate",  # a candidate that is not a well-formed udp/tcp candidate
    "empty-candidate",  # "" (some browsers' end-of-candidates marker)
    "bad-candidate-mid",  # neither a string sdpMid nor an integer sdpMLineIndex
    "mdns-candidate",  # a .local host, where the link cannot resolve mDNS
    "too-many-candidates",  # more than MAX_REMOTE_CANDIDATES trickled on one link
)


@dataclass(frozen=True, slots=True)
class Description:
    """A remote session description to apply."""

    type: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A remote ICE candidate to apply.

    ``line`` is as the remote sent it (what a browser's ``addIceCandidate`` takes); ``sdp`` is
    the same without its ``a=`` / ``candidate:`` prefix (what aiortc's ``candidate_from_sdp``
    takes).
    """

    line: str
    sdp: str
    sdp_mid: str | None
    sdp_mline_index: int | None


Remote = Description | Candidate


def is_mdns_host(host: str) -> bool:
    """Whether a candidate's address is an mDNS name (``*.local``)."""
    return host.lower().rstrip(".").endswith(".local")


def strip_mdns_candidates(sdp: str) -> tuple[str, int]:
    """``sdp`` without its ``a=candidate`` lines on mDNS names, and how many were removed."""
    kept: list[str] = []
    removed = 0
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            bits = line.split()
            if len(bits) > 4 and is_mdns_host(bits[4]):
                removed += 1
                continue
        kept.append(line)
    return "".join(kept), removed


def parse_description(signal: Mapping[str, object]) -> Description | str:
    """The description in ``signal`` (which has an ``"sdp"`` key), or why it is dropped."""
    sdp, kind = signal.get("sdp"), signal.get("type")
    if not isinstance(sdp, str) or not sdp:
        return "bad-sdp"
    if len(sdp) > MAX_SDP_CHARS:
        return "sdp-too-long"
    if kind != "offer" and kind != "answer":
        return "bad-description-type"
    return Description(type=kind, sdp=sdp)


def parse_candidate(value: object, *, allow_mdns: bool = False) -> Candidate | str:
    """The candidate in ``value`` (a signal's ``"candidate"`` entry), or why it is dropped.

    A candidate line is accepted only if aiortc's ``candidate_from_sdp`` parses it: at least 8
    fields, decimal component (1-256), priority and port (1-65535), protocol udp or tcp, and an
    IP address (or, with ``allow_mdns``, an mDNS name) as its address.
    """
    if not isinstance(value, Mapping):
        return "bad-candidate"
    line, mid, index = value.get("candidate"), value.get("sdpMid"), value.get("sdpMLineIndex")
    if not isinstance(line, str):
        return "bad-candidate"
    if not line:
        return "empty-candidate"
    if len(line) > MAX_CANDIDATE_CHARS:
        return "bad-candidate"
    if mid is not None and not isinstance(mid, str):
        return "bad-candidate-mid"
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        return "bad-candidate-mid"
    if mid is None and index is None:
        return "bad-candidate-mid"
    sdp = line[2:] if line.startswith("a=") else line
    if sdp.startswith("candidate:"):
        sdp = sdp[len("candidate:") :]
    bits = sdp.split()
    if len(bits) < 8:
        return "bad-candidate"
    if is_mdns_host(bits[4]):
        if not allow_mdns:
            return "mdns-candidate"
    elif not _is_ip(bits[4]):
        return "bad-candidate"
    numbers = [bits[1], bits[3], bits[5]]
    numbers += [bits[i + 1] for i in range(8, len(bits) - 1, 2) if bits[i] == "rport"]
    if not all(n.isascii() and n.isdigit() for n in numbers):
        return "bad-candidate"
    component, port = int(bits[1]), int(bits[5])
    if not (0 < port < 65536 and 0 < component < 257):
        return "bad-candidate"
    if bits[2].lower() not in ("udp", "tcp"):
        return "bad-candidate"
    return Candidate(line=line, sdp=sdp, sdp_mid=mid, sdp_mline_index=index)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SignalFilter:
    """Checks the remote signals of one WebRTC link, in arrival order.

    It holds what the checks need to remember (how many signals and candidates came, whether a
    description did, whether the link is closing), so that a link only applies what it returns.
    """

    __slots__ = (
        "_allow_mdns",
        "_candidates",
        "_closed",
        "_described",
        "_initiator",
        "_max_candidates",
        "_max_signals",
        "_signals",
    )

    def __init__(
        self,
        initiator: bool,
        *,
        allow_mdns: bool = False,
        max_signals: int = MAX_SIGNALS,
        max_candidates: int = MAX_REMOTE_CANDIDATES,
    ) -> None:
        self._initiator = initiator
        self._allow_mdns = allow_mdns
        self._max_signals = max_signals
        self._max_candidates = max_candidates
        self._signals = 0
        self._candidates = 0
        self._described = False
        self._closed = False

    def close(self) -> None:
        """The link is closing: every later signal is dropped as ``"closed"``."""
        self._closed = True

    def check(self, signal: object) -> tuple[Remote, ...] | str:
        """The parts of ``signal`` to apply, in order, or the reason (from :data:`REASONS`) it
        is dropped. A signal is taken or dropped whole; this never raises."""
        if self._closed:
            return "closed"
        if not isinstance(signal, Mapping):
            return "not-an-object"
        self._signals += 1
        if self._signals > self._max_signals:
            return "too-many-signals"
        kind = signal.get("type")
        if "renegotiate" in signal or kind == "renegotiate":
            return "renegotiate"
        if "transceiverRequest" in signal or kind == "transceiverRequest":
            return "transceiverRequest"
        has_sdp, has_candidate = "sdp" in signal, "candidate" in signal
        if not has_sdp and not has_candidate:
            return "unknown-signal"
        parts: list[Remote] = []
        if has_sdp:
            description = parse_description(signal)
            if isinstance(description, str):
                return description
            if (description.type == "offer") == self._initiator:
                return f"unexpected-{description.type}"
            if self._described:
                return "duplicate-description"
            parts.append(description)
        if has_candidate:
            candidate = parse_candidate(signal["candidate"], allow_mdns=self._allow_mdns)
            if isinstance(candidate, str):
                return candidate
            if self._candidates >= self._max_candidates:
                return "too-many-candidates"
            self._candidates += 1
            parts.append(candidate)
        if has_sdp:
            self._described = True
        return tuple(parts)


ICE_SCHEMES: Final = ("stun:", "stuns:", "turn:", "turns:")


def check_ice_servers(
    servers: object, username: str | None, credential: str | None
) -> tuple[str, ...]:
    """The ICE server URLs of a peer's settings, checked the same in Python and in the page:
    a list of ``stun:``/``turn:`` URLs, and TURN credentials given together and only with a
    TURN server. Raises ``TypeError``/``ValueError`` saying what to fix."""
    if isinstance(servers, (str, bytes)):
        raise TypeError("ice_servers must be a list of URLs, not one string: wrap it in [...]")
    try:
        urls = tuple(cast("Iterable[object]", servers))
    except TypeError:
        raise TypeError(f"ice_servers must be a list of URLs, got {servers!r}") from None
    checked: list[str] = []
    for url in urls:
        if type(url) is not str or not url.startswith(ICE_SCHEMES) or len(url) > 512:
            raise ValueError(f"ICE server URL must start with stun: or turn:, got {url!r}")
        checked.append(url)
    if (username is None) != (credential is None):
        raise ValueError("give ice_username and ice_credential together (TURN credentials)")
    has_turn = any(url.startswith(("turn:", "turns:")) for url in checked)
    if username is not None and not has_turn:
        raise ValueError("ice_username and ice_credential are for a turn: server; none is given")
    if has_turn and username is None:
        raise ValueError("a turn: server needs ice_username and ice_credential")
    return tuple(checked)
