"""Fixtures of the security tests: staff users with exactly the permissions named, a clean throttle cache."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from rest_framework.test import APIClient

from core.tokens import create_token


@pytest.fixture(autouse=True)
def _fresh_counters():
    """Throttle and failed-login counters start empty in every test (and leave nothing for other tests)."""
    cache.clear()
    yield
    cache.clear()


def grant(user, *perms: str):
    """Give ``user`` the permissions named ``app_label.codename`` and return it with a fresh permission cache."""
    for perm in perms:
        app_label, codename = perm.split(".", 1)
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def make_user(django_user_model):
    """``make_user(name, *perms, staff=False)``: a user holding exactly those permissions."""

    def make(name: str, *perms: str, staff: bool = False):
        user = django_user_model.objects.create_user(
            name, f"{name}@example.com", "a-long-test-password", is_staff=staff
        )
        return grant(user, *perms)

    return make


@pytest.fixture
def view_only_staff(make_user):
    """A staff user with every view permission and nothing else (what the issue's attacker had)."""
    user = make_user("viewonly", staff=True)
    view_perms = Permission.objects.filter(codename__startswith="view_").select_related("content_type")
    return grant(user, *(f"{p.content_type.app_label}.{p.codename}" for p in view_perms))


def api_client(user) -> APIClient:
    """An API client sending a fresh token of ``user``."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user)[1]}")
    return client
