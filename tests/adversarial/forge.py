"""Frames an attacker writes by hand: signed envelopes, forged and tampered ones, and junk.

Imported by the attacker script (run as ``python attacker.py``, this folder first on its path)
and by the tests (as ``adversarial.forge``); it depends on ``peer_relay`` and ``orjson`` only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from peer_relay import Identity, wire


def now_ms() -> int:
    """The wall clock in milliseconds, as an ``auth.ts``."""
    return int(time.time() * 1000)


def new_nonce() -> str:
    """A fresh message nonce."""
    return os.urandom(8).hex()


def auth_for(
    signer: Identity, to_hex: str, from_hex: str, nonce: str, data: bytes, ts: int
) -> dict[str, Any]:
    """The ``auth`` member ``signer`` writes for a message (``data`` in canonical form)."""
    sig = signer.sign(wire.signed_bytes(to_hex, from_hex, nonce, ts, data))
    return {"key": wire.b64encode(signer.public_key), "sig": wire.b64encode(sig), "ts": ts}


def signed(
    signer: Identity,
    to_hex: str,
    kind: str,
    payload: Any,
    *,
    sender_hex: str | None = None,
    key: bytes | None = None,
    nonce: str | None = None,
    ts: int | None = None,
    via_hex: str | None = None,
) -> bytes:
    """A message leaving its origin, signed by ``signer``.

    ``sender_hex`` (the ``from`` it claims) and ``key`` (the key its ``auth`` names) default to
    the signer's own: set them to forge a message in another peer's name. ``via_hex`` is the
    peer that hands it on (the last hop of its path): a peer checks that the last hop of what
    it gets is the peer it got it from, so an attacker handing on another's message names
    itself there.
    """
    from_hex = sender_hex or signer.id.hex()
    nonce = nonce or new_nonce()
    ts = now_ms() if ts is None else ts
    data = wire.canonical({"type": kind, "data": payload})
    auth = auth_for(signer, to_hex, from_hex, nonce, data, ts)
    if key is not None:
        auth["key"] = wire.b64encode(key)
    frame = wire.origin_frame(to_hex, from_hex, nonce, data, auth)
    if via_hex is not None and via_hex != from_hex:
        frame = wire.relay_frame(wire.parse_envelope(wire.loads_members(frame, 1 << 30)), via_hex)
    return frame


def tampered(frame: bytes) -> bytes:
    """``frame`` (a signed envelope) with one byte of its ``data`` changed, still valid JSON."""
    start = frame.index(b'"data":{') + len(b'"data":{')
    for index in range(start, len(frame)):
        byte = frame[index : index + 1]
        if byte.isalnum():
            swapped = b"Y" if byte != b"Y" else b"Z"
            return frame[:index] + swapped + frame[index + 1 :]
    raise ValueError("no byte of data to change")


def unsigned(
    to_hex: str, from_hex: str, kind: str, payload: Any, *, via_hex: str | None = None
) -> bytes:
    """A message without ``auth``, as a 0.0.2 peer sends it (handed on by ``via_hex``)."""
    data = wire.canonical({"type": kind, "data": payload})
    frame = wire.origin_frame(to_hex, from_hex, new_nonce(), data, None)
    if via_hex is not None and via_hex != from_hex:
        frame = wire.relay_frame(wire.parse_envelope(wire.loads_members(frame, 1 << 30)), via_hex)
    return frame


# ----------------------------------------------------------------------------- junk


def _floats(size: int) -> Any:
    pool = [1e300, 1.0, 0.000001, -2.5e-308, 123456.789, 0.1, -0.0, 5e-324, 1.7976931348623157e308]
    out: list[float] = []
    while len(out) * 9 < size:
        out.extend(pool)
    return out


def _deep(size: int) -> Any:
    def nest(depth: int) -> Any:
        value: Any = []
        for _ in range(depth):
            value = [value]
        return value

    one = nest(100)  # within the 128 levels a message may nest
    return [one] * max(1, size // 202)


def _keys(size: int) -> Any:
    stems = ["ключ", "clé", "键", "😀", "ü", "Ω", "x\u00e9"]
    return {f"{stems[i % len(stems)]}{i}": i for i in range(max(1, size // 12))}


def _bigints(size: int) -> Any:
    return [2**60 + 7919 * i for i in range(max(1, size // 20))]


def _strings(size: int) -> Any:
    unit = 'é\u0001"\\ \u2028😀 plain text '
    return unit * max(1, size // 40)


JUNK: dict[str, Callable[[int], Any]] = {
    "floats": _floats,
    "deep": _deep,
    "keys": _keys,
    "bigints": _bigints,
    "strings": _strings,
}
"""Shapes of junk data, each a function of the frame size (bytes) it should about fill."""


class JunkFrames:
    """Envelopes of one junk shape for ``to_hex``, with ``sender``'s real key in ``auth`` but a
    random signature: a destination must canonicalise the data before it can refuse it."""

    def __init__(self, sender: Identity, to_hex: str, shape: str, frame_bytes: int) -> None:
        self.from_hex = sender.id.hex()
        self.key = wire.b64encode(sender.public_key)
        self.to_hex = to_hex
        self.data = orjson.dumps({"type": "user", "data": JUNK[shape](frame_bytes)})

    def frame(self) -> bytes:
        """The next frame (a fresh nonce, timestamp and signature)."""
        head = orjson.dumps(
            {
                "to": self.to_hex,
                "from": self.from_hex,
                "path": [self.from_hex],
                "nonce": new_nonce(),
                "auth": {"key": self.key, "sig": wire.b64encode(os.urandom(64)), "ts": now_ms()},
            }
        )
        return head[:-1] + b',"data":' + self.data + b"}"
