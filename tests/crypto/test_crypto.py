"""AES-256-GCM keyring and RSA envelope: round trips, rotation, and loud, secret-free failures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat

import pytest

from core import crypto
from core.crypto import CryptoError

SECRET = "token: sha256~the-plaintext-secret"


def flip_last_data_char(token: str) -> str:
    head, data = token.rsplit(":", 1)
    i = len(data) // 2
    return f"{head}:{data[:i]}{'A' if data[i] != 'A' else 'B'}{data[i + 1 :]}"


def test_round_trip_text_and_bytes(sym_key):
    token = crypto.encrypt(SECRET)
    assert crypto.decrypt(token) == SECRET
    assert crypto.decrypt_bytes(crypto.encrypt(b"\x00\xffbinary")) == b"\x00\xffbinary"
    assert crypto.decrypt(crypto.encrypt("ünïcødé ✓")) == "ünïcødé ✓"
    assert crypto.decrypt(crypto.encrypt("")) == ""


def test_token_format_and_key_id(sym_key):
    token = crypto.encrypt(SECRET)
    kid = hashlib.sha256(sym_key).hexdigest()[:8]
    assert token.startswith(f"v1:{kid}:")
    assert crypto.current_key_id() == kid
    assert crypto.is_token(token)
    assert SECRET not in token
    raw = base64.urlsafe_b64decode(token.split(":")[2])
    assert len(raw) == 12 + len(SECRET.encode()) + 16  # nonce | ciphertext | tag
    # Random nonces: the same plaintext never gives the same token.
    assert crypto.encrypt(SECRET) != token


def test_hex_key_file_is_accepted(key_dir):
    key = os.urandom(32)
    key_dir.mkdir(parents=True)
    (key_dir / "symmetric-key-256").write_text(key.hex() + "\n")
    assert crypto.current_key_id() == crypto.key_id(key)
    assert crypto.decrypt(crypto.encrypt(SECRET)) == SECRET


def test_missing_key_file_says_how_to_fix(key_dir):
    with pytest.raises(CryptoError) as info:
        crypto.encrypt(SECRET)
    message = str(info.value)
    assert f"symmetric key file {key_dir / 'symmetric-key-256'} missing" in message
    assert "run `manage.py generate_keys`" in message


def test_malformed_key_file_is_refused(key_dir):
    key_dir.mkdir(parents=True)
    (key_dir / "symmetric-key-256").write_bytes(b"short")
    with pytest.raises(CryptoError, match="holds 5 bytes; expected 32"):
        crypto.current_key_id()


def test_unknown_key_id_fails_without_leaking(sym_key, key_dir):
    token = crypto.encrypt(SECRET)
    old_kid = crypto.token_key_id(token)
    (key_dir / "symmetric-key-256").write_bytes(os.urandom(32))  # replaced without retiring: old key lost
    with pytest.raises(CryptoError) as info:
        crypto.decrypt(token)
    message = str(info.value)
    assert message == f"ciphertext encrypted with key id {old_kid}, which is not in the keyring"
    assert SECRET not in message and token not in message


def test_tampered_data_fails_authentication(sym_key):
    token = crypto.encrypt(SECRET)
    with pytest.raises(CryptoError) as info:
        crypto.decrypt(flip_last_data_char(token))
    assert str(info.value) == "authentication failed: wrong key or tampered data"
    assert SECRET not in str(info.value)


def test_wrong_key_with_same_id_label_fails_authentication(sym_key, key_dir):
    # A token relabelled with another keyring member's id does not decrypt: the header is bound as AAD.
    token = crypto.encrypt(SECRET)
    crypto.install_new_key()
    relabelled = f"v1:{crypto.current_key_id()}:{token.rsplit(':', 1)[1]}"
    with pytest.raises(CryptoError, match="authentication failed"):
        crypto.decrypt(relabelled)


def test_context_binding(sym_key):
    token = crypto.encrypt(SECRET, context="clusters.Cluster.kubeconfig")
    assert crypto.decrypt(token, context="clusters.Cluster.kubeconfig") == SECRET
    with pytest.raises(CryptoError, match="authentication failed"):
        crypto.decrypt(token, context="other.Model.field")
    with pytest.raises(CryptoError, match="authentication failed"):
        crypto.decrypt(token)


@pytest.mark.parametrize("value", ["plain text", "v1:zzzz:abc", "", "v1:abcd1234:"])
def test_non_tokens_are_refused_not_returned(sym_key, value):
    with pytest.raises(CryptoError, match="not an encrypted token"):
        crypto.decrypt(value)


def test_truncated_token(sym_key):
    token = crypto.encrypt(SECRET)
    with pytest.raises(CryptoError, match="truncated"):
        crypto.decrypt(token[: len(f"v1:{crypto.current_key_id()}:") + 8])


def test_keyring_repr_hides_key_bytes(sym_key):
    ring = crypto.load_keyring()
    assert sym_key.hex() not in repr(ring)
    assert repr(sym_key) not in repr(ring)


def test_rotation_keeps_old_values_readable(sym_key, key_dir):
    old_token = crypto.encrypt(SECRET)
    old_kid = crypto.current_key_id()
    retired_id, new_kid = crypto.install_new_key()
    assert retired_id == old_kid and new_kid != old_kid
    assert crypto.current_key_id() == new_kid
    retired_file = key_dir / "retired" / f"{old_kid}.key"
    assert retired_file.read_bytes() == sym_key
    assert stat.S_IMODE(retired_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((key_dir / "symmetric-key-256").stat().st_mode) == 0o600

    assert crypto.decrypt(old_token) == SECRET
    assert crypto.needs_rotation(old_token)
    fresh = crypto.reencrypt(old_token)
    assert crypto.token_key_id(fresh) == new_kid
    assert not crypto.needs_rotation(fresh)
    assert crypto.decrypt(fresh) == SECRET
    assert crypto.reencrypt(fresh) == fresh  # already current: untouched
    assert crypto.token_key_id(crypto.encrypt("new")) == new_kid


def test_two_rotations_keep_the_oldest_values_readable(sym_key):
    first = crypto.encrypt("first")
    crypto.install_new_key()
    second = crypto.encrypt("second")
    crypto.install_new_key()
    assert (crypto.decrypt(first), crypto.decrypt(second)) == ("first", "second")
    assert len(crypto.load_keyring().keys) == 3


def test_keyring_reloads_when_the_key_file_changes(sym_key, key_dir):
    before = crypto.current_key_id()
    new_key = os.urandom(32)
    # Another process rotated: new current file, old key retired. No cache clearing here.
    (key_dir / "retired").mkdir()
    (key_dir / "retired" / f"{before}.key").write_bytes(sym_key)
    (key_dir / "symmetric-key-256").write_bytes(new_key)
    os.utime(key_dir / "symmetric-key-256", ns=(1, 1))  # a distinct mtime even on coarse-clock filesystems
    assert crypto.current_key_id() == crypto.key_id(new_key)
    assert before in crypto.load_keyring().keys


def test_retire_is_idempotent(sym_key, key_dir):
    assert crypto.retire_current_key() == crypto.retire_current_key()
    assert len(list((key_dir / "retired").glob("*.key"))) == 1


# --- RSA envelope -------------------------------------------------------------------------------------------


@pytest.fixture
def rsa_key(key_dir, rsa_pem) -> bytes:
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / "rsa-private-key.pem").write_bytes(rsa_pem)
    return rsa_pem


def test_envelope_round_trip(rsa_key):
    public = crypto.public_key_pem()
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    envelope = crypto.encrypt_envelope("apiVersion: v1\nkind: Config\n", public)
    assert set(envelope) == {"encrypted_key", "nonce", "ciphertext"}
    assert crypto.decrypt_envelope(envelope) == b"apiVersion: v1\nkind: Config\n"
    assert crypto.decrypt_envelope(json.dumps(envelope)) == b"apiVersion: v1\nkind: Config\n"


def test_envelope_accepts_urlsafe_unpadded_base64(rsa_key):
    envelope = crypto.encrypt_envelope(SECRET, crypto.public_key_pem())
    urlsafe = {
        k: base64.urlsafe_b64encode(base64.b64decode(v)).decode().rstrip("=") for k, v in envelope.items()
    }
    assert crypto.decrypt_envelope(urlsafe) == SECRET.encode()


def test_envelope_tampered_ciphertext(rsa_key):
    envelope = crypto.encrypt_envelope(SECRET, crypto.public_key_pem())
    data = bytearray(base64.b64decode(envelope["ciphertext"]))
    data[0] ^= 1
    envelope["ciphertext"] = base64.b64encode(bytes(data)).decode()
    with pytest.raises(CryptoError) as info:
        crypto.decrypt_envelope(envelope)
    assert "authentication failed" in str(info.value)
    assert SECRET not in str(info.value)


def test_envelope_for_another_key_cannot_be_unwrapped(rsa_key):
    other_public = crypto.serialization.load_pem_private_key(
        crypto.generate_rsa_private_key_pem(2048), password=None
    ).public_key()
    pem = other_public.public_bytes(
        crypto.serialization.Encoding.PEM, crypto.serialization.PublicFormat.SubjectPublicKeyInfo
    )
    envelope = crypto.encrypt_envelope(SECRET, pem)
    with pytest.raises(CryptoError, match="cannot be unwrapped"):
        crypto.decrypt_envelope(envelope)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"nonce": "AAAA", "ciphertext": "AAAA"}, "encrypted_key missing"),
        (
            {"encrypted_key": "!!!", "nonce": "AAAA", "ciphertext": "AAAA"},
            "encrypted_key is not valid base64",
        ),
        ({"encrypted_key": "AAAA", "nonce": "AAAA", "ciphertext": "AAAA"}, "nonce must be 12 bytes"),
        ("not json", "not valid JSON"),
        ([1, 2], "must be an object"),
    ],
)
def test_envelope_malformed(rsa_key, payload, reason):
    with pytest.raises(CryptoError, match=reason):
        crypto.decrypt_envelope(payload)


def test_missing_private_key(key_dir):
    with pytest.raises(CryptoError, match=r"RSA private key file .*rsa-private-key.pem missing: run"):
        crypto.public_key_pem()


def test_private_key_must_be_rsa(key_dir):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    key_dir.mkdir(parents=True)
    (key_dir / "rsa-private-key.pem").write_bytes(
        key.private_bytes(
            crypto.serialization.Encoding.PEM,
            crypto.serialization.PrivateFormat.PKCS8,
            crypto.serialization.NoEncryption(),
        )
    )
    with pytest.raises(CryptoError, match="does not hold an RSA key"):
        crypto.public_key_pem()
