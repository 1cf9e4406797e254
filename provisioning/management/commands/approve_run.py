"""Approve the Terraform plan of a provisioning run waiting for it (same as POST /runs/{id}/approve)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from core.models import Run
from provisioning import services


class Command(BaseCommand):
    help = "Approve the plan of a provisioning run; the apply starts right away."

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_id")

    def handle(self, *args, run_id: str, **options) -> None:
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"no run {run_id}")
        try:
            provisioning = services.approve(run)
        except services.ProvisioningRefused as exc:
            raise CommandError(str(exc)) from None
        summary = provisioning.plan_summary or {}
        self.stdout.write(
            self.style.SUCCESS(
                f"approved: {summary.get('add', 0)} to add, {summary.get('change', 0)} to change, "
                f"{summary.get('destroy', 0)} to destroy on {provisioning.cluster}"
            )
        )
