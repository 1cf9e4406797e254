"""Real-cloud smoke test: plans and applies the EKS or AKS module, reads the kubeconfig, destroys.

Costs money and takes ~20 minutes per cloud, so it is skipped unless BUDCLUSTER_CLOUD_SMOKE=1 and the
cloud's credentials are in the environment. Providers are downloaded from the registry, so it also needs
registry access and Terraform >= 1.5 (set TERRAFORM_BINARY). State goes to a local file in a temp dir.
"""

from __future__ import annotations

import os
import uuid

import pytest
import yaml

from provisioning.terraform import TerraformRunner
from tests.provisioning.conftest import REPO

pytestmark = [
    pytest.mark.cloud,
    pytest.mark.skipif(os.environ.get("BUDCLUSTER_CLOUD_SMOKE") != "1", reason="BUDCLUSTER_CLOUD_SMOKE!=1"),
]

CLOUDS = {
    "aws-eks": (
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SESSION_TOKEN",),
        {"region": os.environ.get("BUDCLUSTER_SMOKE_AWS_REGION", "us-east-1")},
    ),
    "azure-aks": (
        ("ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID"),
        (),
        {"location": os.environ.get("BUDCLUSTER_SMOKE_AZURE_LOCATION", "eastus")},
    ),
}


@pytest.mark.parametrize("module", sorted(CLOUDS))
def test_provision_and_destroy_real_cluster(module, tmp_path):
    required, optional, variables = CLOUDS[module]
    missing = [name for name in required if not os.environ.get(name)]
    if missing:
        pytest.skip(f"credentials missing: {', '.join(missing)}")
    env = {name: os.environ[name] for name in (*required, *optional) if os.environ.get(name)}
    name = f"bud-smoke-{uuid.uuid4().hex[:6]}"
    lines: list[str] = []
    with TerraformRunner(
        REPO / "terraform" / "modules" / module,
        backend="local",
        state_path=tmp_path / "terraform.tfstate",
        variables={"cluster_name": name, **variables},
        env=env,
    ) as tf:
        tf.init(on_log=lines.append)
        try:
            plan = tf.plan(on_log=lines.append)
            assert plan.add > 0
            tf.apply(plan, on_log=lines.append)
            outputs = tf.output()
            assert outputs["cluster_name"].value == name
            kubeconfig = yaml.safe_load(outputs["kubeconfig"].value)
            assert "token" in kubeconfig["users"][0]["user"]
            assert "exec" not in kubeconfig["users"][0]["user"]
        finally:
            tf.destroy(on_log=lines.append)
    for value in env.values():
        assert all(value not in line for line in lines)
