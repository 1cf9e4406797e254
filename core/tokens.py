"""API tokens: stored hashed, shown once.

Tokens are django-rest-knox ``AuthToken`` rows: 64 random hex characters of which the database keeps only the
SHA-512 digest (and knox's 15-character lookup prefix), so neither the database nor any admin page can give a
key back. A key exists only in the return value of :func:`create_token`, which ``manage.py ensure_admin``,
``manage.py create_token`` and the admin's "Add token" page print or show once. Clients send it as before:
``Authorization: Token <key>``.

:class:`TokenAuthentication` is knox's, reading the user's permissions with the token (one query for both, where
knox and Django's permission check take four), plus the limit on failed token logins per client address
(``core.throttling.FailedLoginLimiter``: 429 with ``Retry-After`` once exceeded) and a 401, not a 500, for a
header that is not UTF-8. The OpenAPI schema names it ``tokenAuth``, as before.
"""

from __future__ import annotations

import binascii
import functools
from datetime import timedelta
from hmac import compare_digest
from typing import Any

from django.db import connection
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings
from knox.signals import token_expired
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

from .throttling import FailedLoginLimiter, client_ip

_DEFAULT = object()


def create_token(user: Any, *, days: Any = _DEFAULT) -> tuple[AuthToken, str]:
    """A new API token of ``user``: ``(row, key)``. The key is in this return value only (the row holds its
    digest): show it once. ``days``: lifetime (0 or None: no expiry); by default ``API_TOKEN_TTL_DAYS``."""
    expiry = knox_settings.TOKEN_TTL if days is _DEFAULT else _lifetime(days)
    return AuthToken.objects.create(user=user, expiry=expiry)


def _lifetime(days: Any) -> timedelta | None:
    return timedelta(days=float(days)) if days else None


class TokenAuthentication(KnoxTokenAuthentication):
    """``Authorization: Token <key>`` against hashed tokens, with failed logins limited per client address."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.authenticate_header(request).encode().lower():
            return None  # no token offered: another authentication (or none) applies
        limiter = FailedLoginLimiter(client_ip(request))
        wait = limiter.retry_after()
        if wait is not None:
            raise exceptions.Throttled(
                wait=wait, detail="Too many failed token logins from this address; try again later."
            )
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            limiter.failed()
            raise
        except ValueError:  # knox decodes the key as UTF-8 (UnicodeDecodeError is a ValueError)
            limiter.failed()
            raise exceptions.AuthenticationFailed("Invalid token.") from None

    def authenticate_credentials(self, token: bytes):
        """knox's, with the user's permissions read in the same query as the token and its user (PostgreSQL): the
        permission check that follows in every view then needs no query of its own."""
        if connection.vendor != "postgresql":
            return super().authenticate_credentials(token)
        text = token.decode("utf-8")
        for auth_token, permissions in _candidates(text[: CONSTANTS.TOKEN_KEY_LENGTH]):
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(text)
            except (TypeError, binascii.Error):
                raise exceptions.AuthenticationFailed("Invalid token.") from None
            if compare_digest(digest, auth_token.digest):
                if knox_settings.AUTO_REFRESH and auth_token.expiry:
                    self.renew_token(auth_token)
                user, auth = self.validate_user(auth_token)
                if not user.is_superuser:
                    user._perm_cache = set(permissions)
                return user, auth
        raise exceptions.AuthenticationFailed("Invalid token.")

    def _cleanup_token(self, auth_token) -> bool:
        """Refuse (and delete) this token if it has expired. knox's own version also reads every other token of
        the user on each request, to delete the expired ones: a query per API request. Those stay until they are
        used or deleted in the admin (which shows them as expired); none of them authenticates."""
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            username = auth_token.user.get_username()
            auth_token.delete()
            token_expired.send(sender=self.__class__, username=username, source="auth_token")
            return True
        return False


class TokenScheme(OpenApiAuthenticationExtension):
    """The schema's security scheme for :class:`TokenAuthentication` (kept as ``tokenAuth`` for clients)."""

    target_class = "core.tokens.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix=knox_settings.AUTH_HEADER_PREFIX
        )


# --- the token query ------------------------------------------------------------------------------------------
# Every API request runs it, and building it with the ORM (a join, an ARRAY subquery with two IN subqueries)
# cost more CPU than the database spends answering it (about 3 ms against 0.2 ms; benchmarks/api_load.py
# --profile). So its SQL is written once per process, from the models' own table and column names, and the rows
# become model instances with ``Model.from_db``, as the ORM itself does. It goes through Django's cursor, so it
# is counted and logged like any other query.


@functools.cache
def _token_query() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``(sql, token field names, user field names)``: one row per token with the key's prefix, its user's
    columns, then the ``app_label.codename`` of every permission the user holds (own and through groups)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    q = connection.ops.quote_name
    user_model = get_user_model()
    own = user_model.user_permissions.through._meta
    membership = user_model.groups.through._meta
    granted = Group.permissions.through._meta

    def col(meta, field: str) -> str:
        return q(meta.get_field(field).column)

    token, user, perm = AuthToken._meta, user_model._meta, Permission._meta
    token_fields = tuple(f.attname for f in token.concrete_fields)
    user_fields = tuple(f.attname for f in user.concrete_fields)
    user_id = f"t.{col(token, 'user')}"
    permissions = (
        f"ARRAY(SELECT ct.{q('app_label')} || '.' || p.{col(perm, 'codename')}"  # noqa: S608
        f" FROM {q(perm.db_table)} p"
        f" JOIN {q(ContentType._meta.db_table)} ct ON ct.{q('id')} = p.{col(perm, 'content_type')}"
        f" WHERE p.{q(perm.pk.column)} IN (SELECT {col(own, 'permission')} FROM {q(own.db_table)}"
        f" WHERE {col(own, 'user')} = {user_id})"
        f" OR p.{q(perm.pk.column)} IN (SELECT gp.{col(granted, 'permission')} FROM {q(granted.db_table)} gp"
        f" JOIN {q(membership.db_table)} m ON m.{col(membership, 'group')} = gp.{col(granted, 'group')}"
        f" WHERE m.{col(membership, 'user')} = {user_id}))"
    )
    columns = [f"t.{col(token, name)}" for name in token_fields] + [
        f"u.{col(user, name)}" for name in user_fields
    ]
    sql = (
        f"SELECT {', '.join(columns)}, {permissions}"  # noqa: S608
        f" FROM {q(token.db_table)} t JOIN {q(user.db_table)} u ON u.{q(user.pk.column)} = {user_id}"
        f" WHERE t.{col(token, 'token_key')} = %s"
    )
    return sql, token_fields, user_fields


def _candidates(key_prefix: str) -> list[tuple[AuthToken, list[str]]]:
    """The tokens whose key starts with ``key_prefix`` (with their users loaded) and their users' permissions."""
    from django.contrib.auth import get_user_model

    sql, token_fields, user_fields = _token_query()
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_prefix])
        rows = cursor.fetchall()
    found = []
    split = len(token_fields)
    for row in rows:
        auth_token = AuthToken.from_db(connection.alias, token_fields, row[:split])
        auth_token.user = get_user_model().from_db(
            connection.alias, user_fields, row[split : split + len(user_fields)]
        )
        found.append((auth_token, row[-1] or []))
    return found
