"""peer-relay: deliver a message to any peer, named only by its id, through a network of peers."""

from .core import Config, Stats
from .identity import Identity
from .ids import ID_BYTES, parse_id

__version__ = "0.1.0"

__all__ = ["ID_BYTES", "Config", "Identity", "Stats", "__version__", "parse_id"]
