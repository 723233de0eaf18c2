"""The Noise Protocol Framework, revision 34 (https://noiseprotocol.org/noise.html), sans I/O.

Section 5's three objects as the spec defines them (``CipherState``, ``SymmetricState``,
``HandshakeState``) over the ``25519`` DH functions, the ``ChaChaPoly`` and ``AESGCM`` ciphers and
the ``SHA256``, ``SHA512``, ``BLAKE2s`` and ``BLAKE2b`` hashes. A generic engine runs any handshake
pattern written in the spec's notation; the one-way, fundamental and deferred patterns of
sections 7.4, 7.5 and 18.1 are built in, with the ``pskN`` modifiers of section 9. Every pattern
is checked against the validity rules of sections 7.3 and 9.3 when it is made.

The caller moves the bytes; this module does no I/O and imports nothing else of the package::

    alice = HandshakeState("Noise_XX_25519_ChaChaPoly_SHA256", True, s=KeyPair.generate())
    bob = HandshakeState("Noise_XX_25519_ChaChaPoly_SHA256", False, s=KeyPair.generate())
    bob.read_message(alice.write_message())
    alice.read_message(bob.write_message())
    bob.read_message(alice.write_message())
    to_bob, to_alice = alice.split()  # bob.split() gives the same pair of keys

Every failure is a ``NoiseError``. A handshake that fails (a message that does not decrypt, an
invalid public key, a malformed message) refuses all further use; a transport ``CipherState``
that fails to decrypt is left exactly as it was (section 5.1).

The DH and cipher functions come from ``cryptography`` when it can be imported, else (Pyodide,
in the browser) from the pure-Python :mod:`peer_relay.purecrypto`, which gives the same bytes
30 to 70 times more slowly in CPython (``benchmarks/session_crypto.py``).
``use_pure_python(True)`` forces the latter, for tests.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from typing import Protocol as Interface

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
except ImportError:  # Pyodide has no wheel of it: peer_relay.purecrypto stands in
    HAVE_CRYPTOGRAPHY = False
else:
    HAVE_CRYPTOGRAPHY = True

__all__ = [
    "AEAD",
    "CIPHERS",
    "DHLEN",
    "HASHES",
    "HAVE_CRYPTOGRAPHY",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "TAG_LEN",
    "CipherFunctions",
    "CipherState",
    "DecryptError",
    "HandshakePattern",
    "HandshakeState",
    "HashFunctions",
    "KeyPair",
    "NoiseError",
    "NonceExhaustedError",
    "Protocol",
    "SymmetricState",
    "backend",
    "use_pure_python",
]

MAX_MESSAGE_LEN = 65535  # section 3: every Noise message, handshake or transport
MAX_NONCE = 2**64 - 1  # section 5.1: reserved; a CipherState whose n reaches it stops
TAG_LEN = 16
DHLEN = 32  # the 25519 DH functions (section 12.1)
KEY_LEN = 32
PSK_LEN = 32

_T = TypeVar("_T")


class NoiseError(Exception):
    """Any failure of this module: bad arguments, bad state, failed decryption, spent nonces."""


class DecryptError(NoiseError):
    """A ciphertext failed authentication (the message is to be discarded, section 5)."""


class NonceExhaustedError(NoiseError):
    """A ``CipherState`` reached n = 2**64 - 1: the session must end (section 5)."""


# --- Backends: cryptography, or pure Python ----------------------------------------------------

_pure = not HAVE_CRYPTOGRAPHY
_invalid_tag: tuple[type[Exception], ...] = (InvalidTag,) if HAVE_CRYPTOGRAPHY else ()


def use_pure_python(enabled: bool = True) -> bool:
    """Choose the backend of the DH and cipher functions; returns the previous choice.

    ``True``: :mod:`peer_relay.purecrypto` (what a browser peer uses, as it has no
    ``cryptography``); ``False``: ``cryptography``, the default when it is installed. Only key
    pairs and cipher keys made afterwards change backend; both kinds work side by side, and
    produce the same bytes. Tests switch with ``previous = use_pure_python(); ...;
    use_pure_python(previous)``. ``False`` without ``cryptography`` raises ``NoiseError``.
    """
    global _pure
    if not enabled and not HAVE_CRYPTOGRAPHY:
        raise NoiseError("the cryptography package is not installed")
    if enabled:
        _load_pure_python()
    previous, _pure = _pure, enabled
    return previous


def backend() -> Literal["cryptography", "purecrypto"]:
    """The backend new key pairs and cipher keys use."""
    return "purecrypto" if _pure else "cryptography"


def _load_pure_python() -> None:
    global _invalid_tag
    from .purecrypto import InvalidTag as PureInvalidTag

    if PureInvalidTag not in _invalid_tag:
        _invalid_tag = (*_invalid_tag, PureInvalidTag)


if _pure:
    _load_pure_python()


# --- DH functions (sections 4.1, 12.1) ---------------------------------------------------------


class KeyPair:
    """A Curve25519 key pair: ``private`` and ``public`` are 32 bytes each."""

    __slots__ = ("_key", "private", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != DHLEN:
            raise NoiseError(f"a 25519 private key is {DHLEN} bytes, not {len(private)}")
        if _pure:
            self._set_pure(bytes(private))
        else:
            self._set(X25519PrivateKey.from_private_bytes(private))

    @classmethod
    def generate(cls) -> KeyPair:
        """``GENERATE_KEYPAIR()``: a fresh key pair from the operating system's generator."""
        pair = cls.__new__(cls)
        if _pure:
            from .purecrypto import generate_private_key

            pair._set_pure(generate_private_key())
        else:
            pair._set(X25519PrivateKey.generate())  # not via bytes: that derives public twice
        return pair

    def _set(self, key: X25519PrivateKey) -> None:
        self._key: X25519PrivateKey | None = key
        self.private = key.private_bytes_raw()
        self.public = key.public_key().public_bytes_raw()

    def _set_pure(self, private: bytes) -> None:
        from .purecrypto import x25519_base

        self._key = None  # the pure-Python backend needs only the bytes
        self.private = private
        self.public = x25519_base(private)

    def dh(self, public_key: bytes) -> bytes:
        """``DH(self, public_key)``: X25519 (RFC 7748).

        A public key giving an all-zero output raises ``NoiseError``: section 12.1 allows this
        in place of returning the zeros, and it is what OpenSSL (behind ``cryptography``) does.
        """
        if len(public_key) != DHLEN:
            raise NoiseError(f"a 25519 public key is {DHLEN} bytes, not {len(public_key)}")
        key = self._key
        try:
            if key is not None:
                return key.exchange(X25519PublicKey.from_public_bytes(public_key))
            from .purecrypto import x25519

            return x25519(self.private, public_key)
        except ValueError as exc:
            raise NoiseError("invalid 25519 public key (all-zero DH output)") from exc


# --- Cipher functions (sections 4.2, 12.3, 12.4) -----------------------------------------------


class AEAD(Interface):
    """An AEAD object of either backend (``cryptography``'s classes have this shape)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None, /) -> bytes:
        """The ciphertext of ``data`` with its tag appended."""
        ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None, /) -> bytes:
        """The plaintext of ``data``; the backend's ``InvalidTag`` if authentication fails."""
        ...


def _chachapoly(key: bytes) -> AEAD:
    """ChaCha20-Poly1305 under ``key``, from the backend in use."""
    if _pure:
        from .purecrypto import ChaCha20Poly1305 as PureChaCha20Poly1305

        return PureChaCha20Poly1305(key)
    return ChaCha20Poly1305(key)


def _aesgcm(key: bytes) -> AEAD:
    """AES-256-GCM under ``key``, from the backend in use."""
    if _pure:
        from .purecrypto import AESGCM as PureAESGCM

        return PureAESGCM(key)
    return AESGCM(key)


@dataclass(frozen=True)
class CipherFunctions:
    """``ENCRYPT``, ``DECRYPT`` and ``REKEY`` for one AEAD: 32-byte keys, 16-byte tags.

    The 96-bit nonce is four zero bytes then ``n`` in eight bytes of ``byteorder``.
    """

    name: str
    aead: Callable[[bytes], AEAD]
    byteorder: Literal["little", "big"]

    def nonce(self, n: int) -> bytes:
        """The AEAD nonce for the Noise nonce ``n``."""
        return b"\x00\x00\x00\x00" + n.to_bytes(8, self.byteorder)

    def encrypt(self, k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """``ENCRYPT(k, n, ad, plaintext)``: the ciphertext with its tag appended."""
        return self.aead(k).encrypt(self.nonce(n), plaintext, ad)

    def decrypt(self, k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """``DECRYPT(k, n, ad, ciphertext)``; ``DecryptError`` if authentication fails."""
        try:
            return self.aead(k).decrypt(self.nonce(n), ciphertext, ad)
        except _invalid_tag as exc:
            raise DecryptError("decryption failed") from exc

    def rekey(self, k: bytes) -> bytes:
        """``REKEY(k)``: the first 32 bytes of ``ENCRYPT(k, maxnonce, zerolen, zeros)``."""
        return self.encrypt(k, MAX_NONCE, b"", bytes(KEY_LEN))[:KEY_LEN]


CIPHERS: dict[str, CipherFunctions] = {
    "ChaChaPoly": CipherFunctions("ChaChaPoly", _chachapoly, "little"),
    "AESGCM": CipherFunctions("AESGCM", _aesgcm, "big"),
}


# --- Hash functions (sections 4.3, 12.5-12.8) --------------------------------------------------


@dataclass(frozen=True)
class HashFunctions:
    """``HASH``, ``HMAC-HASH`` and ``HKDF`` of section 4.3 for one hash function.

    ``hashlib_name`` names it to ``hashlib`` and ``hmac``, whose HMAC is RFC 2104's with the
    hash's own block size (``BLOCKLEN``).
    """

    name: str
    hashlen: int
    blocklen: int
    hashlib_name: str

    def hash(self, data: bytes) -> bytes:
        """``HASH(data)``: ``hashlen`` bytes."""
        return hashlib.new(self.hashlib_name, data).digest()

    def hmac_hash(self, key: bytes, data: bytes) -> bytes:
        """``HMAC-HASH(key, data)``."""
        return hmac.digest(key, data, self.hashlib_name)

    def hkdf(
        self, chaining_key: bytes, input_key_material: bytes, num_outputs: Literal[2, 3]
    ) -> tuple[bytes, ...]:
        """``HKDF(chaining_key, input_key_material, num_outputs)``: two or three outputs."""
        temp_key = self.hmac_hash(chaining_key, input_key_material)
        output1 = self.hmac_hash(temp_key, b"\x01")
        output2 = self.hmac_hash(temp_key, output1 + b"\x02")
        if num_outputs == 2:
            return output1, output2
        return output1, output2, self.hmac_hash(temp_key, output2 + b"\x03")


HASHES: dict[str, HashFunctions] = {
    "SHA256": HashFunctions("SHA256", 32, 64, "sha256"),
    "SHA512": HashFunctions("SHA512", 64, 128, "sha512"),
    "BLAKE2s": HashFunctions("BLAKE2s", 32, 64, "blake2s"),
    "BLAKE2b": HashFunctions("BLAKE2b", 64, 128, "blake2b"),
}


# --- Section 5.1: CipherState ------------------------------------------------------------------


class CipherState:
    """A cipher key ``k`` (possibly empty) and a nonce ``n`` (section 5.1).

    Promises: a nonce is never used twice under one key by this object; ``n`` advances only
    when encryption or decryption succeeds; once ``n`` reaches 2**64 - 1 every encryption and
    decryption raises ``NonceExhaustedError``; no ciphertext longer than ``MAX_MESSAGE_LEN`` is
    made or accepted.
    """

    __slots__ = ("_aead", "_cipher", "_k", "_n")

    def __init__(self, cipher: CipherFunctions, key: bytes | None = None) -> None:
        self._cipher = cipher
        self._k: bytes | None = None
        self._aead: AEAD | None = None
        self._n = 0
        self.initialize_key(key)

    @property
    def cipher(self) -> CipherFunctions:
        """The cipher functions this state uses."""
        return self._cipher

    @property
    def n(self) -> int:
        """The nonce the next encryption or decryption will use."""
        return self._n

    def initialize_key(self, key: bytes | None) -> None:
        """``InitializeKey(key)``: ``k = key`` (``None`` is empty), ``n = 0``."""
        if key is not None and len(key) != KEY_LEN:
            raise NoiseError(f"a cipher key is {KEY_LEN} bytes, not {len(key)}")
        self._k = key
        self._aead = None if key is None else self._cipher.aead(key)
        self._n = 0

    def has_key(self) -> bool:
        """``HasKey()``."""
        return self._k is not None

    def copy(self) -> CipherState:
        """An independent state with the same ``k`` and ``n``."""
        twin = CipherState.__new__(CipherState)
        twin._cipher, twin._k, twin._aead, twin._n = self._cipher, self._k, self._aead, self._n
        return twin

    @property
    def key(self) -> bytes:
        """``k``, for a transport of the caller's own over the keys of ``split()`` (one with
        explicit nonces for messages that arrive out of order, or longer than a Noise message)."""
        if self._k is None:
            raise NoiseError("this cipher state has no key")
        return self._k

    def set_nonce(self, nonce: int) -> None:
        """``SetNonce(nonce)``, for out-of-order transport messages (section 11.4)."""
        if not 0 <= nonce <= MAX_NONCE:
            raise NoiseError(f"a nonce is an unsigned 64-bit integer, not {nonce}")
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """``EncryptWithAd(ad, plaintext)``: ``plaintext`` itself while ``k`` is empty."""
        if self._aead is None:
            if len(plaintext) > MAX_MESSAGE_LEN:
                raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
            return plaintext
        if self._n >= MAX_NONCE:
            raise NonceExhaustedError("nonces exhausted: this session must end")
        if len(plaintext) > MAX_MESSAGE_LEN - TAG_LEN:
            raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        ciphertext = self._aead.encrypt(self._cipher.nonce(self._n), plaintext, ad)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """``DecryptWithAd(ad, ciphertext)``: on any failure ``n`` is left as it was."""
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        if self._aead is None:
            return ciphertext
        if self._n >= MAX_NONCE:
            raise NonceExhaustedError("nonces exhausted: this session must end")
        if len(ciphertext) < TAG_LEN:
            raise DecryptError("ciphertext shorter than its tag")
        try:
            plaintext = self._aead.decrypt(self._cipher.nonce(self._n), ciphertext, ad)
        except _invalid_tag as exc:
            raise DecryptError("decryption failed") from exc
        self._n += 1
        return plaintext

    def encrypt(self, plaintext: bytes) -> bytes:
        """A transport message: ``EncryptWithAd`` with zero-length associated data."""
        return self.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The payload of a transport message (``DecryptWithAd`` with zero-length ad)."""
        return self.decrypt_with_ad(b"", ciphertext)

    def rekey(self) -> None:
        """``Rekey()``: ``k = REKEY(k)``; ``n`` is kept (section 11.3)."""
        if self._k is None:
            raise NoiseError("rekey needs a key")
        n = self._n
        self.initialize_key(self._cipher.rekey(self._k))
        self._n = n


# --- Section 5.2: SymmetricState ---------------------------------------------------------------


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a ``CipherState`` (section 5.2)."""

    __slots__ = ("_hash", "cipher_state", "ck", "h")

    def __init__(self, protocol: Protocol) -> None:
        """``InitializeSymmetric(protocol_name)``."""
        self._hash = protocol.hash
        name = protocol.name.encode("ascii")
        hashlen = self._hash.hashlen
        self.h = name.ljust(hashlen, b"\x00") if len(name) <= hashlen else self._hash.hash(name)
        self.ck = self.h
        self.cipher_state = CipherState(protocol.cipher)

    def copy(self) -> SymmetricState:
        """An independent state with the same ``ck``, ``h`` and cipher state."""
        twin = SymmetricState.__new__(SymmetricState)
        twin._hash, twin.h, twin.ck = self._hash, self.h, self.ck
        twin.cipher_state = self.cipher_state.copy()
        return twin

    def _truncate(self, key: bytes) -> bytes:
        return key[:KEY_LEN]  # HASHLEN 64 -> 32-byte cipher key; a no-op for HASHLEN 32

    def mix_key(self, input_key_material: bytes) -> None:
        """``MixKey(input_key_material)``."""
        self.ck, temp_k = self._hash.hkdf(self.ck, input_key_material, 2)
        self.cipher_state.initialize_key(self._truncate(temp_k))

    def mix_hash(self, data: bytes) -> None:
        """``MixHash(data)``: ``h = HASH(h || data)``."""
        self.h = self._hash.hash(self.h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """``MixKeyAndHash(input_key_material)``, for pre-shared keys (section 9)."""
        self.ck, temp_h, temp_k = self._hash.hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(self._truncate(temp_k))

    def get_handshake_hash(self) -> bytes:
        """``GetHandshakeHash()``: ``h``."""
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """``EncryptAndHash(plaintext)``: encrypt with ``h`` as associated data, then hash."""
        ciphertext = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """``DecryptAndHash(ciphertext)``."""
        plaintext = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """``Split()``: (initiator-to-responder, responder-to-initiator) cipher states."""
        temp_k1, temp_k2 = self._hash.hkdf(self.ck, b"", 2)
        cipher = self.cipher_state.cipher
        return (
            CipherState(cipher, self._truncate(temp_k1)),
            CipherState(cipher, self._truncate(temp_k2)),
        )


# --- Section 7: handshake patterns -------------------------------------------------------------

DH_TOKENS = frozenset({"ee", "es", "se", "ss"})


@dataclass(frozen=True)
class HandshakePattern:
    """A handshake pattern (section 7.1) as token lists.

    ``messages[i]`` is sent by the initiator when ``i`` is even, by the responder when odd.
    DH tokens are in canonical form: their first letter is the initiator's key, the second the
    responder's. ``overheads[i]`` is the size of message ``i`` less its payload.
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    overheads: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_valid(self)
        object.__setattr__(self, "overheads", _overheads(self))

    @classmethod
    def parse(cls, name: str, notation: str) -> HandshakePattern:
        """A pattern from the spec's notation, e.g. ``"<- s ... -> e, es <- e, ee"`` for NK."""
        words = notation.replace(",", " ").split()
        lines: list[tuple[str, list[str]]] = []
        pre: list[tuple[str, list[str]]] = []
        for word in words:
            if word in ("->", "<-"):
                lines.append((word, []))
            elif word == "...":
                if pre or not lines:
                    raise NoiseError(f"{name}: misplaced '...'")
                pre, lines = lines, []
            elif lines:
                lines[-1][1].append(word)
            else:
                raise NoiseError(f"{name}: token {word!r} before any arrow")
        pre_arrows = [arrow for arrow, _ in pre]
        if pre_arrows not in ([], ["->"], ["<-"], ["->", "<-"]):
            raise NoiseError(f"{name}: pre-messages must be '-> ...', '<- ...', or both in order")
        pre_tokens = {arrow: tuple(tokens) for arrow, tokens in pre}
        for tokens in pre_tokens.values():
            if tokens not in (("e",), ("s",), ("e", "s")):
                raise NoiseError(f"{name}: a pre-message is 'e', 's' or 'e, s'")
        if not lines:
            raise NoiseError(f"{name}: no messages")
        for i, (arrow, _tokens) in enumerate(lines):
            if arrow != ("->" if i % 2 == 0 else "<-"):
                raise NoiseError(f"{name}: messages must alternate, starting with '->'")
        return cls(
            name,
            pre_tokens.get("->", ()),
            pre_tokens.get("<-", ()),
            tuple(tuple(tokens) for _, tokens in lines),
        )

    @property
    def one_way(self) -> bool:
        """A one-way pattern (section 7.4): one message, then only the initiator sends."""
        return len(self.messages) == 1

    @property
    def psk_count(self) -> int:
        """How many ``psk`` tokens the handshake has (a PSK handshake when nonzero)."""
        return sum(tokens.count("psk") for tokens in self.messages)

    def with_modifiers(self, modifiers: Sequence[str]) -> HandshakePattern:
        """The pattern with pattern modifiers applied (section 8.1); only ``pskN`` exist here.

        ``psk0`` puts a ``psk`` token at the start of the first message, ``pskN`` at the end of
        the Nth (section 9.4). Modifiers must be distinct and sorted, as the spec requires.
        """
        if list(modifiers) != sorted(set(modifiers)):
            raise NoiseError(f"{self.name}: modifiers must be distinct and sorted: {modifiers}")
        messages = [list(tokens) for tokens in self.messages]
        for modifier in modifiers:
            digits = modifier.removeprefix("psk")
            if digits == modifier or not digits.isdigit() or str(int(digits)) != digits:
                raise NoiseError(f"unsupported pattern modifier {modifier!r}")
            index = int(digits)
            if index > len(messages):
                raise NoiseError(f"{modifier} needs {index} messages; {self.name} has fewer")
            if index == 0:
                messages[0].insert(0, "psk")
            else:
                messages[index - 1].append("psk")
        return HandshakePattern(
            self.name + "+".join(modifiers),
            self.initiator_pre,
            self.responder_pre,
            tuple(tuple(tokens) for tokens in messages),
        )


def _check_valid(pattern: HandshakePattern) -> None:
    """Raise ``NoiseError`` unless ``pattern`` meets the rules of sections 7.3 and 9.3."""
    name = pattern.name
    sent = {True: set(pattern.initiator_pre), False: set(pattern.responder_pre)}
    dhs: set[str] = set()
    psk_mode = pattern.psk_count > 0
    keyed = psk_mode and "e" in sent[True] | sent[False]
    psk_seen = False

    def may_encrypt(initiator: bool, what: str) -> None:
        # Rule 4 of section 7.3 (canonical notation), then the PSK rule of section 9.3.
        if initiator:
            bad = ("se" in dhs and "ee" not in dhs) or ("ss" in dhs and "es" not in dhs)
        else:
            bad = ("es" in dhs and "ee" not in dhs) or ("ss" in dhs and "se" not in dhs)
        if bad:
            raise NoiseError(f"{name}: {what} would be encrypted without an ephemeral DH")
        if psk_seen and "e" not in sent[initiator]:
            raise NoiseError(f"{name}: {what} would be encrypted after psk before sending e")

    for i, tokens in enumerate(pattern.messages):
        sender = i % 2 == 0
        for token in tokens:
            if token in ("e", "s"):
                if token in sent[sender]:
                    raise NoiseError(f"{name}: {token!r} sent twice by one party")
                if token == "s" and keyed:
                    may_encrypt(sender, f"'s' in message {i}")
                sent[sender].add(token)
                keyed = keyed or (token == "e" and psk_mode)
            elif token in DH_TOKENS:
                if token in dhs:
                    raise NoiseError(f"{name}: {token!r} performed twice")
                if token[0] not in sent[True] or token[1] not in sent[False]:
                    raise NoiseError(f"{name}: {token!r} before both of its keys are known")
                dhs.add(token)
                keyed = True
            elif token == "psk":
                psk_seen = keyed = True
            else:
                raise NoiseError(f"{name}: unknown token {token!r}")
        if keyed:
            may_encrypt(sender, f"the payload of message {i}")
    may_encrypt(True, "transport data")
    if not pattern.one_way:
        may_encrypt(False, "transport data")


def _overheads(pattern: HandshakePattern) -> tuple[int, ...]:
    """For each message, its size less the payload: keys, and tags once a key is set."""
    psk_mode = pattern.psk_count > 0
    keyed = psk_mode and "e" in pattern.initiator_pre + pattern.responder_pre
    out = []
    for tokens in pattern.messages:
        size = 0
        for token in tokens:
            if token == "e":
                size += DHLEN
                keyed = keyed or psk_mode
            elif token == "s":
                size += DHLEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True
        out.append(size + (TAG_LEN if keyed else 0))
    return tuple(out)


_NOTATION = {
    # One-way patterns (section 7.4)
    "N": "<- s ... -> e, es",
    "K": "-> s <- s ... -> e, es, ss",
    "X": "<- s ... -> e, es, s, ss",
    # Fundamental interactive patterns (section 7.5)
    "NN": "-> e <- e, ee",
    "NK": "<- s ... -> e, es <- e, ee",
    "NX": "-> e <- e, ee, s, es",
    "KN": "-> s ... -> e <- e, ee, se",
    "KK": "-> s <- s ... -> e, es, ss <- e, ee, se",
    "KX": "-> s ... -> e <- e, ee, se, s, es",
    "XN": "-> e <- e, ee -> s, se",
    "XK": "<- s ... -> e, es <- e, ee -> s, se",
    "XX": "-> e <- e, ee, s, es -> s, se",
    "IN": "-> e, s <- e, ee, se",
    "IK": "<- s ... -> e, es, s, ss <- e, ee, se",
    "IX": "-> e, s <- e, ee, se, s, es",
    # Deferred patterns (section 18.1)
    "NK1": "<- s ... -> e <- e, ee, es",
    "NX1": "-> e <- e, ee, s -> es",
    "X1N": "-> e <- e, ee -> s <- se",
    "X1K": "<- s ... -> e, es <- e, ee -> s <- se",
    "XK1": "<- s ... -> e <- e, ee, es -> s, se",
    "X1K1": "<- s ... -> e <- e, ee, es -> s <- se",
    "X1X": "-> e <- e, ee, s, es -> s <- se",
    "XX1": "-> e <- e, ee, s -> es, s, se",
    "X1X1": "-> e <- e, ee, s -> es, s <- se",
    "K1N": "-> s ... -> e <- e, ee -> se",
    "K1K": "-> s <- s ... -> e, es <- e, ee -> se",
    "KK1": "-> s <- s ... -> e <- e, ee, se, es",
    "K1K1": "-> s <- s ... -> e <- e, ee, es -> se",
    "K1X": "-> s ... -> e <- e, ee, s, es -> se",
    "KX1": "-> s ... -> e <- e, ee, se, s -> es",
    "K1X1": "-> s ... -> e <- e, ee, s -> se, es",
    "I1N": "-> e, s <- e, ee -> se",
    "I1K": "<- s ... -> e, es, s <- e, ee -> se",
    "IK1": "<- s ... -> e, s <- e, ee, se, es",
    "I1K1": "<- s ... -> e, s <- e, ee, es -> se",
    "I1X": "-> e, s <- e, ee, s, es -> se",
    "IX1": "-> e, s <- e, ee, se, s -> es",
    "I1X1": "-> e, s <- e, ee, s -> se, es",
}

PATTERNS: dict[str, HandshakePattern] = {
    name: HandshakePattern.parse(name, notation) for name, notation in _NOTATION.items()
}


# --- Section 8: protocol names -----------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """A concrete Noise protocol: pattern (with modifiers), DH, cipher and hash functions."""

    name: str
    pattern: HandshakePattern
    dh: str
    cipher: CipherFunctions
    hash: HashFunctions

    @staticmethod
    def parse(name: str) -> Protocol:
        """The protocol a name such as ``"Noise_XXpsk3_25519_ChaChaPoly_SHA256"`` stands for."""
        return _parse_protocol(name)


@functools.lru_cache(maxsize=256)
def _parse_protocol(name: str) -> Protocol:
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise NoiseError(f"not a Noise protocol name: {name!r}")
    _, section, dh, cipher, hash_ = parts
    base_len = 0
    while base_len < len(section) and (section[base_len].isupper() or section[base_len].isdigit()):
        base_len += 1
    base, modifiers = section[:base_len], section[base_len:]
    if base not in PATTERNS:
        raise NoiseError(f"unknown handshake pattern {base!r} in {name!r}")
    pattern = PATTERNS[base]
    if modifiers:
        pattern = pattern.with_modifiers(modifiers.split("+"))
    if dh != "25519":
        raise NoiseError(f"unsupported DH functions {dh!r} (only 25519)")
    if cipher not in CIPHERS:
        raise NoiseError(f"unsupported cipher functions {cipher!r}")
    if hash_ not in HASHES:
        raise NoiseError(f"unsupported hash function {hash_!r}")
    return Protocol(name, pattern, dh, CIPHERS[cipher], HASHES[hash_])


# --- Section 5.3: HandshakeState ---------------------------------------------------------------


class HandshakeState:
    """One party's side of a handshake (section 5.3): ``Initialize`` is the constructor.

    ``s`` and ``e`` are local key pairs, ``rs`` and ``re`` the remote party's public keys: pass
    those the pattern's pre-messages call for, and ``s`` whenever the pattern uses this side's
    static key. ``psks`` are the 32-byte pre-shared keys in the order the handshake meets its
    ``psk`` tokens. ``ephemeral`` is the key pair the ``e`` token uses instead of a fresh one: it
    exists to reproduce test vectors, and reusing an ephemeral key forfeits the protocol's
    security.

    ``write_message`` and ``read_message`` alternate as the pattern says; after the last message
    ``complete`` is true and ``split()`` gives the transport cipher states. Any failure while
    writing or reading fails the handshake for good (section 5: "the ``HandshakeState`` is
    deleted"): every later call raises ``NoiseError``. Only a call out of turn, or a payload too
    long for a Noise message, is refused with the state left as it was.
    """

    __slots__ = (
        "_e",
        "_ephemeral",
        "_failed",
        "_handshake_hash",
        "_index",
        "_psks",
        "_re",
        "_rs",
        "_s",
        "_split",
        "_symmetric",
        "initiator",
        "protocol",
    )

    def __init__(
        self,
        protocol: Protocol | str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
        ephemeral: KeyPair | None = None,
    ) -> None:
        if isinstance(protocol, str):
            protocol = Protocol.parse(protocol)
        pattern = protocol.pattern
        own_pre, remote_pre = (
            (pattern.initiator_pre, pattern.responder_pre)
            if initiator
            else (pattern.responder_pre, pattern.initiator_pre)
        )
        own_sent = {t for tokens in pattern.messages[int(not initiator) :: 2] for t in tokens}
        if s is None and "s" in own_pre + tuple(own_sent):
            raise NoiseError(f"{pattern.name} needs this side's static key pair (s)")
        for value, key, pre in ((e, "e", own_pre), (rs, "rs", remote_pre), (re, "re", remote_pre)):
            needed = key[-1] in pre
            if needed and value is None:
                raise NoiseError(f"{pattern.name} needs {key} (a pre-message)")
            if not needed and value is not None:
                raise NoiseError(
                    f"{key} is only for a pre-message, and {pattern.name} has no such one"
                )
        for remote in (rs, re):
            if remote is not None and len(remote) != DHLEN:
                raise NoiseError(f"a 25519 public key is {DHLEN} bytes, not {len(remote)}")
        if len(psks) != pattern.psk_count:
            raise NoiseError(f"{pattern.name} takes {pattern.psk_count} psks, not {len(psks)}")
        if any(len(psk) != PSK_LEN for psk in psks):
            raise NoiseError(f"a psk is {PSK_LEN} bytes")

        self.protocol = protocol
        self.initiator = initiator
        self._s, self._e, self._rs, self._re = s, e, rs, re
        self._ephemeral = ephemeral
        self._psks = list(psks)
        self._index = 0
        self._failed = False
        self._split: tuple[CipherState, CipherState] | None = None
        self._handshake_hash = b""

        self._symmetric = SymmetricState(protocol)
        self._symmetric.mix_hash(prologue)
        for owner_is_initiator, tokens in (
            (True, pattern.initiator_pre),
            (False, pattern.responder_pre),
        ):
            mine = owner_is_initiator == initiator
            for token in tokens:
                if token == "e":
                    self._mix_e(_need(e, "e").public if mine else _need(re, "re"))
                else:
                    self._symmetric.mix_hash(_need(s, "s").public if mine else _need(rs, "rs"))

    @property
    def complete(self) -> bool:
        """Whether the last handshake message has been written or read."""
        return self._split is not None

    @property
    def remote_static(self) -> bytes | None:
        """The remote party's static public key, once known (``rs``)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """``h`` at the end of the handshake, for channel binding (section 11.2)."""
        if self._split is None:
            raise NoiseError("the handshake hash is only final once the handshake is complete")
        return self._handshake_hash

    def copy(self) -> HandshakeState:
        """An independent copy of this side of the handshake (key pairs are shared: they never
        change). A message from a network where others may write is read on a copy, so that
        one forged message does not fail the handshake for the genuine one behind it."""
        twin = HandshakeState.__new__(HandshakeState)
        for name in HandshakeState.__slots__:
            setattr(twin, name, getattr(self, name))
        twin._psks = list(self._psks)
        twin._symmetric = self._symmetric.copy()
        return twin

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport cipher states ``(c1, c2)``: initiator-to-responder, then back.

        The initiator encrypts with ``c1`` and decrypts with ``c2``, the responder the other
        way round. After a one-way pattern only ``c1`` is used (section 7.4).
        """
        if self._split is None:
            raise NoiseError("the handshake is not complete")
        return self._split

    def write_message(self, payload: bytes = b"") -> bytes:
        """``WriteMessage(payload)``: the next handshake message, which is this side's to send."""
        tokens = self._next_tokens(sending=True)
        if len(payload) > MAX_MESSAGE_LEN - self.protocol.pattern.overheads[self._index]:
            raise NoiseError(f"payload too long for a {MAX_MESSAGE_LEN}-byte Noise message")
        sym = self._symmetric
        out: list[bytes] = []
        try:
            for token in tokens:
                if token == "e":
                    e = self._ephemeral or KeyPair.generate()
                    self._e = e
                    out.append(e.public)
                    self._mix_e(e.public)
                elif token == "s":
                    out.append(sym.encrypt_and_hash(_need(self._s, "s").public))
                elif token == "psk":
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh(token))
            out.append(sym.encrypt_and_hash(payload))
        except NoiseError:
            self._fail()
            raise
        self._advance()
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        """``ReadMessage(message)``: the payload of the next handshake message, from the peer."""
        tokens = self._next_tokens(sending=False)
        sym = self._symmetric
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
            pos = 0
            for token in tokens:
                if token == "e":
                    self._re = _take(message, pos, DHLEN)
                    pos += DHLEN
                    self._mix_e(self._re)
                elif token == "s":
                    size = DHLEN + TAG_LEN if sym.cipher_state.has_key() else DHLEN
                    self._rs = sym.decrypt_and_hash(_take(message, pos, size))
                    pos += size
                elif token == "psk":
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh(token))
            payload = sym.decrypt_and_hash(message[pos:])
        except NoiseError:
            self._fail()
            raise
        self._advance()
        return payload

    def _next_tokens(self, sending: bool) -> tuple[str, ...]:
        if self._failed:
            raise NoiseError("this handshake has failed; start a new one")
        if self._split is not None:
            raise NoiseError("the handshake is complete; use the cipher states from split()")
        ours = (self._index % 2 == 0) == self.initiator
        if ours != sending:
            raise NoiseError("not this side's turn to " + ("send" if sending else "receive"))
        return self.protocol.pattern.messages[self._index]

    def _mix_e(self, public_key: bytes) -> None:
        self._symmetric.mix_hash(public_key)
        if self.protocol.pattern.psk_count:
            self._symmetric.mix_key(public_key)  # section 9.2: PSK handshakes only

    def _dh(self, token: str) -> bytes:
        local, remote = (token[0], token[1]) if self.initiator else (token[1], token[0])
        mine = self._e if local == "e" else self._s
        theirs = self._re if remote == "e" else self._rs
        return _need(mine, local).dh(_need(theirs, "r" + remote))

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self.protocol.pattern.messages):
            self._split = self._symmetric.split()
            self._handshake_hash = self._symmetric.get_handshake_hash()

    def _fail(self) -> None:
        self._failed = True
        self._e = self._ephemeral = None
        self._psks = []


def _need(value: _T | None, name: str) -> _T:
    if value is None:
        raise NoiseError(f"no {name} key where the pattern needs one")
    return value


def _take(message: bytes, pos: int, size: int) -> bytes:
    chunk = message[pos : pos + size]
    if len(chunk) != size:
        raise NoiseError("handshake message too short")
    return chunk
