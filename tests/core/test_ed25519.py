"""The pure-Python Ed25519 fallback against RFC 8032's vectors and against ``cryptography``."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer_relay import ed25519, identity
from peer_relay.ed25519 import PureSigner
from peer_relay.identity import Identity, verify_ed25519

# RFC 8032, section 7.1: TEST 1, 2, 3 and SHA(abc). (secret, public, message, signature)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    sk, pk, msg, sig = (bytes.fromhex(x) for x in (secret, public, message, signature))
    assert ed25519.public_key(sk) == pk
    assert ed25519.sign(sk, msg) == sig
    assert ed25519.verify(pk, sig, msg)
    assert not ed25519.verify(pk, sig, msg + b"\x00")
    # cryptography agrees with the vectors as written here.
    assert Ed25519PrivateKey.from_private_bytes(sk).sign(msg) == sig


def test_random_keys_and_messages_agree_with_cryptography() -> None:
    rng = random.Random(8032)
    for _ in range(40):
        sk = rng.randbytes(32)
        msg = rng.randbytes(rng.randrange(0, 300))
        ref = Ed25519PrivateKey.from_private_bytes(sk)
        pk = ref.public_key().public_bytes_raw()
        signer = PureSigner(sk)
        assert signer.public_key == pk
        sig = signer.sign(msg)
        assert sig == ref.sign(msg)
        ref.public_key().verify(sig, msg)  # raises if cryptography disagrees
        assert ed25519.verify(pk, sig, msg)
        bad = bytearray(sig)
        bad[rng.randrange(64)] ^= 1 << rng.randrange(8)
        assert ed25519.verify(pk, bytes(bad), msg) is False
        assert verify_ed25519(pk, bytes(bad), msg) is False


def test_malformed_input_fails_without_raising() -> None:
    sk = os.urandom(32)
    pk = ed25519.public_key(sk)
    sig = ed25519.sign(sk, b"m")
    s = int.from_bytes(sig[32:], "little")
    # S + L verifies in the group but is refused (RFC 8032 requires S < L; so does OpenSSL).
    malleable = sig[:32] + (s + ed25519.L).to_bytes(32, "little")
    assert not ed25519.verify(pk, malleable, b"m")
    assert not verify_ed25519(pk, malleable, b"m")
    assert not ed25519.verify(pk[:31], sig, b"m")
    assert not ed25519.verify(pk, sig[:63], b"m")
    assert not ed25519.verify(b"\xff" * 32, sig, b"m")  # y >= p: no point
    not_on_curve = (2).to_bytes(32, "little")  # y = 2 has no x on the curve
    assert ed25519.decode(not_on_curve) is None
    assert not ed25519.verify(not_on_curve, sig, b"m")
    with pytest.raises(ValueError):
        ed25519.public_key(b"short")


@pytest.fixture
def without_cryptography(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(identity, "_HAVE_CRYPTOGRAPHY", False)
    yield


def test_identity_falls_back_when_cryptography_is_missing(without_cryptography: None) -> None:
    sk = os.urandom(32)
    ident = Identity(sk)
    assert isinstance(ident.signer, PureSigner)
    ref = Ed25519PrivateKey.from_private_bytes(sk)
    assert ident.public_key == ref.public_key().public_bytes_raw()
    assert ident.sign(b"x") == ref.sign(b"x")
    assert verify_ed25519(ident.public_key, ident.sign(b"x"), b"x")
    assert not verify_ed25519(ident.public_key, ident.sign(b"x"), b"y")
    # Small-order keys are refused by the fallback too.
    zero_key = bytes(32)
    assert not verify_ed25519(zero_key, bytes(64), b"x")
    identity_point = (1).to_bytes(32, "little")
    forged = identity_point + bytes(32)  # R = identity, S = 0: "valid" for the identity key
    assert ed25519.verify(identity_point, forged, b"anything")
    assert not verify_ed25519(identity_point, forged, b"anything")
