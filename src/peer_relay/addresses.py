"""The address a listening peer advertises when it binds every interface.

A server bound to ``0.0.0.0`` or ``::`` must tell others an address they can dial. The host's
name is no guide (Debian's /etc/hosts maps it to a loopback address), so the address comes from:

1. the interfaces (:func:`interface_addresses`): a global address first, then a private one;
   loopback and link-local addresses never;
2. when only loopback exists, what others tell us: the ``Host`` header a dialler used to reach
   us, and the address a peer we dialled saw us at (the ``X-Peer-Relay-Observed`` header of its
   upgrade response). Either is believed only once :data:`QUORUM` different addresses said the
   same, so that one liar cannot make us advertise an address of its choosing.

``public_url`` overrides all of this; it is the answer behind a reverse proxy or a port forward.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

OBSERVED_HEADER = "X-Peer-Relay-Observed"
"""Response header in which a listening peer tells a dialler the address it sees it at."""

QUORUM = 2
"""Different remote addresses that must report the same address before it is believed."""

MAX_CLAIMS = 64
"""Most claimed addresses remembered (each with the reporters seen), oldest go first."""

_log = logging.getLogger("peer_relay.node")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def interface_addresses() -> list[str]:
    """Every IP address of this host's interfaces, as text (empty when ``ifaddr`` fails)."""
    try:
        import ifaddr
    except ImportError:  # pragma: no cover - a dependency; kept for stripped installs
        return []
    found: list[str] = []
    try:
        adapters = ifaddr.get_adapters()
    except OSError:
        return []
    for adapter in adapters:
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.append(ip.ip)
            else:  # IPv6: (address, flowinfo, scope_id)
                found.append(ip.ip[0])
    return found


def _rank(address: Address) -> int | None:
    """How good ``address`` is to advertise: lower is better; None never."""
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    if address.is_multicast or address.is_reserved:
        return None
    family = 0 if address.version == 4 else 1
    return (0 if address.is_global else 2) + family


def best_address(candidates: Iterable[str], ipv6: bool = False) -> str | None:
    """The address to advertise among ``candidates``: global before private, and within
    each IPv4 before IPv6 (IPv6 only when ``ipv6``); None when none is fit (only loopback)."""
    best: tuple[int, int, str] | None = None
    for order, text in enumerate(candidates):
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if address.version == 6 and not ipv6:
            continue
        rank = _rank(address)
        if rank is None:
            continue
        if best is None or (rank, order) < best[:2]:
            best = (rank, order, str(address))
    return None if best is None else best[2]


def url_from_host_header(value: str | None) -> str | None:
    """The URL a dialler reached us at, from its ``Host`` header (``name``, ``1.2.3.4:80``,
    ``[2001:db8::1]:80``; no port means 80), or None when the header is malformed, too long,
    or names a loopback or link-local address."""
    if not value or len(value) > 255:
        return None
    value = value.strip()
    port_text = ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        host, port_text = value[1:end], value[end + 2 :]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host = value
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    else:
        port = 80
    if not host or host.lower() == "localhost" or any(c.isspace() or c in "/?#@[]" for c in host):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url_for(host.lower(), port)
    if _rank(address) is None:
        return None
    return url_for(str(address), port)


def url_from_observed(value: str | None, port: int) -> str | None:
    """The URL we would be at if a peer saw us at address ``value`` (our port kept), or None
    when ``value`` is not a fit IP address."""
    if not value or len(value) > 64:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    return None if _rank(address) is None else url_for(str(address), port)


def url_for(host: str, port: int) -> str:
    """``ws://host:port``, with an IPv6 address in brackets."""
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


class AddressLearner:
    """Chooses and, when it had to fall back to loopback, learns the advertised address."""

    def __init__(self, port: int, interfaces: Iterable[str], *, ipv6: bool = False) -> None:
        self.port = port
        self.interfaces = list(interfaces)
        chosen = best_address(self.interfaces, ipv6)
        self.fallback = chosen is None
        """Only loopback was found: the address may be learnt from others."""
        self.url = url_for(chosen or "127.0.0.1", port)
        """The URL to advertise now."""
        self.claims: dict[str, set[str]] = {}
        """Claimed URL -> the remote addresses that claimed it (bounded)."""

    def heard(self, claimed: str | None, reporter: str | None) -> str | None:
        """Note that ``reporter`` (a remote IP) says we are reachable at URL ``claimed``;
        returns the new URL when this made us adopt it, else None."""
        if claimed is None or reporter is None or not self.fallback:
            return None
        reporters = self.claims.get(claimed)
        if reporters is None:
            if len(self.claims) >= MAX_CLAIMS:
                del self.claims[next(iter(self.claims))]
            reporters = self.claims[claimed] = set()
        if len(reporters) < QUORUM:
            reporters.add(reporter)
        if len(reporters) < QUORUM:
            return None
        self.url = claimed
        self.fallback = False
        self.claims.clear()
        _log.info("learnt this host's address from its peers: advertising %s", self.url)
        return self.url

    def readout(self) -> dict[str, object]:
        """What the choice was made from, for ``PeerRelay.inspect()``."""
        return {
            "advertised": self.url,
            "interfaces": list(self.interfaces),
            "learning": self.fallback,
            "claims": {claimed: len(who) for claimed, who in self.claims.items()},
        }
