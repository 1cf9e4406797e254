"""Fixtures for the secret-canary lifecycle: a two-cluster devcluster, the offline Terraform toolchain for the
worker, fast deployment polls.

The session's Celery worker starts after collection and inherits this environment, so the variables are set
here at import time (as the provisioning-flow and deployment fixtures do).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devcluster.sim.config import SimConfig
from devcluster.testing import devcluster_fixture
from provisioning.toolchain import provider_mirror_config

REPO = Path(__file__).resolve().parents[2]
os.environ["TF_CLI_CONFIG_FILE"] = str(provider_mirror_config(REPO / "var" / "test-terraform" / "toolchain"))
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.3")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.3")

canary_dc = devcluster_fixture(
    name="canary_dc", nodes="gpu-mixed", clusters=2, scope="module", sim_config=SimConfig(job_duration=1.5)
)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
