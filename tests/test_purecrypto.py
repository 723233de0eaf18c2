"""``peer_relay.purecrypto`` (the browser's X25519, ChaCha20-Poly1305 and AES-GCM), and the
pure-Python backend of ``peer_relay.noise``.

The RFC vectors fix the bytes; random inputs are checked against ``cryptography`` (OpenSSL); and
the published Noise vectors and the handshake and cipher-state tests of ``test_noise`` run again
with ``noise.use_pure_python(True)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers import aead as openssl
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from test_noise import VECTOR_FILES, VECTORS, run_vector
from test_noise import test_cipher_nonces_are_four_zero_bytes_then_n_little_or_big_endian as _nonces
from test_noise import test_dh_with_a_low_order_point_raises_noise_error as _low_order
from test_noise import test_invalid_remote_key_fails_the_handshake as _invalid_remote
from test_noise import test_nonces_beyond_2_64_minus_2_raise as _exhaustion
from test_noise import (
    test_rekey_is_the_first_32_bytes_of_encrypting_zeros_at_maxnonce as _rekey,
)

from peer_relay import noise, purecrypto
from peer_relay.purecrypto import (
    AESGCM,
    ChaCha20Poly1305,
    InvalidTag,
    chacha20_block,
    chacha20_encrypt,
    poly1305,
    x25519,
    x25519_base,
)

ROOT = Path(__file__).resolve().parents[1]
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
h = bytes.fromhex


# --- X25519 (RFC 7748) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scalar", "u", "out"),
    [  # section 5.2
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_x25519_rfc7748_section_5_2(scalar: str, u: str, out: str) -> None:
    assert x25519(h(scalar), h(u)) == h(out)


def test_x25519_rfc7748_iterated_once() -> None:
    # The 1000-iteration vector takes 1.5-4 s here, so only the first iteration is checked.
    k = u = (9).to_bytes(32, "little")
    k, u = x25519(k, u), k
    assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")


def test_x25519_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_public = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_public = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519_base(alice) == alice_public
    assert x25519_base(bob) == bob_public
    assert x25519(alice, bob_public) == x25519(bob, alice_public) == shared


@pytest.mark.parametrize(
    "u",
    [
        bytes(32),  # 0
        (1).to_bytes(32, "little"),  # order 1 (after the ladder: infinity)
        h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
        h("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
        (2**255 - 19).to_bytes(32, "little"),  # p, non-canonical 0
        (2**255 - 19 + 1).to_bytes(32, "little"),  # p + 1, non-canonical 1
    ],
)
def test_x25519_small_order_points_raise_like_openssl(u: bytes) -> None:
    private = os.urandom(32)
    with pytest.raises(ValueError):
        x25519(private, u)
    with pytest.raises(ValueError):
        X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(u))


def test_x25519_refuses_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        x25519(bytes(31), bytes(32))
    with pytest.raises(ValueError):
        x25519(bytes(32), bytes(33))


@settings(max_examples=25, deadline=None)
@given(private=st.binary(min_size=32, max_size=32), public=st.binary(min_size=32, max_size=32))
def test_x25519_matches_openssl(private: bytes, public: bytes) -> None:
    key = X25519PrivateKey.from_private_bytes(private)
    assert x25519_base(private) == key.public_key().public_bytes_raw()
    try:
        expected: bytes | None = key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        expected = None
    try:
        got: bytes | None = x25519(private, public)  # any u, the top bit set or not, >= p or not
    except ValueError:
        got = None
    assert got == expected


# --- ChaCha20, Poly1305, ChaCha20-Poly1305 (RFC 8439) ------------------------------------------


def test_chacha20_block_rfc8439_section_2_3_2() -> None:
    block = chacha20_block(bytes(range(32)), 1, h("000000090000004a00000000"))
    assert block == h(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


def test_chacha20_encryption_rfc8439_section_2_4_2() -> None:
    ciphertext = chacha20_encrypt(bytes(range(32)), 1, h("000000000000004a00000000"), SUNSCREEN)
    assert ciphertext == h(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
        "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
        "5af90bbf74a35be6b40b8eedf2785e42874d"
    )


def test_poly1305_rfc8439_section_2_5_2() -> None:
    key = h("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    assert poly1305(key, b"Cryptographic Forum Research Group") == h(
        "a8061dc1305136c6c22b8baf0c0127a9"
    )


def test_chacha20poly1305_rfc8439_section_2_8_2() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = h("070000004041424344454647")
    ad = h("50515253c0c1c2c3c4c5c6c7")
    expected = h(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691"  # the tag
    )
    aead = ChaCha20Poly1305(key)
    assert aead.encrypt(nonce, SUNSCREEN, ad) == expected
    assert aead.decrypt(nonce, expected, ad) == SUNSCREEN


@settings(max_examples=40, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(0, 2**32 - 5),
    nonce=st.binary(min_size=12, max_size=12),
    data=st.binary(max_size=300),
)
def test_chacha20_matches_openssl(key: bytes, counter: int, nonce: bytes, data: bytes) -> None:
    full_nonce = counter.to_bytes(4, "little") + nonce
    expected = Cipher(algorithms.ChaCha20(key, full_nonce), None).encryptor().update(data)
    assert chacha20_encrypt(key, counter, nonce, data) == expected


def test_chacha20_counter_must_not_wrap() -> None:
    with pytest.raises(ValueError):
        chacha20_encrypt(bytes(32), 2**32 - 1, bytes(12), bytes(65))


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_poly1305_matches_openssl(key: bytes, message: bytes) -> None:
    assert poly1305(key, message) == Poly1305.generate_tag(key, message)


# --- Both AEADs against OpenSSL; tampering -----------------------------------------------------

AEADS: dict[str, tuple[Any, Any, tuple[int, ...]]] = {
    "ChaCha20Poly1305": (ChaCha20Poly1305, openssl.ChaCha20Poly1305, (32,)),
    "AESGCM": (AESGCM, openssl.AESGCM, (16, 24, 32)),
}
SIZES = [0, 1, 15, 16, 17, 63, 64, 65, 100, 1024, 1025, 65535]


@pytest.mark.parametrize("name", sorted(AEADS))
@pytest.mark.parametrize("size", SIZES)
def test_aead_matches_openssl_at_block_edges(name: str, size: int) -> None:
    pure, reference, key_sizes = AEADS[name]
    for key_size in key_sizes:
        key, nonce, data = os.urandom(key_size), os.urandom(12), os.urandom(size)
        ad = os.urandom(size % 41)
        ciphertext = reference(key).encrypt(nonce, data, ad)
        assert pure(key).encrypt(nonce, data, ad) == ciphertext
        assert pure(key).decrypt(nonce, ciphertext, ad) == data
        assert pure(key).encrypt(nonce, data, None) == reference(key).encrypt(nonce, data, None)


@pytest.mark.parametrize("name", sorted(AEADS))
@settings(max_examples=30, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    data=st.binary(max_size=200),
    ad=st.binary(max_size=70),
)
def test_aead_matches_openssl(name: str, key: bytes, nonce: bytes, data: bytes, ad: bytes) -> None:
    pure, reference, _ = AEADS[name]
    ciphertext = reference(key).encrypt(nonce, data, ad)
    assert pure(key).encrypt(nonce, data, ad) == ciphertext
    assert pure(key).decrypt(nonce, ciphertext, ad) == data


@pytest.mark.parametrize("name", sorted(AEADS))
def test_tampering_anywhere_is_rejected(name: str) -> None:
    pure = AEADS[name][0]
    key, nonce, ad = os.urandom(32), os.urandom(12), b"header"
    aead = pure(key)
    ciphertext = aead.encrypt(nonce, b"x" * 40, ad)
    for i in range(len(ciphertext)):  # every byte of the ciphertext and of the tag
        for bit in (0x01, 0x80):
            forged = bytearray(ciphertext)
            forged[i] ^= bit
            with pytest.raises(InvalidTag):
                aead.decrypt(nonce, bytes(forged), ad)
    wrongs: list[Callable[[], object]] = [
        lambda: aead.decrypt(nonce, ciphertext, b"heades"),
        lambda: aead.decrypt(nonce, ciphertext, None),
        lambda: aead.decrypt(bytes(a ^ 1 for a in nonce), ciphertext, ad),
        lambda: pure(os.urandom(32)).decrypt(nonce, ciphertext, ad),
        lambda: aead.decrypt(nonce, ciphertext[:-1], ad),
        lambda: aead.decrypt(nonce, ciphertext[:15], ad),
        lambda: aead.decrypt(nonce, b"", ad),
    ]
    for wrong in wrongs:
        with pytest.raises(InvalidTag):
            wrong()
    assert aead.decrypt(nonce, ciphertext, ad) == b"x" * 40


@pytest.mark.parametrize("name", sorted(AEADS))
def test_bad_key_and_nonce_sizes_raise_value_error(name: str) -> None:
    pure = AEADS[name][0]
    with pytest.raises(ValueError):
        pure(bytes(31))
    for method in ("encrypt", "decrypt"):
        with pytest.raises(ValueError):
            getattr(pure(bytes(32)), method)(bytes(8), bytes(16), b"")


# --- The Noise backend -------------------------------------------------------------------------


@pytest.fixture
def pure_backend() -> Iterator[None]:
    previous = noise.use_pure_python(True)
    try:
        yield
    finally:
        noise.use_pure_python(previous)


def test_use_pure_python_switches_and_restores() -> None:
    assert noise.backend() == "cryptography"
    assert noise.use_pure_python(True) is False
    try:
        assert noise.backend() == "purecrypto"
        pair = noise.KeyPair(bytes(range(32)))
        aead = noise.CIPHERS["ChaChaPoly"].aead(bytes(32))
        assert isinstance(aead, ChaCha20Poly1305)
    finally:
        assert noise.use_pure_python(False) is True
    assert noise.backend() == "cryptography"
    openssl_pair = noise.KeyPair(bytes(range(32)))
    assert openssl_pair.public == pair.public
    other = noise.KeyPair.generate()
    assert pair.dh(other.public) == openssl_pair.dh(other.public)  # the backends side by side


@pytest.mark.parametrize("filename", VECTOR_FILES)
def test_published_noise_vectors_with_pure_python(filename: str, pure_backend: None) -> None:
    """Every pattern and both ciphers, with SHA256 (the hash does not touch the backend; the
    full set runs on ``cryptography`` in test_noise, and takes 20 s more here)."""
    vectors = [
        vector
        for vector in json.loads((VECTORS / filename).read_text())["vectors"]
        if vector["protocol_name"].endswith("_SHA256")
    ]
    assert len(vectors) > 25
    for vector in vectors:
        try:
            run_vector(vector)
        except (AssertionError, noise.NoiseError) as exc:
            raise AssertionError(vector["protocol_name"]) from exc


# The tests of test_noise that touch DH and cipher functions, again on the pure backend.
test_pure_cipher_nonces = pytest.mark.usefixtures("pure_backend")(_nonces)
test_pure_rekey = pytest.mark.usefixtures("pure_backend")(_rekey)
test_pure_low_order_dh = pytest.mark.usefixtures("pure_backend")(_low_order)
test_pure_nonce_exhaustion = pytest.mark.usefixtures("pure_backend")(_exhaustion)
test_pure_invalid_remote_key = pytest.mark.usefixtures("pure_backend")(_invalid_remote)


def test_noise_falls_back_when_cryptography_cannot_be_imported() -> None:
    """A fresh interpreter where ``import cryptography`` fails, as in Pyodide."""
    script = """
import sys
sys.modules["cryptography"] = None  # every import of it now raises ImportError
from peer_relay import noise
assert not noise.HAVE_CRYPTOGRAPHY and noise.backend() == "purecrypto"
name = "Noise_IK_25519_ChaChaPoly_SHA256"
bob = noise.KeyPair.generate()
alice = noise.HandshakeState(name, True, s=noise.KeyPair.generate(), rs=bob.public)
responder = noise.HandshakeState(name, False, s=bob)
assert responder.read_message(alice.write_message(b"hi")) == b"hi"
assert alice.read_message(responder.write_message(b"ho")) == b"ho"
(a_send, a_recv), (b_recv, b_send) = alice.split(), responder.split()
assert b_recv.decrypt(a_send.encrypt(b"data")) == b"data"
forged = bytearray(b_send.encrypt(b"x")); forged[0] ^= 1
try:
    a_recv.decrypt(bytes(forged))
except noise.DecryptError:
    pass
else:
    raise AssertionError("forgery accepted")
try:
    noise.use_pure_python(False)
except noise.NoiseError:
    pass
else:
    raise AssertionError("switched to a missing backend")
assert "cryptography" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_purecrypto_needs_only_the_standard_library() -> None:
    imported = set(purecrypto.__dict__)
    assert not {"cryptography", "peer_relay"} & imported
    source = Path(purecrypto.__file__).read_text()
    assert "import cryptography" not in source and "from cryptography" not in source
