"""Provision a new cluster with Terraform (EKS / AKS) and follow the run until it ends.

    manage.py provision gpu-prod --provider aws --region us-east-1 --credential aws-prod \\
        --system-pool m6i.large:2:1:3 --gpu-pool a10:g5.xlarge:1:0:2 --auto-approve

Without ``--auto-approve`` the run stops after the plan and waits for an approval
(``manage.py approve_run RUN_ID``, ``POST /runs/{id}/approve`` or the admin action).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from core.choices import RunStatus
from core.progress import follow_run
from provisioning import services


def _pool(spec: str, *, role: str, name: str | None = None) -> dict:
    """``[name:]instance_type:desired[:min[:max]]`` → a node pool."""
    parts = spec.split(":")
    if role == "gpu":
        if len(parts) < 2:
            raise CommandError(f"--gpu-pool {spec!r}: expected name:instance_type[:desired[:min[:max]]]")
        name, parts = parts[0], parts[1:]
    try:
        instance_type = parts[0]
        desired = int(parts[1]) if len(parts) > 1 else (2 if role == "system" else 1)
        low = int(parts[2]) if len(parts) > 2 else (1 if role == "system" else 0)
        high = int(parts[3]) if len(parts) > 3 else max(desired, low, 1)
    except ValueError:
        raise CommandError(f"node pool {spec!r}: sizes must be integers") from None
    return {
        "name": name or "system",
        "role": role,
        "instance_type": instance_type,
        "desired_size": desired,
        "min_size": low,
        "max_size": high,
    }


class Command(BaseCommand):
    help = "Provision a cluster on AWS EKS or Azure AKS with Terraform, register it, and follow the run."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="cluster name (also the cloud cluster's name)")
        parser.add_argument("--provider", required=True, choices=["aws", "azure"])
        parser.add_argument("--region", required=True, help="AWS region or Azure location")
        parser.add_argument("--credential", required=True, help="cloud credential name or id")
        parser.add_argument("--kubernetes-version", default="1.31")
        parser.add_argument(
            "--system-pool",
            default="m6i.large:2:1:3",
            help="instance_type[:desired[:min[:max]]] of the system pool (default m6i.large:2:1:3)",
        )
        parser.add_argument(
            "--gpu-pool",
            action="append",
            default=[],
            help="name:instance_type[:desired[:min[:max]]]; repeat for several GPU pools",
        )
        parser.add_argument("--auto-approve", action="store_true", help="apply the plan without approval")
        parser.add_argument("--no-wait", action="store_true", help="start the run and return")
        parser.add_argument("--timeout", type=float, default=7200.0)

    def handle(self, *args, name: str, **options) -> None:
        pools = [_pool(options["system_pool"], role="system")]
        pools += [_pool(spec, role="gpu") for spec in options["gpu_pool"]]
        try:
            credential = services.find_credential(options["credential"])
            provisioning, run = services.create_and_provision(
                name=name,
                provider=options["provider"],
                region=options["region"],
                kubernetes_version=options["kubernetes_version"],
                node_pools=pools,
                credential=credential,
                auto_approve=options["auto_approve"],
            )
        except services.ProvisioningRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"cluster {name} (id {provisioning.cluster_id}); provisioning run {run.pk}")
        if not options["auto_approve"]:
            self.stdout.write(f"the plan will wait for approval: manage.py approve_run {run.pk}")
        if options["no_wait"]:
            return
        run = follow_run(run, self.stdout, timeout=options["timeout"])
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"provisioning {run.status}: {run.error}")
        self.stdout.write(self.style.SUCCESS(f"cluster {name} provisioned and registered"))
