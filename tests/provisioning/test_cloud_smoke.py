"""Real-cloud smoke test: applies the EKS or AKS module, mints BudCluster's credential on it, destroys.

Costs money and takes ~20 minutes per cloud, so it is skipped unless BUDCLUSTER_CLOUD_SMOKE=1 and the
cloud's credentials are in the environment. Providers are downloaded from the registry, so it also needs
registry access and Terraform >= 1.5 (set TERRAFORM_BINARY). State goes to a local file in a temp dir.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import yaml

from core.gateway import ClusterGateway
from provisioning import cloud_auth
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
            outputs = {key: out.value for key, out in tf.output().items()}
            assert outputs["cluster_name"] == name and "kubeconfig" not in outputs
            minted = _mint(module, outputs, env)
            user = yaml.safe_load(minted.kubeconfig)["users"][0]["user"]
            assert set(user) == {"token"}
            with ClusterGateway(yaml.safe_load(minted.kubeconfig), reuse=False) as gw:
                review = gw.request(
                    "POST",
                    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                    body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                )
            assert review["status"]["userInfo"]["username"] == "system:serviceaccount:kube-system:budcluster"
            state = (tmp_path / "terraform.tfstate").read_text()
            assert user["token"] not in state
            # AKS without local accounts: the cluster resource's kube_config carries no key or password.
            assert _credential_attributes(json.loads(state)) == []
        finally:
            tf.destroy(on_log=lines.append)
    for value in env.values():
        assert all(value not in line for line in lines)


def _credential_attributes(node, path: str = "") -> list[str]:
    """Paths of non-empty credential attributes anywhere in a state document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("client_key", "client_certificate", "password") and value:
                found.append(f"{path}.{key}")
            found += _credential_attributes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _credential_attributes(value, f"{path}[{index}]")
    return found


def _mint(module: str, outputs: dict, env: dict) -> cloud_auth.MintedCredential:
    """BudCluster's credential step, polled until the new cluster accepts the cloud identity (Azure role
    assignments take minutes to propagate)."""
    if module == "aws-eks":
        bootstrap = cloud_auth.eks_token(
            outputs["cluster_name"],
            outputs["region"],
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            session_token=env.get("AWS_SESSION_TOKEN"),
        )
    else:
        bootstrap = cloud_auth.aks_token(
            tenant_id=env["ARM_TENANT_ID"],
            client_id=env["ARM_CLIENT_ID"],
            client_secret=env["ARM_CLIENT_SECRET"],
        )
    deadline = time.monotonic() + 900
    while True:
        try:
            return cloud_auth.mint(
                server=outputs["cluster_endpoint"],
                ca_data=outputs["cluster_ca_certificate"],
                bootstrap=bootstrap,
                cluster_name=outputs["cluster_name"],
                also_hide=env.values(),
            )
        except cloud_auth.NotReady:
            if time.monotonic() > deadline:
                raise
            time.sleep(10)
