"""Approve the Terraform plan of a provisioning run waiting for it (same as POST /runs/{id}/approve).

The approver is named with ``--as USERNAME`` (or ``BUDCLUSTER_OPERATOR``): the command approves as that user, with
the same rules as the API and the admin (``provisioning.services.approve``): the user needs ``core.approve_run``
and ``provisioning.view_provisioning`` and, while ``PROVISIONING_APPROVER_MUST_DIFFER`` is on, did not request
the run. The approval is recorded under that name.
"""

from __future__ import annotations

import os
import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.models import Run
from provisioning import services


class Command(BaseCommand):
    help = "Approve the plan of a provisioning run as --as USERNAME; the apply starts right away."

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_id")
        parser.add_argument(
            "--as",
            dest="operator",
            default=os.environ.get("BUDCLUSTER_OPERATOR", ""),
            metavar="USERNAME",
            help="the user approving (needs core.approve_run and provisioning.view_provisioning; not the "
            "requester); default: $BUDCLUSTER_OPERATOR",
        )

    def handle(self, *args, run_id: str, operator: str, **options) -> None:
        if not operator:
            raise CommandError("name the approver: --as USERNAME (or set BUDCLUSTER_OPERATOR)")
        user = get_user_model().objects.filter(username=operator).first()
        if user is None:
            raise CommandError(f"no user {operator!r}")
        run = Run.objects.filter(pk=run_id).first() if _is_uuid(run_id) else None
        if run is None:
            raise CommandError(f"no run {run_id}")
        try:
            provisioning = services.approve(run, user)
        except services.ProvisioningRefused as exc:
            raise CommandError(f"{exc} ({exc.code})") from None
        summary = provisioning.plan_summary or {}
        self.stdout.write(
            self.style.SUCCESS(
                f"approved by {operator}: {summary.get('add', 0)} to add, {summary.get('change', 0)} to change, "
                f"{summary.get('destroy', 0)} to destroy on {provisioning.cluster}"
            )
        )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
