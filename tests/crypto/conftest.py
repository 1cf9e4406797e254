"""Every crypto test gets its own key directory (settings pointed at tmp_path) and a cold keyring cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import crypto


@pytest.fixture
def key_dir(tmp_path, settings) -> Path:
    directory = tmp_path / "crypto-keys"
    settings.CRYPTO_SYMMETRIC_KEY_PATH = str(directory / "symmetric-key-256")
    settings.CRYPTO_PRIVATE_KEY_PATH = str(directory / "rsa-private-key.pem")
    settings.CRYPTO_RETIRED_KEYS_DIR = str(directory / "retired")
    crypto.clear_keyring_cache()
    yield directory
    crypto.clear_keyring_cache()


@pytest.fixture
def sym_key(key_dir) -> bytes:
    """A current symmetric key, written the way `openssl rand -out ... 32` would."""
    key = crypto.generate_symmetric_key()
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / "symmetric-key-256").write_bytes(key)
    return key


@pytest.fixture(scope="session")
def rsa_pem() -> bytes:
    # 2048 bits keeps the suite quick; the code path is the same as for the 4096-bit production key.
    return crypto.generate_rsa_private_key_pem(2048)
