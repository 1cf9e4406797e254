"""Model fields whose database column holds only AES-256-GCM tokens (see ``core.crypto``).

* ``EncryptedTextField`` holds text, ``EncryptedJSONField`` any JSON-serialisable value; both store a
  ``v1:<key id>:<data>`` token in a plain ``text`` column (NULL stays NULL).
* Decryption happens in ``from_db_value``: a wrong or missing key raises ``CryptoError`` while the row loads,
  so a bad key can never surface as data. Encryption happens in ``get_prep_value`` with the current key.
* A value that already is a valid token of this keyring and column (it decrypts) is stored as is, never
  encrypted twice; that is what lets ``rotate_keys`` and ``loaddata`` write tokens through the ORM.
  :class:`Ciphertext` marks a token explicitly and skips that check.
* Ciphertexts are randomised, so equality/containment lookups cannot work: every lookup other than ``isnull``
  (and ``=None``) raises ``FieldError`` instead of silently matching nothing. ``unique``/``db_index`` are
  refused.
* Forms and the admin never see the value: ``formfield()`` returns None, so ModelForms leave the field out.
  Show :func:`describe` / :func:`describe_stored` ("encrypted (key id abcd1234)") instead. ``dumpdata`` writes
  tokens, not plaintext. DRF serializers must exclude these fields explicitly.
* ``context`` (optional, a constant string such as ``"clusters.Cluster.kubeconfig"``) is bound into the AEAD
  associated data: a token copied into another column will not decrypt there. It must never change for
  existing data, so it is an explicit string and not derived from the model name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldError
from django.db import models
from django.db.models.functions import Cast
from django.db.models.lookups import Exact

from core import crypto
from core.crypto import CryptoError

__all__ = [
    "Ciphertext",
    "EncryptedFieldMixin",
    "EncryptedJSONField",
    "EncryptedTextField",
    "describe",
    "describe_stored",
    "encrypted_fields",
    "raw_token",
]


class Ciphertext(str):
    """A string known to be a token already; stored without re-encryption or verification."""

    __slots__ = ()


def describe(token: str | None) -> str:
    """Operator-facing summary of a stored token; never the plaintext nor the ciphertext."""
    if token is None or token == "":
        return "not set"
    if crypto.is_token(token):
        return f"encrypted (key id {crypto.token_key_id(token)})"
    return "encrypted (unrecognised format)"


def raw_token(field_name: str) -> Cast:
    """The raw column (the token) without decryption, e.g. ``annotate(t=raw_token("f"))``."""
    return Cast(field_name, output_field=models.TextField())


def describe_stored(instance: models.Model, field_name: str) -> str:
    """Describe what the database holds for ``instance.<field_name>`` (one query), e.g. for the admin."""
    if instance.pk is None:
        return "not saved yet"
    token = (
        type(instance)
        ._base_manager.filter(pk=instance.pk)
        .annotate(_token=raw_token(field_name))
        .values_list("_token", flat=True)
        .first()
    )
    return describe(token)


_LOOKUP_REFUSED = (
    "{field} is encrypted with a random nonce per value: it can only be filtered with isnull "
    "(lookup {lookup!r} refused)"
)


class _NullOnlyExact(Exact):
    """``field=None`` (which Django turns into IS NULL) is the only equality allowed."""

    def __init__(self, lhs: Any, rhs: Any) -> None:
        if rhs is not None:
            raise FieldError(_LOOKUP_REFUSED.format(field=getattr(lhs, "target", "field"), lookup="exact"))
        super().__init__(lhs, rhs)


class EncryptedFieldMixin:
    """Shared behaviour; subclasses define how a Python value becomes text and back."""

    def __init__(self, *args: Any, context: str | None = None, **kwargs: Any) -> None:
        for flag in ("unique", "primary_key", "db_index"):
            if kwargs.get(flag):
                raise TypeError(f"encrypted fields cannot be {flag}: every ciphertext differs")
        self.context = context
        super().__init__(*args, **kwargs)

    # --- conversion hooks -----------------------------------------------------------------------------------
    def _serialize(self, value: Any) -> str:
        raise NotImplementedError

    def _deserialize(self, text: str) -> Any:
        raise NotImplementedError

    # --- Django field API -----------------------------------------------------------------------------------
    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()  # type: ignore[misc]
        if self.context is not None:
            kwargs["context"] = self.context
        return name, path, args, kwargs

    def _is_own_token(self, value: str) -> bool:
        if not crypto.is_token(value):
            return False
        try:
            crypto.decrypt_bytes(value, context=self.context)
        except CryptoError:
            # Token-shaped but not ours (unknown key, other column): treat it as ordinary data to protect.
            return False
        return True

    def get_prep_value(self, value: Any) -> Any:
        if value is None or hasattr(value, "resolve_expression"):
            return value
        if isinstance(value, Ciphertext):
            return str(value)
        if isinstance(value, str) and self._is_own_token(value):
            return value
        return crypto.encrypt(self._serialize(value), context=self.context)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        return self._deserialize(crypto.decrypt(value, context=self.context))

    def value_to_string(self, obj: models.Model) -> str:
        # Serialisation (dumpdata) carries the token; loaddata stores it back as is (see get_prep_value).
        return self.get_prep_value(self.value_from_object(obj))  # type: ignore[attr-defined]

    def formfield(self, **kwargs: Any) -> None:
        return None

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)  # type: ignore[misc]
        if lookup_name == "exact":
            return _NullOnlyExact
        raise FieldError(_LOOKUP_REFUSED.format(field=self, lookup=lookup_name))

    def get_transform(self, lookup_name: str) -> Any:
        raise FieldError(_LOOKUP_REFUSED.format(field=self, lookup=lookup_name))

    def describe(self, instance: models.Model) -> str:
        return describe_stored(instance, self.name)  # type: ignore[attr-defined]


class EncryptedTextField(EncryptedFieldMixin, models.TextField):
    """Text encrypted at rest."""

    description = "Text encrypted with AES-256-GCM"

    def _serialize(self, value: Any) -> str:
        if isinstance(value, bytes):
            raise TypeError("EncryptedTextField stores text; decode bytes first")
        return str(value)

    def _deserialize(self, text: str) -> str:
        return text

    def to_python(self, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value)


class EncryptedJSONField(EncryptedFieldMixin, models.TextField):
    """A JSON value (dict, list, str, number, bool) encrypted at rest; Python None is SQL NULL."""

    description = "JSON encrypted with AES-256-GCM"

    def __init__(self, *args: Any, encoder: type[json.JSONEncoder] | None = None, **kwargs: Any) -> None:
        self.encoder = encoder
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()
        if self.encoder is not None:
            kwargs["encoder"] = self.encoder
        return name, path, args, kwargs

    def _serialize(self, value: Any) -> str:
        return json.dumps(value, cls=self.encoder, separators=(",", ":"), sort_keys=True)

    def _deserialize(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise CryptoError(f"{self} decrypted to text that is not JSON") from None

    def to_python(self, value: Any) -> Any:
        return value


def encrypted_fields() -> Iterator[tuple[type[models.Model], EncryptedFieldMixin]]:
    """Every (model, encrypted field) of every installed, concrete, managed model.

    Local fields only, so a multi-table-inheritance child does not repeat its parent's columns.
    """
    for model in apps.get_models():
        meta = model._meta
        if meta.proxy or not meta.managed or meta.abstract:
            continue
        for field in meta.local_concrete_fields:
            if isinstance(field, EncryptedFieldMixin):
                yield model, field
