"""Settings read by core and app modules that also run outside the configured service (scripts, the
devcluster, pure tests)."""

from __future__ import annotations

from typing import Any


def setting(name: str, default: Any) -> Any:
    """A Django setting, read when called; ``default`` when it is unset or Django is not configured."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return getattr(settings, name, default)
    except ImproperlyConfigured:
        return default
