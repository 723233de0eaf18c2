"""``peer_relay.noise`` against the published Noise test vectors, and its failure behaviour.

The vectors (see ``tests/vectors/noise/README.md``) fix every byte of both parties' handshake
messages, the handshake hash and the transport messages after ``split()``; the other tests check
what the vectors cannot: tampering, nonce exhaustion, rekey, argument and pattern checks.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from peer_relay import noise
from peer_relay.noise import (
    CIPHERS,
    HASHES,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    PATTERNS,
    CipherState,
    DecryptError,
    HandshakePattern,
    HandshakeState,
    KeyPair,
    NoiseError,
    NonceExhaustedError,
    Protocol,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "noise"
VECTOR_FILES = ["cacophony-25519.txt", "snow-multipsk.txt"]


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _keypair(value: str | None) -> KeyPair | None:
    return None if value is None else KeyPair(bytes.fromhex(value))


def _party(vector: dict[str, Any], side: str, protocol: Protocol) -> HandshakeState:
    return HandshakeState(
        protocol,
        side == "init",
        prologue=bytes.fromhex(vector[f"{side}_prologue"]),
        s=_keypair(vector.get(f"{side}_static")),
        rs=_hex(vector.get(f"{side}_remote_static")),
        psks=[bytes.fromhex(p) for p in vector.get(f"{side}_psks", [])],
        ephemeral=_keypair(vector.get(f"{side}_ephemeral")),
    )


def uses_static(pattern: HandshakePattern, initiator: bool) -> bool:
    """Whether the pattern makes the other side know this side's static key."""
    pre = pattern.initiator_pre if initiator else pattern.responder_pre
    sent = pattern.messages[int(not initiator) :: 2]
    return "s" in pre or any("s" in tokens for tokens in sent)


def run_vector(vector: dict[str, Any]) -> None:
    """Both parties of one vector: every message byte for byte, both ways, then transport."""
    protocol = Protocol.parse(vector["protocol_name"])
    init, resp = _party(vector, "init", protocol), _party(vector, "resp", protocol)
    messages = vector["messages"]
    count = len(protocol.pattern.messages)
    assert len(messages) > count
    for i, message in enumerate(messages[:count]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        assert sender.write_message(payload) == expected, f"handshake message {i}"
        assert receiver.read_message(expected) == payload, f"handshake message {i} read"
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    for side, other in (("init", resp), ("resp", init)):
        static = _keypair(vector.get(f"{side}_static"))
        if uses_static(protocol.pattern, side == "init"):
            assert static is not None and other.remote_static == static.public
    init_send, init_recv = init.split()
    resp_recv, resp_send = resp.split()
    for i, message in enumerate(messages[count:], start=count):
        from_init = protocol.pattern.one_way or i % 2 == 0
        encrypting, decrypting = (init_send, resp_recv) if from_init else (resp_send, init_recv)
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        assert encrypting.encrypt(payload) == expected, f"transport message {i}"
        assert decrypting.decrypt(expected) == payload, f"transport message {i} read"


@pytest.mark.parametrize("filename", VECTOR_FILES)
def test_published_vectors(filename: str, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = json.loads((VECTORS / filename).read_text())["vectors"]
    failures = []
    for vector in vectors:
        try:
            run_vector(vector)
        except (AssertionError, NoiseError) as exc:
            failures.append(f"{vector['protocol_name']}: {exc!r}")
    with capsys.disabled():
        print(f"\n{filename}: {len(vectors) - len(failures)}/{len(vectors)} vectors passed")
    assert not failures, "\n".join(failures[:20])
    assert len(vectors) > 100


def test_the_vectors_cover_every_pattern_cipher_and_hash() -> None:
    names = [
        v["protocol_name"]
        for filename in VECTOR_FILES
        for v in json.loads((VECTORS / filename).read_text())["vectors"]
    ]
    sections = [name.split("_") for name in names]
    assert {s[1] for s in sections} >= set(PATTERNS)
    assert {s[1] for s in sections if "psk" in s[1]}  # single and combined psk modifiers
    assert {(s[3], s[4]) for s in sections} == {(c, h) for c in CIPHERS for h in HASHES}
    assert {s[2] for s in sections} == {"25519"}


# --- Primitives as section 4 defines them -------------------------------------------------------


def test_hmac_block_size_is_the_spec_blocklen() -> None:
    for h in HASHES.values():
        digest = hashlib.new(h.hashlib_name)
        assert (digest.digest_size, digest.block_size) == (h.hashlen, h.blocklen), h.name


@pytest.mark.parametrize("name", ["SHA256", "SHA512"])
def test_hkdf_is_rfc5869_with_the_chaining_key_as_salt(name: str) -> None:
    h = HASHES[name]
    algorithm = hashes.SHA256() if name == "SHA256" else hashes.SHA512()
    ck, ikm = os.urandom(h.hashlen), os.urandom(32)
    three = HKDF(algorithm, 3 * h.hashlen, salt=ck, info=b"").derive(ikm)
    assert b"".join(h.hkdf(ck, ikm, 3)) == three
    assert b"".join(h.hkdf(ck, b"", 2)) == HKDF(algorithm, 2 * h.hashlen, ck, b"").derive(b"")


def test_cipher_nonces_are_four_zero_bytes_then_n_little_or_big_endian() -> None:
    key, n = os.urandom(32), 0x0102030405060708
    chacha, aes = CIPHERS["ChaChaPoly"], CIPHERS["AESGCM"]
    nonce_le = bytes(4) + bytes.fromhex("0807060504030201")
    nonce_be = bytes(4) + bytes.fromhex("0102030405060708")
    assert chacha.encrypt(key, n, b"ad", b"x") == ChaCha20Poly1305(key).encrypt(
        nonce_le, b"x", b"ad"
    )
    assert aes.encrypt(key, n, b"ad", b"x") == AESGCM(key).encrypt(nonce_be, b"x", b"ad")


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_rekey_is_the_first_32_bytes_of_encrypting_zeros_at_maxnonce(cipher: str) -> None:
    key = os.urandom(32)
    aead = ChaCha20Poly1305(key) if cipher == "ChaChaPoly" else AESGCM(key)
    expected = aead.encrypt(bytes(4) + b"\xff" * 8, bytes(32), b"")[:32]
    assert CIPHERS[cipher].rekey(key) == expected

    sender, receiver = CipherState(CIPHERS[cipher], key), CipherState(CIPHERS[cipher], key)
    receiver.decrypt(sender.encrypt(b"before"))
    sender.rekey()
    receiver.rekey()
    assert (sender.n, receiver.n) == (1, 1)  # rekey keeps n (section 11.3)
    message = sender.encrypt(b"after")
    assert message != CipherState(CIPHERS[cipher], key).encrypt(b"after")
    assert receiver.decrypt(message) == b"after"
    with pytest.raises(NoiseError):
        CipherState(CIPHERS[cipher]).rekey()


def test_dh_with_a_low_order_point_raises_noise_error() -> None:
    with pytest.raises(NoiseError):
        KeyPair.generate().dh(bytes(32))
    with pytest.raises(NoiseError):
        KeyPair(bytes(31))


# --- Nonces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_nonces_beyond_2_64_minus_2_raise(cipher: str) -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(CIPHERS[cipher], key), CipherState(CIPHERS[cipher], key)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    assert receiver.decrypt(sender.encrypt(b"last")) == b"last"
    assert sender.n == receiver.n == MAX_NONCE
    with pytest.raises(NonceExhaustedError):
        sender.encrypt(b"one more")
    with pytest.raises(NonceExhaustedError):
        receiver.decrypt(bytes(20))
    with pytest.raises(NoiseError):
        sender.set_nonce(MAX_NONCE + 1)
    with pytest.raises(NoiseError):
        sender.set_nonce(-1)
    # Setting n to the reserved value directly is allowed; using it is not.
    fresh = CipherState(CIPHERS[cipher], key)
    fresh.set_nonce(MAX_NONCE)
    with pytest.raises(NonceExhaustedError):
        fresh.encrypt(b"")


def test_cipher_state_without_a_key_passes_data_through() -> None:
    state = CipherState(CIPHERS["ChaChaPoly"])
    assert not state.has_key()
    assert state.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.n == 0


def test_transport_messages_are_limited_to_65535_bytes() -> None:
    state = CipherState(CIPHERS["ChaChaPoly"], os.urandom(32))
    assert len(state.encrypt(bytes(MAX_MESSAGE_LEN - 16))) == MAX_MESSAGE_LEN
    with pytest.raises(NoiseError):
        state.encrypt(bytes(MAX_MESSAGE_LEN - 15))
    with pytest.raises(NoiseError):
        state.decrypt(bytes(MAX_MESSAGE_LEN + 1))
    assert state.n == 1


# --- Handshakes between fresh parties --------------------------------------------------------


def handshake(
    name: str, init_kwargs: dict[str, Any], resp_kwargs: dict[str, Any]
) -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(name, True, **init_kwargs)
    resp = HandshakeState(name, False, **resp_kwargs)
    sender, receiver = init, resp
    step = 0
    while not (init.complete and resp.complete):
        payload = f"payload {step}".encode()
        assert receiver.read_message(sender.write_message(payload)) == payload
        sender, receiver = receiver, sender
        step += 1
    return init, resp


@pytest.mark.parametrize(
    "name", ["Noise_XX_25519_ChaChaPoly_SHA256", "Noise_XX_25519_AESGCM_BLAKE2b"]
)
def test_xx_between_two_fresh_parties(name: str) -> None:
    alice, bob = KeyPair.generate(), KeyPair.generate()
    init, resp = handshake(
        name, {"s": alice, "prologue": b"peer-relay"}, {"s": bob, "prologue": b"peer-relay"}
    )
    assert init.remote_static == bob.public and resp.remote_static == alice.public
    assert init.handshake_hash == resp.handshake_hash
    to_resp, from_resp = init.split()
    to_resp_r, from_init_r = resp.split()
    assert to_resp_r is not to_resp
    for i in range(5):
        assert to_resp_r.decrypt(to_resp.encrypt(b"ping %d" % i)) == b"ping %d" % i
        assert from_resp.decrypt(from_init_r.encrypt(b"pong %d" % i)) == b"pong %d" % i
    assert to_resp.n == from_resp.n == 5
    # A second run with the same static keys gives fresh keys and a fresh hash.
    again, _ = handshake(name, {"s": alice}, {"s": bob})
    assert again.handshake_hash != init.handshake_hash


def test_different_prologues_fail_the_handshake() -> None:
    init = HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", True, prologue=b"a")
    resp = HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", False, prologue=b"b")
    resp.read_message(init.write_message())
    with pytest.raises(DecryptError):
        init.read_message(resp.write_message())


def test_one_way_pattern_sends_only_from_the_initiator() -> None:
    bob = KeyPair.generate()
    init, resp = handshake(
        "Noise_X_25519_ChaChaPoly_BLAKE2s", {"s": KeyPair.generate(), "rs": bob.public}, {"s": bob}
    )
    assert Protocol.parse("Noise_X_25519_ChaChaPoly_BLAKE2s").pattern.one_way
    assert resp.split()[0].decrypt(init.split()[0].encrypt(b"file")) == b"file"


def test_psk_handshake_with_the_wrong_psk_fails() -> None:
    name = "Noise_XXpsk3_25519_ChaChaPoly_SHA256"
    handshake(
        name,
        {"s": KeyPair.generate(), "psks": [b"k" * 32]},
        {"s": KeyPair.generate(), "psks": [b"k" * 32]},
    )
    with pytest.raises(DecryptError):
        handshake(
            name,
            {"s": KeyPair.generate(), "psks": [b"k" * 32]},
            {"s": KeyPair.generate(), "psks": [b"j" * 32]},
        )


# --- Tampering and failure leaves nothing usable ---------------------------------------------


def assert_dead(state: HandshakeState, genuine: bytes) -> None:
    """A failed handshake refuses every further use, the genuine message included."""
    for call in (
        lambda: state.read_message(genuine),
        lambda: state.write_message(b""),
        state.split,
        lambda: state.handshake_hash,
    ):
        with pytest.raises(NoiseError):
            call()
    assert not state.complete


@pytest.mark.parametrize(
    ("name", "index", "where"),
    [
        ("Noise_XX_25519_ChaChaPoly_SHA256", 1, -1),  # the payload's tag
        ("Noise_XX_25519_ChaChaPoly_SHA256", 1, 40),  # inside the encrypted static key
        ("Noise_XX_25519_AESGCM_SHA512", 2, 0),  # the last message
        ("Noise_IK_25519_ChaChaPoly_BLAKE2s", 0, 0),  # the cleartext ephemeral key
        ("Noise_IK_25519_ChaChaPoly_BLAKE2s", 1, -1),
        ("Noise_NK_25519_AESGCM_SHA256", 0, -1),
        ("Noise_KK_25519_ChaChaPoly_BLAKE2b", 1, 5),
    ],
)
def test_tampered_handshake_message_fails_for_good(name: str, index: int, where: int) -> None:
    pattern = Protocol.parse(name).pattern
    alice, bob = KeyPair.generate(), KeyPair.generate()
    init_kwargs: dict[str, Any] = {"s": alice}
    resp_kwargs: dict[str, Any] = {"s": bob}
    if "s" in pattern.responder_pre:
        init_kwargs["rs"] = bob.public
    if "s" in pattern.initiator_pre:
        resp_kwargs["rs"] = alice.public
    init = HandshakeState(name, True, **init_kwargs)
    resp = HandshakeState(name, False, **resp_kwargs)
    sender, receiver = init, resp
    for _ in range(index):
        receiver.read_message(sender.write_message(b"hello"))
        sender, receiver = receiver, sender
    genuine = sender.write_message(b"hello")
    tampered = bytearray(genuine)
    tampered[where] ^= 0x01
    with pytest.raises(NoiseError):
        receiver.read_message(bytes(tampered))
    assert_dead(receiver, genuine)


def test_tampered_cleartext_message_is_caught_by_the_next_one() -> None:
    name = "Noise_XX_25519_ChaChaPoly_SHA256"
    init = HandshakeState(name, True, s=KeyPair.generate())
    resp = HandshakeState(name, False, s=KeyPair.generate())
    first = bytearray(init.write_message(b"clear"))
    first[-1] ^= 0x01  # the cleartext payload: nothing to check it against yet
    assert resp.read_message(bytes(first)) == b"clea" + bytes([ord("r") ^ 1])
    second = resp.write_message()
    with pytest.raises(DecryptError):
        init.read_message(second)  # the transcripts differ, so h (the ad) differs
    assert_dead(init, second)


def test_truncated_and_oversized_handshake_messages_fail() -> None:
    name = "Noise_NN_25519_ChaChaPoly_SHA256"
    resp = HandshakeState(name, False)
    with pytest.raises(NoiseError):
        resp.read_message(bytes(31))
    assert_dead(resp, bytes(32))
    resp = HandshakeState(name, False)
    with pytest.raises(NoiseError):
        resp.read_message(bytes(MAX_MESSAGE_LEN + 1))
    assert_dead(resp, bytes(32))


def test_invalid_remote_key_fails_the_handshake() -> None:
    init = HandshakeState(
        "Noise_IK_25519_ChaChaPoly_SHA256", True, s=KeyPair.generate(), rs=bytes(32)
    )
    with pytest.raises(NoiseError):
        init.write_message(b"")
    assert_dead(init, b"")


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_tampered_transport_message_raises_and_changes_nothing(cipher: str) -> None:
    name = f"Noise_NN_25519_{cipher}_SHA256"
    init, resp = handshake(name, {}, {})
    send, _ = init.split()
    receive, _ = resp.split()
    genuine = send.encrypt(b"transport")
    for bad in (bytes([genuine[0] ^ 1]) + genuine[1:], genuine[:-1], genuine[:15], b""):
        with pytest.raises(DecryptError):
            receive.decrypt(bad)
        assert receive.n == 0
    with pytest.raises(DecryptError):
        receive.decrypt_with_ad(b"other ad", genuine)
    assert receive.decrypt(genuine) == b"transport"
    with pytest.raises(DecryptError):
        receive.decrypt(genuine)  # a replay: n has moved on
    assert receive.n == 1


def test_payload_too_long_is_refused_and_the_handshake_goes_on() -> None:
    name = "Noise_XX_25519_ChaChaPoly_SHA256"
    init = HandshakeState(name, True, s=KeyPair.generate())
    resp = HandshakeState(name, False, s=KeyPair.generate())
    resp.read_message(init.write_message())
    overhead = 32 + 48 + 16  # e, encrypted s, payload tag
    with pytest.raises(NoiseError):
        resp.write_message(bytes(MAX_MESSAGE_LEN - overhead + 1))
    biggest = resp.write_message(bytes(MAX_MESSAGE_LEN - overhead))
    assert len(biggest) == MAX_MESSAGE_LEN
    assert init.read_message(biggest) == bytes(MAX_MESSAGE_LEN - overhead)


# --- Arguments, turns, names and patterns ----------------------------------------------------


def test_turns_are_enforced_without_failing_the_handshake() -> None:
    name = "Noise_NN_25519_ChaChaPoly_SHA256"
    init, resp = HandshakeState(name, True), HandshakeState(name, False)
    with pytest.raises(NoiseError):
        resp.write_message()
    with pytest.raises(NoiseError):
        init.read_message(bytes(32))
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    assert init.complete and resp.complete
    with pytest.raises(NoiseError):
        init.write_message()  # complete: transport goes through split()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("Noise_XX_25519_ChaChaPoly_SHA256", {}),  # needs s
        ("Noise_IK_25519_ChaChaPoly_SHA256", {"s": KeyPair(bytes(range(32)))}),  # needs rs
        ("Noise_XX_25519_ChaChaPoly_SHA256", {"s": KeyPair(bytes(range(32))), "rs": bytes(32)}),
        ("Noise_NN_25519_ChaChaPoly_SHA256", {"e": KeyPair(bytes(range(32)))}),
        ("Noise_NK_25519_ChaChaPoly_SHA256", {"rs": bytes(31)}),
        ("Noise_NNpsk0_25519_ChaChaPoly_SHA256", {}),  # needs one psk
        ("Noise_NNpsk0_25519_ChaChaPoly_SHA256", {"psks": [bytes(31)]}),
        ("Noise_NN_25519_ChaChaPoly_SHA256", {"psks": [bytes(32)]}),
    ],
)
def test_missing_or_misplaced_keys_are_refused(name: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(NoiseError):
        HandshakeState(name, True, **kwargs)


def test_protocol_names() -> None:
    protocol = Protocol.parse("Noise_XX_25519_ChaChaPoly_SHA256")
    assert protocol.pattern is PATTERNS["XX"]
    assert (protocol.dh, protocol.cipher.name, protocol.hash.name) == (
        "25519",
        "ChaChaPoly",
        "SHA256",
    )
    combined = Protocol.parse("Noise_XXpsk0+psk3_25519_AESGCM_BLAKE2b").pattern
    assert combined.name == "XXpsk0+psk3"
    assert combined.messages == (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se", "psk"))
    assert Protocol.parse("Noise_I1K1psk2_25519_AESGCM_SHA512").pattern.psk_count == 1
    for bad in (
        "Noise_XX_25519_ChaChaPoly",
        "Noise_XX_25519_ChaChaPoly_SHA256_extra",
        "Nois_XX_25519_ChaChaPoly_SHA256",
        "Noise_ZZ_25519_ChaChaPoly_SHA256",
        "Noise_XX_448_ChaChaPoly_SHA256",
        "Noise_XX_25519_AESGCMSIV_SHA256",
        "Noise_XX_25519_ChaChaPoly_SHA3/256",
        "Noise_XXfallback_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk4_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk3+psk0_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk0+psk0_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk01_25519_ChaChaPoly_SHA256",
        "Noise_xx_25519_ChaChaPoly_SHA256",
    ):
        with pytest.raises(NoiseError):
            Protocol.parse(bad)


def test_patterns_are_parsed_from_the_spec_notation_and_checked() -> None:
    assert len(PATTERNS) == 3 + 12 + 23
    nk = PATTERNS["NK"]
    assert (nk.initiator_pre, nk.responder_pre) == ((), ("s",))
    assert nk.messages == (("e", "es"), ("e", "ee"))
    assert PATTERNS["KK"].initiator_pre == PATTERNS["KK"].responder_pre == ("s",)
    assert HandshakePattern.parse("mine", "-> e <- e, ee -> s, se") == HandshakePattern(
        "mine", (), (), (("e",), ("e", "ee"), ("s", "se"))
    )
    HandshakePattern.parse("custom", "-> e <- e, ee -> s, se <- s, es")  # valid, if unusual
    for notation, reason in (
        ("-> e, es", "before both of its keys"),  # rule 1: no responder static yet
        ("-> e, e", "sent twice"),  # rule 2
        ("-> e <- e, ee, ee", "performed twice"),  # rule 3
        ("-> s <- s ... -> e, ss", "without an ephemeral DH"),  # rule 4: ss, no es
        ("<- s ... -> e <- e, es", "without an ephemeral DH"),  # rule 4: es, no ee
        ("-> psk, s", "after psk before sending e"),  # section 9.3
        ("-> e, xx", "unknown token"),
        ("<- e <- e, ee", "alternate"),
        ("<- s -> s ... -> e", "pre-messages"),
        ("-> ... -> e", "pre-message is"),
        ("... -> e", "misplaced"),
        ("e -> e", "before any arrow"),
    ):
        with pytest.raises(NoiseError, match=reason):
            HandshakePattern.parse("bad", notation)


def test_the_module_is_a_leaf_without_io() -> None:
    """It imports the standard library's pure parts, ``cryptography``, and from the package only
    its own pure-Python fallback (for where ``cryptography`` is missing)."""
    tree = ast.parse(Path(noise.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 or node.module == "purecrypto", node.module
            imported.add((node.module or "").split(".")[0])
    assert imported <= {
        "__future__",
        "collections",
        "cryptography",
        "dataclasses",
        "functools",
        "hashlib",
        "hmac",
        "purecrypto",
        "typing",
    }, imported


def test_a_copy_reads_a_forged_message_and_the_original_the_genuine_one() -> None:
    """A message that may be forged is read on a copy: its failure leaves the original as it
    was, which then reads the genuine message and completes with the same keys as the peer."""
    name = "Noise_IK_25519_ChaChaPoly_SHA256"
    alice, bob = KeyPair.generate(), KeyPair.generate()
    init = HandshakeState(name, True, s=alice, rs=bob.public)
    resp = HandshakeState(name, False, s=bob)
    resp.read_message(init.write_message(b"hello"))
    answer = resp.write_message(b"back")
    forged = bytearray(answer)
    forged[-1] ^= 1
    attempt = init.copy()
    with pytest.raises(NoiseError):
        attempt.read_message(bytes(forged))
    with pytest.raises(NoiseError):
        attempt.read_message(answer)  # a failed handshake stays failed
    assert init.read_message(answer) == b"back"
    to_bob, _ = init.split()
    from_alice, _ = resp.split()
    assert from_alice.decrypt(to_bob.encrypt(b"x")) == b"x"
