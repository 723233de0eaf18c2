"""peer-relay: deliver a message to any peer, named only by its id, through a network of peers."""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .core import Config, Stats
from .errors import DeliveryError, RemoteError
from .identity import Identity
from .ids import ID_BYTES, parse_id

if TYPE_CHECKING:
    from .node import Message, PeerId, PeerRelay
    from .socket import (
        FAMILY,
        UDP_MAX_PAYLOAD,
        DatagramMux,
        DatagramTooLargeError,
        RelayDatagramTransport,
        Socket,
        SocketClosedError,
        create_datagram_endpoint,
        datagram_mux,
        is_datagram,
        max_datagram_size,
    )

# The asyncio node and the Socket API need ``picows``; they are imported on first use, so
# that ``import peer_relay`` (the core, ids, identity) also works where that is missing (Pyodide).
_LAZY = {
    **dict.fromkeys(("Message", "PeerId", "PeerRelay"), "node"),
    **dict.fromkeys(
        (
            "FAMILY",
            "UDP_MAX_PAYLOAD",
            "DatagramMux",
            "DatagramTooLargeError",
            "RelayDatagramTransport",
            "Socket",
            "SocketClosedError",
            "create_datagram_endpoint",
            "datagram_mux",
            "is_datagram",
            "max_datagram_size",
        ),
        "socket",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

logging.getLogger("peer_relay").addHandler(logging.NullHandler())

__all__ = [
    "FAMILY",
    "ID_BYTES",
    "UDP_MAX_PAYLOAD",
    "Config",
    "DatagramMux",
    "DatagramTooLargeError",
    "DeliveryError",
    "Identity",
    "Message",
    "PeerId",
    "PeerRelay",
    "RelayDatagramTransport",
    "RemoteError",
    "Socket",
    "SocketClosedError",
    "Stats",
    "__version__",
    "create_datagram_endpoint",
    "datagram_mux",
    "is_datagram",
    "max_datagram_size",
    "parse_id",
]
