"""Encryption of secrets at rest (AES-256-GCM keyring) and in transit (RSA-OAEP hybrid envelope).

Symmetric keyring
-----------------
* The *current* key is the 32-byte file at ``CRYPTO_SYMMETRIC_KEY_PATH`` (default
  ``crypto-keys/symmetric-key-256``), exactly what ``openssl rand -out crypto-keys/symmetric-key-256 32``
  writes. A file holding 64 hex characters (plus an optional newline) is accepted too, for secret stores that
  only carry text.
* *Retired* keys live in ``CRYPTO_RETIRED_KEYS_DIR`` (default ``crypto-keys/retired/``), one key per file
  named ``<key id>.key`` (same 32-byte format). Only ``*.key`` files are read; the key id is always computed
  from the content, the file name is for humans. Retired keys only decrypt; new data is always encrypted with
  the current key. ``manage.py rotate_keys`` moves the current key there, writes a new one and re-encrypts
  every value. A retired key may be deleted once ``rotate_keys`` reports that no value uses it any more.
* Key id = the first 8 hex digits of SHA-256(key). It is not secret (it identifies, it does not reveal).
* Relative paths are resolved against ``settings.BASE_DIR`` (so workers and commands agree whatever their
  working directory), or the working directory when Django is not configured.
* The keyring is cached per process and reloaded when any key file changes (checked with ``stat`` on every
  use, which is cheap next to the cipher work), so a rotation done by another process is picked up without
  restarts.

Token format (what the database column holds)::

    v1:<key id>:<urlsafe-base64(nonce[12] | ciphertext | tag[16])>

The AES-GCM associated data (AAD) is ``b"v1:<key id>"`` followed, when the caller passes one, by ``b"|"`` and
a context string. Binding the header means a token cannot be relabelled with another key id; the optional
context (e.g. ``"clusters.Cluster.kubeconfig"``, see ``core.fields``) means a token copied into another column
does not decrypt there. The context must stay the same for the life of the data, so pass an explicit constant,
not a name derived from a model that may be renamed.

Failures are loud: a missing or malformed key file, an unknown key id or a failed authentication tag raise
:class:`CryptoError` with a message that names the file or key id but never key bytes, plaintext or
ciphertext. Nothing here ever hands back a ciphertext as if it were data.

RSA envelope (clients sending a kubeconfig encrypted)
-----------------------------------------------------
The service's RSA private key (PEM, RSA-4096 as written by ``openssl genpkey`` or ``manage.py generate_keys``)
lives at ``CRYPTO_PRIVATE_KEY_PATH``; :func:`public_key_pem` publishes its public half. A client generates a
random 32-byte AES key and 12-byte nonce, encrypts the payload with AES-256-GCM (no AAD), wraps the AES key
with RSA-OAEP (MGF1-SHA256, SHA-256, no label) and sends::

    {"encrypted_key": b64(RSA-OAEP(aes_key)), "nonce": b64(nonce), "ciphertext": b64(ct | tag)}

Standard or URL-safe base64, padding optional. :func:`encrypt_envelope` is the reference client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.conf import setting

__all__ = [
    "KEY_BYTES",
    "TOKEN_RE",
    "CryptoError",
    "Keyring",
    "clear_keyring_cache",
    "current_key_id",
    "decrypt",
    "decrypt_bytes",
    "decrypt_envelope",
    "encrypt",
    "encrypt_envelope",
    "generate_rsa_private_key_pem",
    "generate_symmetric_key",
    "install_new_key",
    "is_token",
    "key_id",
    "load_keyring",
    "needs_rotation",
    "private_key_path",
    "public_key_pem",
    "reencrypt",
    "retire_current_key",
    "retired_keys_dir",
    "symmetric_key_path",
    "token_key_id",
    "write_secret_file",
]

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MIN_RSA_BITS = 2048
# Anchored, ASCII-only: a value either is a whole token or is not one.
TOKEN_RE = re.compile(r"\Av1:([0-9a-f]{8}):([A-Za-z0-9_-]+={0,2})\Z")

DEFAULT_PRIVATE_KEY_PATH = "crypto-keys/rsa-private-key.pem"
DEFAULT_SYMMETRIC_KEY_PATH = "crypto-keys/symmetric-key-256"
DEFAULT_RETIRED_KEYS_DIR = "crypto-keys/retired"


class CryptoError(Exception):
    """A key is missing or wrong, or a ciphertext does not authenticate. The message is safe to show."""


# --- settings -----------------------------------------------------------------------------------------------


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    base = setting("BASE_DIR", None)
    return Path(base) / p if base else p


def symmetric_key_path() -> Path:
    return _resolve(setting("CRYPTO_SYMMETRIC_KEY_PATH", DEFAULT_SYMMETRIC_KEY_PATH))


def retired_keys_dir() -> Path:
    return _resolve(setting("CRYPTO_RETIRED_KEYS_DIR", DEFAULT_RETIRED_KEYS_DIR))


def private_key_path() -> Path:
    return _resolve(setting("CRYPTO_PRIVATE_KEY_PATH", DEFAULT_PRIVATE_KEY_PATH))


# --- keys ---------------------------------------------------------------------------------------------------


def key_id(key: bytes) -> str:
    """First 8 hex digits of SHA-256(key): names a key without revealing it."""
    return hashlib.sha256(key).hexdigest()[:8]


def generate_symmetric_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def generate_rsa_private_key_pem(bits: int = 4096) -> bytes:
    """Unencrypted PKCS#8 PEM, the same shape ``openssl genpkey -algorithm RSA`` writes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _parse_key_file(path: Path, raw: bytes) -> bytes:
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    # Hex text is tolerated for secret stores that cannot hold binary; anything else is a configuration error.
    if len(text) == 2 * KEY_BYTES and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return bytes.fromhex(text.decode())
    raise CryptoError(
        f"symmetric key file {path} holds {len(raw)} bytes; expected {KEY_BYTES} raw bytes "
        f"(`openssl rand -out {path.name} 32`) or {2 * KEY_BYTES} hex characters"
    )


def _read_key_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CryptoError(f"symmetric key file {path} missing: run `manage.py generate_keys`") from None
    except OSError as exc:
        raise CryptoError(f"cannot read symmetric key file {path}: {exc.strerror}") from None
    return _parse_key_file(path, raw)


@dataclass(frozen=True)
class Keyring:
    """The current key plus retired keys, by key id. Build it with :func:`load_keyring`."""

    current_id: str
    keys: Mapping[str, bytes]

    @property
    def current_key(self) -> bytes:
        return self.keys[self.current_id]

    def __repr__(self) -> str:  # never print key bytes, even in a debugger or a traceback with locals
        return f"Keyring(current_id={self.current_id!r}, key_ids={sorted(self.keys)!r})"


def _stat_sig(path: Path) -> tuple[Any, ...] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _fingerprint(current: Path, retired: Path) -> tuple[Any, ...]:
    """Cheap signature of every key file; a change means the cached keyring is stale."""
    retired_files: list[tuple[Any, ...]] = []
    if retired.is_dir():
        for entry in sorted(retired.glob("*.key")):
            retired_files.append((entry.name, _stat_sig(entry)))
    return (str(current), _stat_sig(current), str(retired), _stat_sig(retired), tuple(retired_files))


_cache_lock = threading.Lock()
_cache: tuple[tuple[Any, ...], Keyring] | None = None


def load_keyring() -> Keyring:
    """The keyring from the configured files, cached until one of them changes."""
    global _cache
    current_path, retired_path = symmetric_key_path(), retired_keys_dir()
    fp = _fingerprint(current_path, retired_path)
    cached = _cache
    if cached is not None and cached[0] == fp:
        return cached[1]
    with _cache_lock:
        current = _read_key_file(current_path)
        keys: dict[str, bytes] = {}
        if retired_path.is_dir():
            for entry in sorted(retired_path.glob("*.key")):
                if entry.is_file():
                    k = _read_key_file(entry)
                    keys[key_id(k)] = k
        cid = key_id(current)
        keys[cid] = current
        ring = Keyring(current_id=cid, keys=keys)
        _cache = (fp, ring)
        return ring


def clear_keyring_cache() -> None:
    global _cache
    with _cache_lock:
        _cache = None


def current_key_id() -> str:
    return load_keyring().current_id


# --- symmetric tokens ---------------------------------------------------------------------------------------


def _aad(kid: str, context: str | bytes | None) -> bytes:
    header = f"{VERSION}:{kid}".encode()
    if context is None:
        return header
    ctx = context.encode() if isinstance(context, str) else context
    return header + b"|" + ctx


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _b64d(text: str) -> bytes:
    """Lenient base64: standard or URL-safe alphabet, padding optional, but no stray characters."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def is_token(value: object) -> bool:
    """True when ``value`` has the shape of an encrypted token (says nothing about which key or validity)."""
    return isinstance(value, str) and TOKEN_RE.match(value) is not None


def token_key_id(token: str) -> str:
    """The key id a token was encrypted with; :class:`CryptoError` if it is not a token."""
    m = TOKEN_RE.match(token) if isinstance(token, str) else None
    if m is None:
        raise CryptoError("value is not an encrypted token (expected v1:<key id>:<data>)")
    return m.group(1)


def encrypt(plaintext: str | bytes, *, context: str | bytes | None = None) -> str:
    """Encrypt with the current key; returns a ``v1:<key id>:<data>`` token."""
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
    ring = load_keyring()
    nonce = os.urandom(NONCE_BYTES)  # 96-bit random nonce: safe for far more than 2**32 messages per key
    sealed = AESGCM(ring.current_key).encrypt(nonce, data, _aad(ring.current_id, context))
    return f"{VERSION}:{ring.current_id}:{_b64e(nonce + sealed)}"


def decrypt_bytes(token: str, *, context: str | bytes | None = None) -> bytes:
    kid = token_key_id(token)
    ring = load_keyring()
    key = ring.keys.get(kid)
    if key is None:
        raise CryptoError(f"ciphertext encrypted with key id {kid}, which is not in the keyring")
    try:
        blob = _b64d(token.rsplit(":", 1)[1])
    except (binascii.Error, ValueError):
        raise CryptoError("ciphertext is not valid base64 (tampered data?)") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("ciphertext is truncated (tampered data?)")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(kid, context))
    except InvalidTag:
        raise CryptoError("authentication failed: wrong key or tampered data") from None


def decrypt(token: str, *, context: str | bytes | None = None) -> str:
    """Decrypt a token to text. Raises :class:`CryptoError`; never returns the token itself."""
    data = decrypt_bytes(token, context=context)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CryptoError("decrypted value is not UTF-8 text (use decrypt_bytes for binary data)") from None


def needs_rotation(token: str) -> bool:
    """True when ``token`` was encrypted with a key other than the current one."""
    return token_key_id(token) != current_key_id()


def reencrypt(token: str, *, context: str | bytes | None = None) -> str:
    """The same plaintext under the current key (returns ``token`` unchanged when already current)."""
    if not needs_rotation(token):
        return token
    return encrypt(decrypt_bytes(token, context=context), context=context)


# --- RSA envelope -------------------------------------------------------------------------------------------

_rsa_lock = threading.Lock()
_rsa_cache: tuple[tuple[Any, ...], rsa.RSAPrivateKey] | None = None

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _private_key() -> rsa.RSAPrivateKey:
    global _rsa_cache
    path = private_key_path()
    sig = (str(path), _stat_sig(path))
    cached = _rsa_cache
    if cached is not None and cached[0] == sig:
        return cached[1]
    with _rsa_lock:
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise CryptoError(f"RSA private key file {path} missing: run `manage.py generate_keys`") from None
        except OSError as exc:
            raise CryptoError(f"cannot read RSA private key file {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise CryptoError(f"RSA private key file {path} is not an unencrypted PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CryptoError(f"private key file {path} does not hold an RSA key")
        if key.key_size < MIN_RSA_BITS:
            raise CryptoError(f"RSA key in {path} has {key.key_size} bits; at least {MIN_RSA_BITS} required")
        _rsa_cache = (sig, key)
        return key


def public_key_pem() -> str:
    """The service's RSA public key as a SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
    return (
        _private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def encrypt_envelope(plaintext: str | bytes, public_pem: str | bytes) -> dict[str, str]:
    """Reference client: seal ``plaintext`` for the holder of ``public_pem`` (see the module docstring)."""
    pem = public_pem.encode() if isinstance(public_pem, str) else public_pem
    public = serialization.load_pem_public_key(pem)
    if not isinstance(public, rsa.RSAPublicKey):
        raise CryptoError("public key is not an RSA key")
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
    aes_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    return {
        "encrypted_key": base64.b64encode(public.encrypt(aes_key, _OAEP)).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(AESGCM(aes_key).encrypt(nonce, data, None)).decode("ascii"),
    }


def decrypt_envelope(payload: Mapping[str, Any] | str | bytes) -> bytes:
    """Open a client envelope (a mapping or its JSON text); returns the plaintext bytes.

    Raises :class:`CryptoError` naming the bad field, or saying the key could not be unwrapped or the data
    does not authenticate.
    """
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise CryptoError("envelope is not valid JSON") from None
    if not isinstance(payload, Mapping):
        raise CryptoError("envelope must be an object with encrypted_key, nonce and ciphertext")
    fields: dict[str, bytes] = {}
    for name in ("encrypted_key", "nonce", "ciphertext"):
        value = payload.get(name)
        if not isinstance(value, str) or not value:
            raise CryptoError(f"envelope field {name} missing or not a string")
        try:
            fields[name] = _b64d(value)
        except (binascii.Error, ValueError):
            raise CryptoError(f"envelope field {name} is not valid base64") from None
    if len(fields["nonce"]) != NONCE_BYTES:
        raise CryptoError(f"envelope nonce must be {NONCE_BYTES} bytes, got {len(fields['nonce'])}")
    private = _private_key()
    try:
        aes_key = private.decrypt(fields["encrypted_key"], _OAEP)
    except ValueError:
        raise CryptoError(
            "envelope key cannot be unwrapped: was it encrypted with this service's public key "
            "(RSA-OAEP, SHA-256)?"
        ) from None
    if len(aes_key) != KEY_BYTES:
        raise CryptoError(f"envelope key must be a {KEY_BYTES}-byte AES-256 key, got {len(aes_key)} bytes")
    try:
        return AESGCM(aes_key).decrypt(fields["nonce"], fields["ciphertext"], None)
    except InvalidTag:
        raise CryptoError("envelope authentication failed: wrong key or tampered data") from None


# --- key files ----------------------------------------------------------------------------------------------


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, creating parent directories (0700).

    The bytes go to a temporary file in the same directory which is fsynced and then renamed over ``path``, so
    a crash leaves either the old file or the new one, never a truncated key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # the umask may have narrowed it further, never widened; make it exact
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def retire_current_key() -> str | None:
    """Copy the current symmetric key into the retired directory as ``<key id>.key``; returns its id.

    Returns None when there is no current key. Idempotent: copying the same key twice is harmless.
    """
    path = symmetric_key_path()
    if not path.exists():
        return None
    key = _read_key_file(path)
    kid = key_id(key)
    target = retired_keys_dir() / f"{kid}.key"
    if not (target.exists() and _read_key_file(target) == key):
        write_secret_file(target, key)
    return kid


def install_new_key() -> tuple[str | None, str]:
    """Retire the current key (kept for decryption) and make a fresh random key current.

    Returns ``(old key id or None, new key id)``. The old key is safely in the retired directory before the
    current file is replaced, so an interruption at any point leaves every value decryptable.
    """
    old = retire_current_key()
    new_key = generate_symmetric_key()
    write_secret_file(symmetric_key_path(), new_key)
    clear_keyring_cache()
    return old, key_id(new_key)
