"""``manage.py rotate_keys``: make a new symmetric key current and re-encrypt every stored value with it.

1. The current key is copied into ``CRYPTO_RETIRED_KEYS_DIR`` as ``<key id>.key`` and a fresh key replaces it
   (``core.crypto.install_new_key``; every value stays readable at every instant).
2. Every encrypted column of every installed model (``core.fields.encrypted_fields``) is scanned for tokens
   whose key id is not the current one; these are re-encrypted in batches of ``--batch-size`` rows, one
   transaction per batch, each row written with a compare-and-set UPDATE (``WHERE pk = … AND column = <token
   read>``) so a value written concurrently by the application is never overwritten with an older one.
3. Resumable: if values under retired keys remain when the command starts (an earlier run was interrupted),
   it finishes that rotation instead of creating yet another key (``--new-key`` forces one anyway). Values
   already under the current key are never touched, so rerunning is always safe.

Selection happens in SQL on the raw token prefix (``v1:<current id>:``), so a resumed run does not decrypt
what is already done. ``--dry-run`` only counts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction
from django.db.models.lookups import Exact
from tqdm import tqdm

from core import crypto
from core.crypto import CryptoError
from core.fields import Ciphertext, EncryptedFieldMixin, encrypted_fields, raw_token

Target = tuple[type[models.Model], EncryptedFieldMixin]


def _label(model: type[models.Model], field: EncryptedFieldMixin) -> str:
    return f"{model._meta.label}.{field.name}"  # type: ignore[attr-defined]


def _stale(model: type[models.Model], field: EncryptedFieldMixin, current_id: str) -> models.QuerySet:
    """Rows whose token is not under ``current_id``, with the raw token annotated as ``_token``."""
    return (
        model._base_manager.annotate(_token=raw_token(field.attname))  # type: ignore[attr-defined]
        .filter(_token__isnull=False)
        .exclude(_token__startswith=f"{crypto.VERSION}:{current_id}:")
    )


def _count(targets: Iterable[Target], current_id: str) -> dict[str, int]:
    return {_label(m, f): _stale(m, f, current_id).count() for m, f in targets}


def reencrypt_column(
    model: type[models.Model], field: EncryptedFieldMixin, *, batch_size: int, progress: tqdm | None = None
) -> tuple[int, int]:
    """Re-encrypt one column's stale tokens; returns (rewritten, skipped because changed concurrently)."""
    current_id = crypto.current_key_id()
    stale = _stale(model, field, current_id)
    attname = field.attname  # type: ignore[attr-defined]
    done = skipped = 0
    last_pk: Any = None
    while True:  # bounded: pk strictly increases and each page is non-empty
        page = stale if last_pk is None else stale.filter(pk__gt=last_pk)
        rows = list(page.order_by("pk").values_list("pk", "_token")[:batch_size])
        if not rows:
            break
        with transaction.atomic():
            for pk, token in rows:
                try:
                    new = crypto.reencrypt(token, context=field.context)
                except CryptoError as exc:
                    raise CommandError(f"{_label(model, field)} pk={pk}: {exc}") from None
                updated = (
                    model._base_manager.filter(pk=pk)  # type: ignore[attr-defined]
                    .filter(Exact(raw_token(attname), token))
                    .update(**{attname: Ciphertext(new)})
                )
                if updated:
                    done += 1
                else:
                    skipped += (
                        1  # changed since read: the writer used the current key (re-checked at the end)
                    )
        last_pk = rows[-1][0]
        if progress is not None:
            progress.update(len(rows))
    return done, skipped


class Command(BaseCommand):
    help = "Make a new symmetric key current and re-encrypt every encrypted value with it (resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="rows per transaction (default 500)")
        parser.add_argument("--dry-run", action="store_true", help="only count what would be re-encrypted")
        parser.add_argument(
            "--new-key",
            action="store_true",
            help="create a new key even if an earlier rotation has not finished re-encrypting",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            self._run(batch_size, options["dry_run"], options["new_key"], options["verbosity"])
        except CryptoError as exc:
            raise CommandError(str(exc)) from None

    def _run(self, batch_size: int, dry_run: bool, force_new_key: bool, verbosity: int) -> None:
        targets = list(encrypted_fields())
        current_id = crypto.current_key_id()  # fails loudly (with the fix) when there is no key at all
        pending = _count(targets, current_id)
        resume = sum(pending.values()) > 0 and not force_new_key

        if dry_run:
            if resume:
                self.stdout.write(f"would finish the previous rotation to key {current_id} (no new key)")
                counts = pending
            else:
                self.stdout.write(f"would retire key {current_id}, create a new key and re-encrypt:")
                counts = _count(targets, "--------")  # nothing matches: every non-null value counts
            for label, n in counts.items():
                self.stdout.write(f"  {label}: {n}")
            self.stdout.write(f"total: {sum(counts.values())} value(s)")
            return

        if resume:
            self.stdout.write(
                f"{sum(pending.values())} value(s) are still under retired keys: finishing the previous "
                f"rotation to key {current_id} (pass --new-key to create another key anyway)"
            )
        else:
            old_id, new_id = crypto.install_new_key()
            self.stdout.write(
                f"retired key {old_id} to {crypto.retired_keys_dir()}; new current key {new_id}"
            )
            current_id = new_id
            pending = _count(targets, current_id)

        stream = getattr(self.stderr, "_out", sys.stderr)  # raw stream: tqdm redraws with "\r"
        total_done = 0
        # Concurrent writers may race a row; a second pass picks up anything a writer with a stale key left.
        for _attempt in range(3):
            if not sum(pending.values()):
                break
            with tqdm(
                total=sum(pending.values()),
                unit="value",
                desc="re-encrypting",
                file=stream,
                disable=verbosity == 0,
            ) as bar:
                for model, field in targets:
                    if pending.get(_label(model, field)):
                        done, _ = reencrypt_column(model, field, batch_size=batch_size, progress=bar)
                        total_done += done
            pending = _count(targets, current_id)
            if not sum(pending.values()):
                break
        left = sum(pending.values())
        if left:
            raise CommandError(
                f"{left} value(s) are still under retired keys (written concurrently?): rerun rotate_keys"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"re-encrypted {total_done} value(s); every value is under key {current_id}. "
                f"Retired keys in {crypto.retired_keys_dir()} are no longer used by stored data."
            )
        )
