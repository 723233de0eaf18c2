"""The cryptography of sessions: a Noise IK handshake over keys derived from the peers' Ed25519
identities, and the AEAD of the messages that follow.

A peer's Noise static key is its Ed25519 key seen on the other curve (the birational map from
Edwards to Montgomery form, as libsodium's ``crypto_sign_ed25519_pk_to_curve25519``): anyone who
knows a peer's Ed25519 public key, whose hash is its id, knows its X25519 public key, and only
the holder of the Ed25519 private key holds the matching X25519 private key. So an IK handshake
binds both ends to their ids with no signature at all, and the initiator can encrypt its first
message to a peer whose key it has seen.

Two suites carry out the same protocol: :class:`NoiseSuite` (``peer_relay.noise``, over
``cryptography`` or its pure-Python fallback) and :class:`StandInSuite`, a cheap stand-in for the
simulator that keeps every message's size and every check of the protocol but no secrecy.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Protocol

from . import noise

PROTOCOL = "Noise_IK_25519_ChaChaPoly_SHA256"
"""The Noise protocol of every session."""
TAG = noise.TAG_LEN
KEY_BYTES = 32
_P = 2**255 - 19
_NONCE = struct.Struct("<IQ")


class SealError(Exception):
    """A handshake message or a ciphertext that failed: the message is to be dropped."""


def x25519_private_from_seed(seed: bytes) -> bytes:
    """The X25519 private key of an Ed25519 private key (its 32-byte seed): the clamped first
    half of SHA-512 of the seed, the scalar that Ed25519 itself signs with."""
    return hashlib.sha512(seed).digest()[:32]


def x25519_public_from_ed25519(public_key: bytes) -> bytes | None:
    """The X25519 public key (Montgomery u = (1 + y) / (1 - y)) of an Ed25519 public key, or
    None when it is not a valid encoding of a point other than the identity."""
    if len(public_key) != KEY_BYTES:
        return None
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        return None
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(KEY_BYTES, "little")


class Aead(Protocol):
    """One direction's key of a session: explicit 64-bit nonces, so that messages may arrive
    out of order."""

    def seal(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """The ciphertext (with its tag) of ``plaintext`` under nonce ``n``."""
        ...

    def open(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """The plaintext; ``SealError`` if it fails authentication."""
        ...


class Handshake(Protocol):
    """One side of an IK handshake (see :class:`noise.HandshakeState`)."""

    def write(self, payload: bytes) -> bytes:
        """The next handshake message, carrying ``payload``."""
        ...

    def read(self, message: bytes) -> bytes:
        """The payload of the remote's handshake message; ``SealError`` if it fails."""
        ...

    def remote_static(self) -> bytes | None:
        """The remote's X25519 public key, once known."""
        ...

    def keys(self) -> tuple[Aead, Aead]:
        """After the last message: this side's (sending, receiving) keys."""
        ...

    def copy(self) -> Handshake:
        """An independent copy, to read a message that may be forged without failing this one."""
        ...


class Suite(Protocol):
    """What sessions need of the cryptography."""

    name: str

    def initiator(self, prologue: bytes, remote_static: bytes) -> Handshake:
        """Our side of a new IK handshake to the peer whose X25519 key is ``remote_static``."""
        ...

    def responder(self, prologue: bytes) -> Handshake:
        """Our side of an IK handshake a peer starts."""
        ...

    def cost_of_opening(self) -> int:
        """Bytes of a first handshake message apart from its payload."""
        ...


# --- Noise ------------------------------------------------------------------------------------


class _NoiseAead:
    """ChaCha20-Poly1305 with Noise's nonce encoding: 4 zero bytes, ``n`` little-endian."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = noise.CIPHERS["ChaChaPoly"].aead(key)

    def seal(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(_NONCE.pack(0, n), plaintext, ad)

    def open(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(_NONCE.pack(0, n), ciphertext, ad)
        except Exception:  # the backend's InvalidTag, or a ciphertext shorter than its tag
            raise SealError("decryption failed") from None


class _NoiseHandshake:
    __slots__ = ("_state",)

    def __init__(self, state: noise.HandshakeState) -> None:
        self._state = state

    def write(self, payload: bytes) -> bytes:
        try:
            return self._state.write_message(payload)
        except noise.NoiseError as exc:
            raise SealError(str(exc)) from None

    def read(self, message: bytes) -> bytes:
        try:
            return self._state.read_message(message)
        except noise.NoiseError as exc:
            raise SealError(str(exc)) from None

    def remote_static(self) -> bytes | None:
        return self._state.remote_static

    def copy(self) -> Handshake:
        return _NoiseHandshake(self._state.copy())

    def keys(self) -> tuple[Aead, Aead]:
        c1, c2 = self._state.split()
        to_responder, to_initiator = _NoiseAead(c1.key), _NoiseAead(c2.key)
        if self._state.initiator:
            return to_responder, to_initiator
        return to_initiator, to_responder


class NoiseSuite:
    """The real thing: ``Noise_IK_25519_ChaChaPoly_SHA256`` with our static key."""

    name = PROTOCOL

    def __init__(self, seed: bytes) -> None:
        self._static = noise.KeyPair(x25519_private_from_seed(seed))
        self._protocol = noise.Protocol.parse(PROTOCOL)

    def initiator(self, prologue: bytes, remote_static: bytes) -> Handshake:
        return _NoiseHandshake(
            noise.HandshakeState(
                self._protocol, True, prologue=prologue, s=self._static, rs=remote_static
            )
        )

    def responder(self, prologue: bytes) -> Handshake:
        return _NoiseHandshake(
            noise.HandshakeState(self._protocol, False, prologue=prologue, s=self._static)
        )

    def cost_of_opening(self) -> int:
        return 2 * noise.DHLEN + 2 * TAG


# --- The simulator's stand-in -------------------------------------------------------------------


class _ClearAead:
    """No secrecy: the plaintext and a tag of zeros (a truncated or altered tag fails)."""

    __slots__ = ()

    def seal(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        return plaintext + bytes(TAG)

    def open(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < TAG or any(ciphertext[-TAG:]):
            raise SealError("decryption failed")
        return ciphertext[:-TAG]


_CLEAR = _ClearAead()


class _StandInHandshake:
    """IK's messages in size and order (e, s and tags as filler), with the initiator's static
    key carried in clear so that the responder's identity checks run as in the real thing."""

    __slots__ = ("_initiator", "_rng", "_rs", "_static", "_step")

    def __init__(self, static: bytes, rs: bytes | None, rng: random.Random) -> None:
        self._static = static
        self._rs = rs
        self._rng = rng
        self._initiator = rs is not None
        self._step = 0

    def write(self, payload: bytes) -> bytes:
        self._step += 1
        e = self._rng.randbytes(noise.DHLEN)
        if self._initiator:
            return e + self._static + bytes(TAG) + payload + bytes(TAG)
        return e + payload + bytes(TAG)

    def read(self, message: bytes) -> bytes:
        self._step += 1
        if self._initiator:
            body = message[noise.DHLEN :]
        else:
            self._rs = message[noise.DHLEN : 2 * noise.DHLEN]
            body = message[2 * noise.DHLEN + TAG :]
        if len(body) < TAG or any(body[-TAG:]):
            raise SealError("bad handshake message")
        return body[:-TAG]

    def remote_static(self) -> bytes | None:
        return self._rs

    def copy(self) -> Handshake:
        twin = _StandInHandshake(self._static, self._rs, self._rng)
        twin._initiator, twin._step = self._initiator, self._step
        return twin

    def keys(self) -> tuple[Aead, Aead]:
        return _CLEAR, _CLEAR


class StandInSuite:
    """The simulator's stand-in (``real_crypto`` off): the protocol without the cost."""

    name = "stand-in"

    def __init__(self, ed25519_public: bytes, rng: random.Random) -> None:
        static = x25519_public_from_ed25519(ed25519_public)
        assert static is not None
        self._static = static
        self._rng = rng

    def initiator(self, prologue: bytes, remote_static: bytes) -> Handshake:
        return _StandInHandshake(self._static, remote_static, self._rng)

    def responder(self, prologue: bytes) -> Handshake:
        return _StandInHandshake(self._static, None, self._rng)

    def cost_of_opening(self) -> int:
        return 2 * noise.DHLEN + 2 * TAG
