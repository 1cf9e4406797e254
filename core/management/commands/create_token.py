"""Create an API token for a user and print its key once (only its digest is stored)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.tokens import create_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print the key (shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--days",
            type=float,
            default=None,
            help="lifetime in days (0: no expiry); default API_TOKEN_TTL_DAYS",
        )
        parser.add_argument("--quiet", action="store_true", help="print the key alone (for scripts)")

    def handle(self, *args, username: str, days: float | None, quiet: bool, **options) -> None:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}")
        if days is not None and days < 0:
            raise CommandError("--days must be 0 (no expiry) or more")
        token, key = create_token(user) if days is None else create_token(user, days=days)
        if quiet:
            self.stdout.write(key)
            return
        until = f"valid until {token.expiry:%Y-%m-%d %H:%M} UTC" if token.expiry else "no expiry"
        self.stdout.write(self.style.SUCCESS(f"API token of {username} ({until}), shown only this once:"))
        self.stdout.write(f"  {key}   (send as 'Authorization: Token <key>')")
