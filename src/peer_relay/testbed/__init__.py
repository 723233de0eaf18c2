"""A testbed of real processes on an emulated network: hosts in Linux network namespaces,
joined by a userspace router that adds delay, jitter and loss and can partition them, some
behind NAT routers (cone-like or symmetric, nftables masquerade), with a coturn STUN/TURN
server. :class:`Testbed` builds and removes it (root only); see :mod:`peer_relay.testbed.net`.
"""

from .net import (
    HostSpec,
    Shape,
    Testbed,
    TestbedError,
    check_requirements,
    cleanup_stale,
)

__all__ = [
    "HostSpec",
    "Shape",
    "Testbed",
    "TestbedError",
    "check_requirements",
    "cleanup_stale",
]
