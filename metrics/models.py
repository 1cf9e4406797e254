"""The one figure of /metrics that no other table holds: how long the periodic health sweeps take."""

from __future__ import annotations

from django.db import models


class SweepTiming(models.Model):
    """Running totals of one periodic sweep (``clusters``: cluster health, ``deployments``: deployment health).

    ``count`` and ``sum_seconds`` only grow (a Prometheus summary's ``_count`` and ``_sum``), so a rate over them
    is the mean sweep duration; ``last_seconds`` and ``last_finished_at`` describe the latest sweep."""

    sweep = models.CharField(max_length=50, primary_key=True)
    count = models.BigIntegerField(default=0)
    sum_seconds = models.FloatField(default=0.0)
    last_seconds = models.FloatField(default=0.0)
    last_finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("sweep",)

    def __str__(self) -> str:
        return f"{self.sweep} sweep: {self.count} runs"
