"""Node inventory serializers."""

from __future__ import annotations

from rest_framework import serializers

from ..models import Node


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = (
            "name", "ready", "schedulable", "cordoned", "taints", "internal_ip", "roles", "cpu_vendor", "cpu_model",
            "cpu_family", "cpu_cores", "cpu_threads", "cpu_flags", "memory_bytes", "accelerator_type",
            "accelerator_vendor", "accelerator_model", "accelerator_count", "accelerator_memory_mib", "mig",
            "driver_version", "cuda_version", "kernel_version", "allocatable", "requested", "free_accelerators",
            "free_cpu_millicores", "free_memory_bytes", "pods", "notes", "updated_at",
        )  # fmt: skip
