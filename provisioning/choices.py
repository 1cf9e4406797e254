"""Choices of the provisioning app.

ProvisioningStatus (one provisioning record per cluster)::

    PENDING ──► PLANNING ──► AWAITING_APPROVAL ──► APPLYING ──► REGISTERING ──► PROVISIONED
        │            │               │                 │              │
        └────────────┴───────────────┴─────────────────┴──────────────┴──► FAILED / CANCELLED
    PROVISIONED / FAILED / CANCELLED ──► DESTROYING ──► DESTROYED (cluster deletion)
    FAILED / CANCELLED ──► PLANNING (provision again: the same state is planned anew)
"""

from django.db import models


class CloudProvider(models.TextChoices):
    AWS = "aws", "AWS (EKS)"
    AZURE = "azure", "Azure (AKS)"


class StateBackend(models.TextChoices):
    PG = "pg", "PostgreSQL (pg backend)"
    LOCAL = "local", "Local file"


class ProvisioningStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PLANNING = "planning", "Planning"
    AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
    APPLYING = "applying", "Applying"
    REGISTERING = "registering", "Registering"
    PROVISIONED = "provisioned", "Provisioned"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    DESTROYING = "destroying", "Destroying"
    DESTROYED = "destroyed", "Destroyed"

    @classmethod
    def active(cls) -> frozenset[str]:
        return frozenset(
            {cls.PENDING, cls.PLANNING, cls.AWAITING_APPROVAL, cls.APPLYING, cls.REGISTERING, cls.DESTROYING}
        )

    @classmethod
    def restartable(cls) -> frozenset[str]:
        """A new provisioning run may start from these."""
        return frozenset({cls.FAILED, cls.CANCELLED})


# Secret fields a credential of each provider must carry (and optional ones), in the names the API accepts.
CREDENTIAL_SECRET_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    CloudProvider.AWS: (("access_key_id", "secret_access_key"), ("session_token",)),
    CloudProvider.AZURE: (("client_id", "client_secret"), ()),
}
