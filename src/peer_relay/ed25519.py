"""Ed25519 (RFC 8032) in pure Python: the fallback where ``cryptography`` cannot be installed.

Used in the browser (Pyodide has no ``cryptography`` offline) and anywhere else it is missing.
Points are kept in extended coordinates (RFC 8032, section 5.1.4). Multiples of the base point
come from a table of ``j * 16**i * B`` built on first use, so signing costs 64 point additions;
verifying adds one variable-base multiplication (4-bit windows). It is not constant-time: fine
for verifying, and for signing with keys of a browser tab or a test, not for a long-lived
server key on a shared machine (``cryptography`` is used there whenever it is installed).

Verification is the cofactorless check of RFC 8032 (``encode([S]B - [k]A) == R``), with
``S < L``, as OpenSSL (behind ``cryptography``) does it.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
D2 = 2 * D % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, T = XY/Z
IDENTITY: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _double(p: Point) -> Point:
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return e * f % P, g * h % P, f * g % P, e * h % P


def _negate(p: Point) -> Point:
    x, y, z, t = p
    return -x % P, y, z, -t % P


def _multiply(k: int, p: Point) -> Point:
    """``k * p`` with 4-bit windows (variable base)."""
    table = [IDENTITY, p]
    for _ in range(14):
        table.append(_add(table[-1], p))
    result = IDENTITY
    for shift in range((k.bit_length() + 3) // 4 * 4 - 4, -4, -4):
        for _ in range(4):
            result = _double(result)
        window = (k >> shift) & 15
        if window:
            result = _add(result, table[window])
    return result


def _recover_x(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    return P - x if (x & 1) != sign else x


def encode(p: Point) -> bytes:
    """The 32-byte encoding of a point: y, with the sign of x in the top bit."""
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def decode(raw: bytes) -> Point | None:
    """The point a 32-byte encoding denotes, or None if it denotes none."""
    if len(raw) != 32:
        return None
    value = int.from_bytes(raw, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


_BY = 4 * pow(5, P - 2, P) % P
BASE: Point = (_recover_x(_BY, 0) or 0, _BY, 1, (_recover_x(_BY, 0) or 0) * _BY % P)
_base_table: list[list[Point]] = []


def base_multiply(k: int) -> Point:
    """``k * B`` for 0 <= k < 2**256, from the table of ``j * 16**i * B``."""
    if not _base_table:
        point = BASE
        for _ in range(64):
            row = [IDENTITY, point]
            for _ in range(14):
                row.append(_add(row[-1], point))
            _base_table.append(row)
            point = _add(row[-1], point)  # 16 * point
    result = IDENTITY
    for i in range(64):
        window = (k >> (4 * i)) & 15
        if window:
            result = _add(result, _base_table[i][window])
    return result


def _hash_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(secret: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(secret).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def public_key(secret: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private key (seed)."""
    if len(secret) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    return encode(base_multiply(_expand(secret)[0]))


def sign(secret: bytes, message: bytes, public: bytes | None = None) -> bytes:
    """The 64-byte signature of ``message`` (RFC 8032, section 5.1.6)."""
    scalar, prefix = _expand(secret)
    if public is None:
        public = encode(base_multiply(scalar))
    r = _hash_int(prefix, message) % L
    big_r = encode(base_multiply(r))
    k = _hash_int(big_r, public, message) % L
    s = (r + k * scalar) % L
    return big_r + s.to_bytes(32, "little")


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public``'s signature of ``message``; never raises."""
    if len(public) != 32 or len(signature) != 64:
        return False
    point = decode(public)
    s = int.from_bytes(signature[32:], "little")
    if point is None or s >= L:
        return False
    k = _hash_int(signature[:32], public, message) % L
    check = _add(base_multiply(s), _multiply(k, _negate(point)))
    return encode(check) == signature[:32]


class PureSigner:
    """A :class:`peer_relay.identity.Signer` on this module."""

    __slots__ = ("_public", "_secret")

    def __init__(self, private_bytes: bytes) -> None:
        self._secret = bytes(private_bytes)
        self._public = public_key(self._secret)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return sign(self._secret, message, self._public)
