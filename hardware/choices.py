"""Accelerator types of a node (the device family placement chooses between)."""

from django.db import models


class AcceleratorType(models.TextChoices):
    CUDA = "cuda", "NVIDIA GPU (CUDA)"
    ROCM = "rocm", "AMD GPU (ROCm)"
    HPU = "hpu", "Intel Gaudi (HPU)"
    CPU = "cpu", "CPU only"
