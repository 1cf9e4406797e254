"""The node inventory: one row per node of a cluster, parsed from its Node object (``hardware.inventory``)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from .choices import AcceleratorType


class Node(models.Model):
    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=253)
    ready = models.BooleanField(default=False)
    schedulable = models.BooleanField(default=True)
    cordoned = models.BooleanField(default=False)
    taints = models.JSONField(default=list, blank=True)
    internal_ip = models.CharField(max_length=64, blank=True)
    roles = models.JSONField(default=list, blank=True)

    cpu_vendor = models.CharField(max_length=50, null=True, blank=True)
    cpu_model = models.CharField(max_length=200, null=True, blank=True)
    cpu_family = models.IntegerField(null=True, blank=True)
    cpu_cores = models.IntegerField(null=True, blank=True)
    cpu_threads = models.IntegerField(null=True, blank=True)
    cpu_flags = models.JSONField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)

    accelerator_type = models.CharField(
        max_length=10, choices=AcceleratorType.choices, default=AcceleratorType.CPU, db_index=True
    )
    accelerator_vendor = models.CharField(max_length=50, null=True, blank=True, db_index=True)
    accelerator_model = models.CharField(max_length=200, null=True, blank=True, db_index=True)
    accelerator_resource = models.CharField(max_length=100, null=True, blank=True)
    accelerator_count = models.IntegerField(
        null=True,
        default=0,
        help_text="Whole devices; empty when a labeller saw devices that nothing counted",
    )
    accelerator_memory_mib = models.IntegerField(null=True, blank=True)
    mig = models.JSONField(null=True, blank=True)
    driver_version = models.CharField(max_length=50, null=True, blank=True)
    cuda_version = models.CharField(max_length=50, null=True, blank=True)
    kernel_version = models.CharField(max_length=200, null=True, blank=True)

    allocatable = models.JSONField(default=dict, blank=True)
    requested = models.JSONField(default=dict, blank=True, help_text="What running pods request on this node")
    free_accelerators = models.IntegerField(default=0)
    free_cpu_millicores = models.BigIntegerField(default=0)
    free_memory_bytes = models.BigIntegerField(default=0)
    pods = models.IntegerField(default=0)
    notes = models.JSONField(default=list, blank=True)
    fingerprint = models.CharField(
        max_length=32, blank=True, help_text="Hash of the parsed values (skip unchanged)"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("cluster", "name")
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="node_unique_per_cluster")]

    def __str__(self) -> str:
        return f"{self.cluster_id}/{self.name}"
