"""Throttling: the client's address, the API's request rates and the limit on failed token logins.

* :func:`client_ip` is the one reading of "who is asking": ``REMOTE_ADDR``, or with ``TRUSTED_PROXY_COUNT=n``
  the address the outermost of n trusted reverse proxies saw (the n-th from the right in ``X-Forwarded-For``,
  as DRF's ``NUM_PROXIES``). The admin's login lockout (django-axes), the API throttles and the failed token
  login limit all count per this address.
* :class:`AnonRateThrottle` / :class:`UserRateThrottle`: DRF's throttles with their rates read per request from
  ``API_THROTTLE_ANON_RATE`` / ``API_THROTTLE_USER_RATE`` (an empty rate turns one off). DRF binds its rates
  when the class is imported; reading them per request lets a deployment (and a test) change them.
* :class:`FailedLoginLimiter`: DRF checks throttles only after authentication, so a request with a wrong token
  is answered 401 before any throttle sees it. ``core.tokens.TokenAuthentication`` counts those failures per
  client address here: past ``API_AUTH_FAILURE_LIMIT`` failures within ``API_AUTH_FAILURE_WINDOW`` seconds,
  every token login from that address is answered 429 until the window ends.

Counters live in Django's default cache (``CACHE_URL``; per process unless it names a Redis).
"""

from __future__ import annotations

import time

from django.core.cache import cache
from rest_framework import throttling

from .conf import setting


def client_ip(request) -> str:
    """The client's address (see the module docstring)."""
    meta = getattr(request, "META", {})
    remote = meta.get("REMOTE_ADDR", "") or ""
    proxies = int(setting("TRUSTED_PROXY_COUNT", 0) or 0)
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        addresses = [a.strip() for a in forwarded.split(",") if a.strip()]
        if addresses:
            return addresses[-min(proxies, len(addresses))]
    return remote


def axes_client_ip(request) -> str:
    """django-axes' ``AXES_CLIENT_IP_CALLABLE``: the same address the API throttles count."""
    return client_ip(request)


class _SettingRate:
    rate_setting = ""

    def get_rate(self) -> str | None:
        return setting(self.rate_setting, None) or None

    def get_ident(self, request) -> str:
        return client_ip(request)


class AnonRateThrottle(_SettingRate, throttling.AnonRateThrottle):
    """Anonymous requests per client address (``API_THROTTLE_ANON_RATE``, e.g. ``60/min``)."""

    rate_setting = "API_THROTTLE_ANON_RATE"


class UserRateThrottle(_SettingRate, throttling.UserRateThrottle):
    """Authenticated requests per user (``API_THROTTLE_USER_RATE``, e.g. ``1200/min``)."""

    rate_setting = "API_THROTTLE_USER_RATE"


class FailedLoginLimiter:
    """Failed token logins of one client address in a fixed window (see the module docstring)."""

    prefix = "budcluster:token-login-failures:"

    def __init__(self, ident: str) -> None:
        self.ident = ident or "unknown"
        self.limit = int(setting("API_AUTH_FAILURE_LIMIT", 20) or 0)
        self.window = float(setting("API_AUTH_FAILURE_WINDOW", 300.0) or 0)
        self._count_key = f"{self.prefix}{self.ident}:count"
        self._start_key = f"{self.prefix}{self.ident}:start"

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.window > 0

    def retry_after(self) -> float | None:
        """Seconds until this address may try again, or None when it may try now."""
        if not self.enabled:
            return None
        if (cache.get(self._count_key) or 0) < self.limit:
            return None
        started = cache.get(self._start_key) or time.time()
        return max(1.0, started + self.window - time.time())

    def failed(self) -> None:
        if not self.enabled:
            return
        timeout = max(1, round(self.window))
        cache.add(self._start_key, time.time(), timeout=timeout)
        if not cache.add(self._count_key, 1, timeout=timeout):
            try:
                cache.incr(self._count_key)
            except ValueError:  # expired between add and incr: a new window
                cache.set(self._count_key, 1, timeout=timeout)

    def reset(self) -> None:
        cache.delete_many([self._count_key, self._start_key])
