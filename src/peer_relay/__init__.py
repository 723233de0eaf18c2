"""peer-relay: deliver a message to any peer, named only by its id, through a network of peers."""

import logging

from .core import Config, Stats
from .identity import Identity
from .ids import ID_BYTES, parse_id
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

__version__ = "0.1.0"

logging.getLogger("peer_relay").addHandler(logging.NullHandler())

__all__ = [
    "FAMILY",
    "ID_BYTES",
    "UDP_MAX_PAYLOAD",
    "Config",
    "DatagramMux",
    "DatagramTooLargeError",
    "Identity",
    "Message",
    "PeerId",
    "PeerRelay",
    "RelayDatagramTransport",
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
