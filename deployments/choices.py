"""Status and type choices of the deployments app.

DeploymentStatus::

    PENDING ──► DEPLOYING ──► RUNNING ◄──► DEGRADED          (health beat: ready replicas, endpoint answer)
                   │             │  ▲         │
                   │             ▼  │         ▼
                   └──► FAILED ◄─────────── FAILED            (deploy run failed or cancelled; or no replica
                                                                ready and the endpoint silent)
    RUNNING/DEGRADED ──► DEPLOYING (scale, upgrade, rollback run) ──► RUNNING | DEGRADED
    any but DELETED ──► DELETING ──► DELETED                  (every object and the namespace removed)

The deploy run sets DEPLOYING/RUNNING/FAILED; the health beat moves RUNNING/DEGRADED/FAILED (only while the
runtime release is installed) and records each transition as a ``DeploymentEvent``.
"""

from django.db import models


class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DEPLOYING = "deploying", "Deploying"
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"

    @classmethod
    def active(cls) -> frozenset[str]:
        """Statuses that hold objects on the cluster (or are about to)."""
        return frozenset({cls.PENDING, cls.DEPLOYING, cls.RUNNING, cls.DEGRADED, cls.DELETING})

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.FAILED, cls.DELETED})

    @classmethod
    def checked_by_health(cls) -> frozenset[str]:
        return frozenset({cls.RUNNING, cls.DEGRADED, cls.FAILED})


class DeviceType(models.TextChoices):
    AUTO = "auto", "Auto"
    CUDA = "cuda", "NVIDIA CUDA"
    ROCM = "rocm", "AMD ROCm"
    HPU = "hpu", "Intel Gaudi HPU"
    CPU = "cpu", "CPU"


class Engine(models.TextChoices):
    VLLM = "vllm", "vLLM"


class ModelSource(models.TextChoices):
    HF = "hf", "Hugging Face hub"
    S3 = "s3", "S3-compatible storage"
    NONE = "none", "No transfer (the engine downloads the model itself)"


class WorkerPhase(models.TextChoices):
    PENDING = "Pending", "Pending"
    RUNNING = "Running", "Running"
    SUCCEEDED = "Succeeded", "Succeeded"
    FAILED = "Failed", "Failed"
    UNKNOWN = "Unknown", "Unknown"
    DELETING = "Deleting", "Deleting"


class BenchmarkStatus(models.TextChoices):
    """PENDING ──► RUNNING ──► SUCCEEDED | FAILED | CANCELLED (a cancelled run keeps what finished: ``partial``).

    FAILED: the benchmark could not run (endpoint refused, dataset missing) or no request succeeded.
    """

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def active(cls) -> frozenset[str]:
        return frozenset({cls.PENDING, cls.RUNNING})

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})
