"""Create the first admin user (and its API token) when no superuser exists; print the credentials once.

Only the token's digest is stored: the key printed here cannot be shown again (make another with
``manage.py create_token USERNAME``)."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from core.tokens import create_token


class Command(BaseCommand):
    help = "Create an admin user with a random password and an API token if there is no superuser yet."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@localhost")

    def handle(self, *args, username: str, email: str, **options) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write("An admin user already exists; credentials are not shown again.")
            return
        password = secrets.token_urlsafe(18)
        user = users.objects.create_superuser(username=username, email=email, password=password)
        _token, key = create_token(user)
        self.stdout.write(self.style.SUCCESS("Created the admin user (shown only this once):"))
        self.stdout.write(f"  username:  {username}")
        self.stdout.write(f"  password:  {password}")
        self.stdout.write(f"  API token: {key}   (send as 'Authorization: Token <key>')")
