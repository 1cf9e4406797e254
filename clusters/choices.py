"""Cluster statuses and platforms.

ClusterStatus::

    REGISTERING ──► AVAILABLE ◄──► NOT_AVAILABLE ──(24 h)──► ERROR ──(daily retry ok)──► AVAILABLE
         │                                                                               ▲
         └──► ERROR (registration failed; reason says why)                                │
    PROVISIONING ──► REGISTERING (Terraform produced a kubeconfig)                          │
    any ──► DELETING ──► (row removed)                       NOT_AVAILABLE ──(recovered)──┘
"""

from django.db import models


class ClusterStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    REGISTERING = "registering", "Registering"
    AVAILABLE = "available", "Available"
    NOT_AVAILABLE = "not_available", "Not available"
    ERROR = "error", "Error"
    DELETING = "deleting", "Deleting"

    @classmethod
    def checked_by_sweep(cls) -> frozenset[str]:
        return frozenset({cls.AVAILABLE, cls.NOT_AVAILABLE, cls.ERROR})


class Platform(models.TextChoices):
    KUBERNETES = "kubernetes", "Kubernetes"
    OPENSHIFT = "openshift", "OpenShift"


class ReleaseStatus(models.TextChoices):
    DEPLOYED = "deployed", "Deployed"
    FAILED = "failed", "Failed"
    UNINSTALLED = "uninstalled", "Uninstalled"
