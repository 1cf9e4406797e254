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
from datetime import timedelta
from hmac import compare_digest
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import OuterRef
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

from .permissions import permission_names
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
        candidates = (
            AuthToken.objects.filter(token_key=text[: CONSTANTS.TOKEN_KEY_LENGTH])
            .select_related("user")
            .annotate(user_permissions=ArraySubquery(permission_names(OuterRef("user_id"))))
        )
        for auth_token in candidates:
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
                    user._perm_cache = set(auth_token.user_permissions)
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
