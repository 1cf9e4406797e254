"""Minimal Kubernetes Node objects as the collectors leave them (GPU feature discovery labels)."""

from __future__ import annotations


def gpu_node(name: str, *, gpus: int = 8, model: str = "NVIDIA-A100-SXM4-80GB") -> dict:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "nvidia.com/gpu.product": model,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.memory": "81920",
            },
        },
        "status": {
            "capacity": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
