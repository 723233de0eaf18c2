"""Peer ids: 160-bit values, their hex and Node Buffer-JSON forms, and XOR distance.

Two kinds of parsing live here. :func:`parse_id` is for the programmer and raises on anything that
is not an id. :func:`id_from_wire` is for the network and returns ``None`` instead, so that the
caller can drop the frame with a reason.
"""

from __future__ import annotations

from typing import Any

ID_BYTES = 20
"""Length of a peer id in bytes (160 bits, as in the original)."""

ID_HEX = 2 * ID_BYTES
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_WHAT_AN_ID_IS = f"a peer id is {ID_HEX} hex digits or {ID_BYTES} bytes"
"""What every error about a malformed id says first (the browser API says the same)."""


def parse_id(value: object) -> bytes:
    """Return ``value`` as a 20-byte id; accepts bytes-like, 40 hex digits or Buffer JSON.

    Raises ``TypeError`` (not an id's type) or ``ValueError`` (the wrong length or digits) with
    a message that says what an id must be.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != ID_BYTES:
            raise ValueError(f"{_WHAT_AN_ID_IS}, got {len(raw)} bytes")
        return raw
    if isinstance(value, str):
        if len(value) != ID_HEX or not _HEX_DIGITS.issuperset(value):
            shown = value if len(value) <= 64 else value[:61] + "..."
            raise ValueError(f"{_WHAT_AN_ID_IS}, got {shown!r} ({len(value)} characters)")
        return bytes.fromhex(value)
    if isinstance(value, dict):
        parsed = id_from_wire(value)
        if parsed is None:
            raise ValueError(f"{_WHAT_AN_ID_IS} (or their Buffer JSON), got malformed Buffer JSON")
        return parsed
    raise TypeError(f"{_WHAT_AN_ID_IS}, not {type(value).__name__}")


def id_from_wire(value: Any) -> bytes | None:
    """Return the id carried by a frame field (hex string or Buffer JSON), or ``None``."""
    if type(value) is str:
        if len(value) != ID_HEX:
            return None
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None
    if type(value) is dict and value.get("type") == "Buffer":
        data = value.get("data")
        if type(data) is not list or len(data) != ID_BYTES:
            return None
        if not all(type(b) is int and 0 <= b <= 255 for b in data):
            return None
        return bytes(data)
    return None


def hex_from_wire(value: Any) -> str | None:
    """Return a frame field's id as 40 lowercase hex digits, or ``None`` when malformed."""
    # Fast path for the common case: lowercase hex as our peers and 0.0.2 write it.
    if type(value) is str and len(value) == ID_HEX and (value.islower() or value.isdigit()):
        try:
            bytes.fromhex(value)
        except ValueError:
            return None
        return value
    raw = id_from_wire(value)
    return None if raw is None else raw.hex()


def buffer_json(peer_id: bytes) -> dict[str, Any]:
    """Node's ``JSON.stringify(buffer)`` form of an id: ``{"type": "Buffer", "data": [...]}``."""
    return {"type": "Buffer", "data": list(peer_id)}


def short(peer_id: bytes | str) -> str:
    """A short printable tag for logs."""
    text = peer_id if isinstance(peer_id, str) else peer_id.hex()
    return text[:8]


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: int, other: int) -> int:
    """Index of the k-bucket ``other`` falls in, seen from ``own``: 159 - common prefix length.

    Higher index means farther away. Equal ids have no bucket and give -1.
    """
    return (own ^ other).bit_length() - 1
