"""X25519, ChaCha20-Poly1305 and AES-GCM in pure Python, for where ``cryptography`` is missing.

Pyodide (the browser peer) has no ``cryptography`` wheel, and the browser's WebCrypto answers only
through Promises, which a synchronous core cannot wait for; so :mod:`peer_relay.noise` falls back
to this module there. It needs the standard library only.

- :func:`x25519` and :func:`x25519_base`: RFC 7748 (a Montgomery ladder on Python ints);
- :class:`ChaCha20Poly1305`: RFC 8439's AEAD;
- :class:`AESGCM`: NIST SP 800-38D with 96-bit nonces (AES-128, -192 or -256);

the AEAD classes have the call shape of ``cryptography.hazmat.primitives.ciphers.aead``'s: a
failed authentication raises :class:`InvalidTag`, bad key or nonce sizes ``ValueError``.

Speed comes from computing many blocks at once in one big Python int ("SIMD within a register"):

- ChaCha20: the 4x4 state is four row vectors; every 32-bit word of every block sits in its
  own 64-bit lane of a row's int, so one ``+``, ``^``, shift or mask works on all columns of all
  blocks (the diagonal round rotates lanes). The Poly1305 key block rides along as block 0.
- AES: every byte of every block sits in its own byte of one int; SubBytes is one
  ``bytes.translate``, ShiftRows and MixColumns are shifts and masks.

Not constant-time: CPython's ints and the table lookups of GHASH leak timing. The tag checks
use :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct

__all__ = [
    "AESGCM",
    "ChaCha20Poly1305",
    "InvalidTag",
    "chacha20_block",
    "chacha20_encrypt",
    "generate_private_key",
    "poly1305",
    "x25519",
    "x25519_base",
]


class InvalidTag(Exception):
    """The ciphertext, nonce or associated data do not match the tag."""


# --- X25519 (RFC 7748) -------------------------------------------------------------------------

_P = 2**255 - 19
_A24 = 121665
_BASE = (9).to_bytes(32, "little")


def _ladder(k: int, u: int) -> int:
    """The u-coordinate of k * (u, ...) with the Montgomery ladder of RFC 7748, section 5."""
    p = _P
    x1, x2, z2, x3, z3 = u, 1, 0, u, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        if swap != bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
            swap = bit
        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        s = da + cb
        x3 = s * s % p
        s = da - cb
        z3 = x1 * (s * s % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + _A24 * e) % p
    if swap:
        x2, z2 = x3, z3
    z2 %= p
    if z2 == 0:
        return 0  # the point at infinity: the all-zero output
    return x2 * pow(z2, -1, p) % p  # much faster than z2 ** (p - 2) in CPython


def x25519(private: bytes, public: bytes) -> bytes:
    """``X25519(k, u)``: the shared secret of a 32-byte private key and a 32-byte public key.

    The scalar is clamped and the top bit of ``u`` ignored, as RFC 7748 says; an all-zero
    result (a public key of small order) raises ``ValueError``, as OpenSSL does.
    """
    if len(private) != 32 or len(public) != 32:
        raise ValueError("X25519 keys are 32 bytes")
    k = int.from_bytes(private, "little")
    k = (k & ~7 & ((1 << 255) - 1)) | (1 << 254)
    u = (int.from_bytes(public, "little") & ((1 << 255) - 1)) % _P
    out = _ladder(k, u)
    if out == 0:
        raise ValueError("X25519: all-zero shared secret (public key of small order)")
    return out.to_bytes(32, "little")


def x25519_base(private: bytes) -> bytes:
    """The public key of a 32-byte private key: ``X25519(k, 9)``."""
    return x25519(private, _BASE)


def generate_private_key() -> bytes:
    """32 random bytes from the operating system: an X25519 private key."""
    return os.urandom(32)


# --- ChaCha20 (RFC 8439, section 2.3) -----------------------------------------------------------

_SIGMA_ROW = struct.pack("<4Q", 0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_MAX_CHACHA_COUNTER = 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def _chacha_masks(blocks: int) -> tuple[int, int, int, int, int, int, int, int]:
    """For ``blocks`` blocks: the 32-bit lane mask, the lane-rotation masks and counter ramp."""
    word, zero = b"\xff\xff\xff\xff\x00\x00\x00\x00", bytes(8)

    def rows(pattern: bytes) -> int:
        return int.from_bytes(pattern * blocks, "little")

    ramp = int.from_bytes(b"".join(struct.pack("<Q24x", j) for j in range(blocks)), "little")
    return (
        rows(word * 4),
        rows(word * 3 + zero),  # lanes 0-2
        rows(zero * 3 + word),  # lane 3
        rows(word * 2 + zero * 2),  # lanes 0-1
        rows(zero * 2 + word * 2),  # lanes 2-3
        rows(word + zero * 3),  # lane 0
        rows(zero + word * 3),  # lanes 1-3
        ramp,  # j in the first lane of block j
    )


def _chacha20_stream(key_rows: tuple[bytes, bytes], counter: int, nonce: bytes, n: int) -> bytes:
    """``n`` blocks of ChaCha20 keystream from block ``counter`` on, all computed at once.

    ``key_rows`` are the key's two state rows, each word in a 64-bit lane (``struct`` ``<4Q``).
    """
    if counter + n - 1 > _MAX_CHACHA_COUNTER:
        raise ValueError("ChaCha20: the 32-bit block counter would wrap")
    m, low3, high1, low2, high2, low1, high3, ramp = _chacha_masks(n)
    n0, n1, n2 = struct.unpack("<3I", nonce)
    a0 = a = int.from_bytes(_SIGMA_ROW * n, "little")
    b0 = b = int.from_bytes(key_rows[0] * n, "little")
    c0 = c = int.from_bytes(key_rows[1] * n, "little")
    d0 = d = int.from_bytes(struct.pack("<4Q", counter, n0, n1, n2) * n, "little") + ramp
    for _ in range(10):
        # column round: the four quarter rounds of every block at once
        a = (a + b) & m
        d ^= a
        d = ((d << 16) | (d >> 16)) & m
        c = (c + d) & m
        b ^= c
        b = ((b << 12) | (b >> 20)) & m
        a = (a + b) & m
        d ^= a
        d = ((d << 8) | (d >> 24)) & m
        c = (c + d) & m
        b ^= c
        b = ((b << 7) | (b >> 25)) & m
        # diagonal round: rotate rows b, c, d by 1, 2, 3 lanes so that diagonals line up
        b = ((b >> 64) & low3) | ((b << 192) & high1)
        c = ((c >> 128) & low2) | ((c << 128) & high2)
        d = ((d >> 192) & low1) | ((d << 64) & high3)
        a = (a + b) & m
        d ^= a
        d = ((d << 16) | (d >> 16)) & m
        c = (c + d) & m
        b ^= c
        b = ((b << 12) | (b >> 20)) & m
        a = (a + b) & m
        d ^= a
        d = ((d << 8) | (d >> 24)) & m
        c = (c + d) & m
        b ^= c
        b = ((b << 7) | (b >> 25)) & m
        b = ((b >> 192) & low1) | ((b << 64) & high3)
        c = ((c >> 128) & low2) | ((c << 128) & high2)
        d = ((d >> 64) & low3) | ((d << 192) & high1)
    out = bytearray(64 * n)
    words = memoryview(out).cast("I")
    size = 32 * n
    for r, (row, row0) in enumerate(((a, a0), (b, b0), (c, c0), (d, d0))):
        lanes = memoryview(((row + row0) & m).to_bytes(size, "little")).cast("I")
        # lane i of block j is 32-bit word 8j + 2i here, word 16j + 4r + i of the keystream
        words[4 * r :: 16] = lanes[0::8]
        words[4 * r + 1 :: 16] = lanes[2::8]
        words[4 * r + 2 :: 16] = lanes[4::8]
        words[4 * r + 3 :: 16] = lanes[6::8]
    return bytes(out)


def _key_rows(key: bytes) -> tuple[bytes, bytes]:
    words = struct.unpack("<8I", key)
    return struct.pack("<4Q", *words[:4]), struct.pack("<4Q", *words[4:])


def _xor(data: bytes, stream: bytes) -> bytes:
    """``data`` XOR the first ``len(data)`` bytes of ``stream``."""
    size = len(data)
    x = int.from_bytes(data, "little") ^ int.from_bytes(stream[:size], "little")
    return x.to_bytes(size, "little")


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """The 64-byte ChaCha20 block function (RFC 8439, section 2.3)."""
    _check_chacha(key, nonce)
    return _chacha20_stream(_key_rows(key), counter, nonce, 1)


def chacha20_encrypt(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """ChaCha20 encryption (and decryption) from block ``counter`` on (RFC 8439, 2.4)."""
    _check_chacha(key, nonce)
    blocks = (len(data) + 63) // 64
    if not blocks:
        return b""
    return _xor(data, _chacha20_stream(_key_rows(key), counter, nonce, blocks))


def _check_chacha(key: bytes, nonce: bytes) -> None:
    if len(key) != 32:
        raise ValueError("ChaCha20 keys are 32 bytes")
    if len(nonce) != 12:
        raise ValueError("ChaCha20 nonces are 12 bytes")


# --- Poly1305 (RFC 8439, section 2.5) ----------------------------------------------------------

_P1305 = 2**130 - 5
_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_2_128 = 1 << 128


def poly1305(key: bytes, message: bytes) -> bytes:
    """The 16-byte Poly1305 tag of ``message`` under a 32-byte one-time key."""
    if len(key) != 32:
        raise ValueError("Poly1305 keys are 32 bytes")
    full = len(message) - len(message) % 16
    acc = _poly1305_blocks(int.from_bytes(key[:16], "little") & _CLAMP, message[:full])
    if full != len(message):
        block = int.from_bytes(message[full:] + b"\x01", "little")
        acc = (acc + block) * (int.from_bytes(key[:16], "little") & _CLAMP) % _P1305
    return _poly1305_finish(acc, key)


def _poly1305_blocks(r: int, padded: bytes) -> int:
    """The accumulator after the 16-byte blocks of ``padded`` (a multiple of 16 bytes long)."""
    acc = 0
    p = _P1305
    top = _2_128
    from_bytes = int.from_bytes
    for i in range(0, len(padded), 16):
        acc = (acc + from_bytes(padded[i : i + 16], "little") + top) * r % p
    return acc


def _poly1305_finish(acc: int, key: bytes) -> bytes:
    tag = (acc + int.from_bytes(key[16:32], "little")) & (_2_128 - 1)
    return tag.to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return bytes(-len(data) % 16)


# --- ChaCha20-Poly1305 (RFC 8439, section 2.8) --------------------------------------------------


class ChaCha20Poly1305:
    """The AEAD of RFC 8439: 32-byte key, 12-byte nonce, 16-byte tag appended to the ciphertext."""

    __slots__ = ("_rows",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("ChaCha20Poly1305 key must be 32 bytes.")
        self._rows = _key_rows(bytes(key))

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The ciphertext of ``data`` followed by its tag."""
        if len(nonce) != 12:
            raise ValueError("Nonce must be 12 bytes")
        ad = b"" if associated_data is None else bytes(associated_data)
        stream = _chacha20_stream(self._rows, 0, nonce, 1 + (len(data) + 63) // 64)
        ciphertext = _xor(data, stream[64:])
        return ciphertext + self._tag(stream, ad, ciphertext)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The plaintext of ``data`` (ciphertext and tag); ``InvalidTag`` if it does not match."""
        if len(nonce) != 12:
            raise ValueError("Nonce must be 12 bytes")
        if len(data) < 16:
            raise InvalidTag
        ad = b"" if associated_data is None else bytes(associated_data)
        ciphertext, tag = bytes(data[:-16]), data[-16:]
        stream = _chacha20_stream(self._rows, 0, nonce, 1 + (len(ciphertext) + 63) // 64)
        if not hmac.compare_digest(self._tag(stream, ad, ciphertext), tag):
            raise InvalidTag
        return _xor(ciphertext, stream[64:])

    @staticmethod
    def _tag(stream: bytes, ad: bytes, ciphertext: bytes) -> bytes:
        mac_data = b"".join(
            (
                ad,
                _pad16(ad),
                ciphertext,
                _pad16(ciphertext),
                struct.pack("<QQ", len(ad), len(ciphertext)),
            )
        )
        acc = _poly1305_blocks(int.from_bytes(stream[:16], "little") & _CLAMP, mac_data)
        return _poly1305_finish(acc, stream[:32])


# --- AES (FIPS 197), many blocks at once ------------------------------------------------------


def _make_sbox() -> bytes:
    """The AES S-box: the inverse in GF(2^8) (0 for 0), then the affine map."""
    exp, log = [0] * 510, [0] * 256
    x = 1
    for i in range(255):
        exp[i] = exp[i + 255] = x
        log[x] = i
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)  # times 3, a generator
    box = bytearray(256)
    for value in range(256):
        inv = exp[255 - log[value]] if value else 0
        s = inv
        for shift in range(1, 5):
            s ^= ((inv << shift) | (inv >> (8 - shift))) & 0xFF
        box[value] = s ^ 0x63
    return bytes(box)


_SBOX = _make_sbox()


def _expand_key(key: bytes) -> list[bytes]:
    """The AES round keys (FIPS 197, section 5.2), 16 bytes each."""
    nk = len(key) // 4
    rounds = nk + 6
    words = [key[4 * i : 4 * i + 4] for i in range(nk)]
    rcon = 1
    for i in range(nk, 4 * (rounds + 1)):
        temp = words[-1]
        if i % nk == 0:
            temp = (temp[1:] + temp[:1]).translate(_SBOX)
            temp = bytes((temp[0] ^ rcon,)) + temp[1:]
            rcon = (rcon << 1) ^ (0x11B if rcon & 0x80 else 0)
        elif nk > 6 and i % nk == 4:
            temp = temp.translate(_SBOX)
        words.append(bytes(x ^ y for x, y in zip(words[i - nk], temp, strict=True)))
    return [b"".join(words[4 * r : 4 * r + 4]) for r in range(rounds + 1)]


def _byte_mask(positions: tuple[int, ...], value: int = 0xFF) -> bytes:
    return bytes(value if i in positions else 0 for i in range(16))


# Byte 4c + r of a block is row r, column c of the state; ShiftRows moves it by -4r bytes
# (mod 16 within its block). Each pattern is 16 bytes, repeated once per block.
_SHIFT_ROWS = (
    _byte_mask((0, 4, 8, 12)),
    _byte_mask((1, 5, 9)),  # >> 32
    _byte_mask((13,)),  # << 96
    _byte_mask((2, 6)),  # >> 64
    _byte_mask((10, 14)),  # << 64
    _byte_mask((3,)),  # >> 96
    _byte_mask((7, 11, 15)),  # << 32
)
_MIX_COLUMNS = (
    b"\xff\xff\xff\x00" * 4,
    b"\x00\x00\x00\xff" * 4,
    b"\xff\xff\x00\x00" * 4,
    b"\x00\x00\xff\xff" * 4,
    b"\x7f" * 16,
    b"\x01" * 16,
)


@functools.lru_cache(maxsize=64)
def _aes_masks(blocks: int) -> tuple[int, ...]:
    return tuple(int.from_bytes(p * blocks, "little") for p in _SHIFT_ROWS + _MIX_COLUMNS)


def _aes_encrypt_blocks(round_keys: list[bytes], data: bytes) -> bytes:
    """AES encryption of every 16-byte block of ``data`` (ECB), all blocks at once."""
    size = len(data)
    n = size // 16
    r0, r1a, r1b, r2a, r2b, r3a, r3b, m3, m1, m2, m2h, m7f, m01 = _aes_masks(n)
    from_bytes = int.from_bytes
    sbox = _SBOX
    x = from_bytes(data, "little") ^ from_bytes(round_keys[0] * n, "little")
    last = len(round_keys) - 1
    for i in range(1, last + 1):
        # SubBytes, then ShiftRows
        x = from_bytes(x.to_bytes(size, "little").translate(sbox), "little")
        x = (
            (x & r0)
            | ((x >> 32) & r1a)
            | ((x << 96) & r1b)
            | ((x >> 64) & r2a)
            | ((x << 64) & r2b)
            | ((x >> 96) & r3a)
            | ((x << 32) & r3b)
        )
        if i != last:
            # MixColumns: out_r = a_r ^ (a_0 ^ a_1 ^ a_2 ^ a_3) ^ xtime(a_r ^ a_r+1)
            u = x ^ (((x >> 8) & m3) | ((x << 24) & m1))
            t = u ^ (((u >> 16) & m2) | ((u << 16) & m2h))
            x ^= t ^ ((u & m7f) << 1) ^ (((u >> 7) & m01) * 0x1B)
        x ^= from_bytes(round_keys[i] * n, "little")
    return x.to_bytes(size, "little")


# --- AES-GCM (NIST SP 800-38D) -----------------------------------------------------------------

_GCM_R = 0xE1 << 120


def _ghash_tables(h: int) -> list[list[int]]:
    """For each byte position k of a block, ``table[k][b]`` = (b at byte k) * H in GF(2^128).

    A block is a big-endian int whose top bit is the coefficient of x^0 (the GCM convention).
    """
    powers = []  # H * x^j
    v = h
    for _ in range(128):
        powers.append(v)
        v = (v >> 1) ^ _GCM_R if v & 1 else v >> 1
    tables = []
    for k in range(16):
        table = [0] * 256
        for t in range(8):
            bit, value = 1 << t, powers[8 * k + 7 - t]
            for low in range(bit):
                table[bit | low] = table[low] ^ value
        tables.append(table)
    return tables


class AESGCM:
    """AES-GCM with a 16-, 24- or 32-byte key and a 12-byte nonce; 16-byte tags."""

    __slots__ = ("_h_tables", "_round_keys")

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("AESGCM key must be 128, 192, or 256 bits.")
        self._round_keys = _expand_key(bytes(key))
        h = int.from_bytes(_aes_encrypt_blocks(self._round_keys, bytes(16)), "big")
        self._h_tables = _ghash_tables(h)

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The ciphertext of ``data`` followed by its tag."""
        ad = b"" if associated_data is None else bytes(associated_data)
        stream = self._stream(nonce, len(data))
        ciphertext = _xor(data, stream[16:])
        return ciphertext + self._tag(stream, ad, ciphertext)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The plaintext of ``data`` (ciphertext and tag); ``InvalidTag`` if it does not match."""
        if len(nonce) != 12:
            raise ValueError("only 12-byte nonces are supported")
        if len(data) < 16:
            raise InvalidTag
        ad = b"" if associated_data is None else bytes(associated_data)
        ciphertext, tag = bytes(data[:-16]), data[-16:]
        stream = self._stream(nonce, len(ciphertext))
        if not hmac.compare_digest(self._tag(stream, ad, ciphertext), tag):
            raise InvalidTag
        return _xor(ciphertext, stream[16:])

    def _stream(self, nonce: bytes, size: int) -> bytes:
        """E(K, J0) then the CTR keystream for ``size`` bytes (counters 1, 2, ... after nonce)."""
        if len(nonce) != 12:
            raise ValueError("only 12-byte nonces are supported")
        blocks = 1 + (size + 15) // 16
        if blocks > 0xFFFFFFFF:
            raise ValueError("AES-GCM: message too long")
        counters = b"".join([nonce + i.to_bytes(4, "big") for i in range(1, blocks + 1)])
        return _aes_encrypt_blocks(self._round_keys, counters)

    def _tag(self, stream: bytes, ad: bytes, ciphertext: bytes) -> bytes:
        t = self._h_tables
        t0, t1, t2, t3, t4, t5, t6, t7 = t[:8]
        t8, t9, t10, t11, t12, t13, t14, t15 = t[8:]
        data = b"".join(
            (
                ad,
                _pad16(ad),
                ciphertext,
                _pad16(ciphertext),
                struct.pack(">QQ", 8 * len(ad), 8 * len(ciphertext)),
            )
        )
        from_bytes = int.from_bytes
        y = 0
        for i in range(0, len(data), 16):
            b = (y ^ from_bytes(data[i : i + 16], "big")).to_bytes(16, "big")
            y = (
                t0[b[0]]
                ^ t1[b[1]]
                ^ t2[b[2]]
                ^ t3[b[3]]
                ^ t4[b[4]]
                ^ t5[b[5]]
                ^ t6[b[6]]
                ^ t7[b[7]]
                ^ t8[b[8]]
                ^ t9[b[9]]
                ^ t10[b[10]]
                ^ t11[b[11]]
                ^ t12[b[12]]
                ^ t13[b[13]]
                ^ t14[b[14]]
                ^ t15[b[15]]
            )
        return (y ^ from_bytes(stream[:16], "big")).to_bytes(16, "big")
