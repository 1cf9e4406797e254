"""Clusters, their event log, and the chart releases BudCluster installed on them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.fields import EncryptedTextField
from core.models import StatusEvent

from .choices import ClusterStatus, Platform, ReleaseStatus


class Cluster(models.Model):
    name = models.CharField(max_length=100, unique=True)
    platform = models.CharField(max_length=20, choices=Platform.choices, default=Platform.KUBERNETES)
    server_url = models.CharField(max_length=500, db_index=True, blank=True)
    status = models.CharField(
        max_length=20, choices=ClusterStatus.choices, default=ClusterStatus.REGISTERING, db_index=True
    )
    reason = models.TextField(blank=True)
    ingress_url = models.URLField(max_length=500, blank=True)
    kubeconfig = EncryptedTextField(blank=True, context="clusters.Cluster.kubeconfig")
    context_name = models.CharField(max_length=200, blank=True)
    kubernetes_version = models.CharField(max_length=50, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    not_available_since = models.DateTimeField(null=True, blank=True)
    last_checked = models.DateTimeField(null=True, blank=True)
    last_retry_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        permissions = [("check_cluster", "Can run a health check on a cluster")]

    def __str__(self) -> str:
        return self.name


class ClusterEvent(StatusEvent):
    """Append-only log of a cluster's status changes (registration, health transitions, deletion)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="events")

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.kind}: {self.message}"


class Release(models.Model):
    """A chart installed on a cluster through the gateway (collectors, a model runtime, a transfer job)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="releases")
    name = models.CharField(max_length=53)
    namespace = models.CharField(max_length=63)
    chart = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=ReleaseStatus.choices, default=ReleaseStatus.DEPLOYED)
    current_revision = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "namespace", "name"], name="release_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.chart} r{self.current_revision})"


class Revision(models.Model):
    """One rendering of a release: the values, the rendered manifest and the objects it applied."""

    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    manifest = models.TextField()
    applied = models.JSONField(default=list, help_text="[{apiVersion, kind, name, namespace}] applied")
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("release", "number")
        constraints = [models.UniqueConstraint(fields=["release", "number"], name="revision_unique_number")]

    def __str__(self) -> str:
        return f"{self.release} revision {self.number}"
