"""Simulation timings and global overrides (`SimConfig`), with documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


@dataclass
class SimConfig:
    """Knobs of the simulated cluster; the CLI and presets may override any of them.

    Delays are seconds of wall time.  The inference overrides (`ttft_ms`, `itl_ms`, `fail_rate`,
    `stall_after_tokens`) apply to every simulated serving pod unless the pod sets its own DEVCLUSTER_* env.
    """

    pod_start_delay: float = 0.5  # bound (ContainerCreating) -> Running
    pod_ready_delay: float = 0.5  # Running -> Ready
    job_duration: float = 2.0  # how long a Job's pod (or any restartPolicy Never/OnFailure pod) runs
    crash_backoff: float = 1.0  # first CrashLoopBackOff / ImagePullBackOff delay; doubles, capped at 16x
    max_restarts: int = 20  # a crashing container stops being restarted after this many (keeps idle CPU flat)
    transfer_progress_interval: float = 0.5  # how often a model-transfer Job updates its progress ConfigMap
    lb_listen: bool = True  # open real loopback listeners for LoadBalancer Services / Ingress
    lb_pool_prefix: str = "127.0.1."  # LoadBalancer addresses: prefix + 1..254 (like a MetalLB pool)
    ingress_port: int = 80  # port the simulated ingress controller listens on at its LB address
    ttft_ms: float | None = None
    itl_ms: float | None = None
    fail_rate: float | None = None
    stall_after_tokens: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, prefix: str = "DEVCLUSTER_SIM_") -> SimConfig:
        """Defaults overridden by DEVCLUSTER_SIM_<FIELD> environment variables (e.g. ..._JOB_DURATION=5)."""
        cfg = cls()
        for f in fields(cls):
            raw = os.environ.get(prefix + f.name.upper())
            if raw is None or f.name == "extra":
                continue
            current = getattr(cfg, f.name)
            if isinstance(current, bool):
                setattr(cfg, f.name, raw.lower() in ("1", "true", "yes", "on"))
            elif f.name in ("max_restarts", "ingress_port", "stall_after_tokens"):
                setattr(cfg, f.name, int(raw))
            elif f.name == "lb_pool_prefix":
                setattr(cfg, f.name, raw)
            else:
                setattr(cfg, f.name, float(raw))
        return cfg
