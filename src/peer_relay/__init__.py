"""peer-relay: deliver a message to any peer, named only by its id, through a network of peers."""

import logging

from .core import Config, Stats
from .identity import Identity
from .ids import ID_BYTES, parse_id
from .node import Message, PeerId, PeerRelay

__version__ = "0.1.0"

logging.getLogger("peer_relay").addHandler(logging.NullHandler())

__all__ = [
    "ID_BYTES",
    "Config",
    "Identity",
    "Message",
    "PeerId",
    "PeerRelay",
    "Stats",
    "__version__",
    "parse_id",
]
