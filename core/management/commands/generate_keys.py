"""``manage.py generate_keys``: create the RSA private key and the symmetric key the service needs.

Writes the same files as the original service's openssl commands
(``openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096`` → ``CRYPTO_PRIVATE_KEY_PATH``,
``openssl rand 32`` → ``CRYPTO_SYMMETRIC_KEY_PATH``), but with mode 0600 and atomically. Existing files are
kept unless ``--force``; ``--if-missing`` writes only the absent ones and succeeds (for ``make``). Even with
``--force`` the old symmetric key is moved to the retired directory rather than destroyed, so data already
encrypted with it stays readable (run ``rotate_keys`` to re-encrypt it under the new key).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import crypto


class Command(BaseCommand):
    help = "Generate the RSA-4096 private key and the 32-byte symmetric key (files mode 0600)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace existing keys (the old symmetric key is kept in the retired directory)",
        )
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="write only the key files that do not exist yet and succeed quietly otherwise (for make/CI)",
        )
        parser.add_argument(
            "--rsa-bits",
            type=int,
            default=4096,
            choices=[2048, 3072, 4096],
            help="RSA key size (default 4096)",
        )

    def handle(
        self, *args: Any, force: bool = False, if_missing: bool = False, rsa_bits: int = 4096, **options: Any
    ) -> None:
        if force and if_missing:
            raise CommandError("--force and --if-missing contradict each other")
        rsa_path, sym_path = crypto.private_key_path(), crypto.symmetric_key_path()
        existing = [p for p in (rsa_path, sym_path) if p.exists()]
        if existing and not (force or if_missing):
            names = ", ".join(str(p) for p in existing)
            raise CommandError(
                f"refusing to overwrite existing key file(s): {names}. Pass --force to replace them "
                "(use rotate_keys to change the symmetric key of a running installation)."
            )
        for path in existing:
            if if_missing:
                self.stdout.write(f"kept existing {path}")

        if force or not rsa_path.exists():
            crypto.write_secret_file(rsa_path, crypto.generate_rsa_private_key_pem(rsa_bits))
            self.stdout.write(f"wrote RSA-{rsa_bits} private key to {rsa_path} (mode 0600)")

        if if_missing and sym_path.exists():
            return
        if sym_path.exists():
            retired = crypto.retire_current_key()
            self.stdout.write(f"kept the previous symmetric key {retired} in {crypto.retired_keys_dir()}")
        key = crypto.generate_symmetric_key()
        crypto.write_secret_file(sym_path, key)
        crypto.clear_keyring_cache()
        self.stdout.write(
            f"wrote 256-bit symmetric key to {sym_path} (mode 0600, key id {crypto.key_id(key)})"
        )
