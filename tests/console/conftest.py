"""Fixtures of the console (admin) tests: staff users holding exactly the permissions named."""

from __future__ import annotations

import pytest

from tests.security.conftest import grant


@pytest.fixture
def make_user(django_user_model):
    """``make_user(name, *perms)``: a staff user holding exactly those permissions."""

    def make(name: str, *perms: str):
        user = django_user_model.objects.create_user(
            name, f"{name}@example.com", "a-long-test-password", is_staff=True
        )
        return grant(user, *perms)

    return make
