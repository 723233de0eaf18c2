"""Keys and ids: an Ed25519 key pair per peer, and an id that is derived from its public key.

A peer's id is the first 20 bytes of SHA-256 of its raw 32-byte public key, so anyone holding the
public key can check that it belongs to an id. Signing and verification go through a small
interface (:class:`Signer` and :data:`Verifier`) so that another backend (the browser's WebCrypto,
say) can take the place of ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .ids import ID_BYTES

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class Signer(Protocol):
    """Something that holds a private Ed25519 key and signs with it."""

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        ...


Verifier = Callable[[bytes, bytes, bytes], bool]
"""``verify(public_key, signature, message) -> bool``; never raises on bad input."""


def id_for_key(public_key: bytes) -> bytes:
    """The peer id that belongs to a raw Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:ID_BYTES]


class _CryptographySigner:
    """:class:`Signer` backed by the ``cryptography`` package."""

    __slots__ = ("_key", "_public")

    def __init__(self, private_bytes: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self._public = self._key.public_key().public_bytes_raw()

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


# Encodings of the points of small order (with the sign bit cleared; libsodium's list). A public
# key of small order "verifies" signatures that need no private key (the identity point accepts
# R = identity, S = 0 for every message), so the id derived from it would belong to everyone.
_SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def is_weak_key(public_key: bytes) -> bool:
    """Whether ``public_key`` encodes a point of small order (such keys are refused)."""
    return public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER_KEYS


def _have_cryptography() -> bool:
    global _HAVE_CRYPTOGRAPHY
    if _HAVE_CRYPTOGRAPHY is None:
        try:
            import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
        except ImportError:
            _HAVE_CRYPTOGRAPHY = False
        else:
            _HAVE_CRYPTOGRAPHY = True
    return _HAVE_CRYPTOGRAPHY


_HAVE_CRYPTOGRAPHY: bool | None = None


def _default_signer(private_bytes: bytes) -> Signer:
    """``cryptography`` when it is installed, else the pure-Python :mod:`peer_relay.ed25519`."""
    if _have_cryptography():
        return _CryptographySigner(private_bytes)
    from .ed25519 import PureSigner

    return PureSigner(private_bytes)


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Check an Ed25519 signature (``cryptography``, else pure Python); malformed and weak keys
    simply fail."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    if is_weak_key(public_key):
        return False
    if not _have_cryptography():
        from . import ed25519

        return ed25519.verify(public_key, signature, message)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """A peer's key pair and the id derived from it."""

    __slots__ = ("_private", "id", "public_key", "signer")

    def __init__(self, private_bytes: bytes | None = None, *, signer: Signer | None = None) -> None:
        if signer is None:
            if private_bytes is None or len(private_bytes) != 32:
                raise ValueError("an Ed25519 private key is 32 bytes")
            signer = _default_signer(bytes(private_bytes))
        self._private = private_bytes
        self.signer: Signer = signer
        self.public_key: bytes = signer.public_key
        self.id: bytes = id_for_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity (from the operating system's random source)."""
        return cls(os.urandom(32))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, for saving."""
        if self._private is None:
            raise ValueError("this identity's key is held by its signer and cannot be exported")
        return self._private

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with this identity's key."""
        return self.signer.sign(message)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key saved at ``path``, or create one there (mode 0600) if it is missing.

        The file holds the private key as 64 hex digits and a newline. Raises ``ValueError``
        for a file that holds anything else, ``OSError`` for one that cannot be read or made.
        """
        file = Path(path)
        not_a_key = (
            f"{file} is not an identity file (one holds a private key as 64 hex digits): "
            "name another file, or move this one away to have a new key made there"
        )
        try:
            text = file.read_text().strip()
        except FileNotFoundError:
            identity = cls.generate()
            file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(identity.private_bytes().hex() + "\n")
            return identity
        except UnicodeDecodeError:
            raise ValueError(not_a_key) from None
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(not_a_key) from None
        if len(raw) != 32:
            raise ValueError(not_a_key)
        return cls(raw)

    def __repr__(self) -> str:
        return f"Identity(id={self.id.hex()})"
