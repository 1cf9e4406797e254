"""Static checks of the cloud modules (no cloud, no provider downloads here): contract and safety rules.

``terraform validate`` needs the aws/azurerm providers, which cannot be installed where only PyPI is
reachable, so the modules are read with python-hcl2 and ``terraform fmt`` (syntax only) is run with the
Terraform binary available.

The rule that matters most: no credential of the cluster in the state. Terraform keeps every output and every
resource attribute there in plain text, so the cloud modules create no Kubernetes object (no kubernetes
provider, no token Secret), output no kubeconfig, and on AKS disable the local accounts whose client key the
cluster resource would otherwise carry. BudCluster mints the credential after apply (provisioning/cloud_auth.py).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from provisioning.hcl import load_module, unquote
from provisioning.toolchain import find_terraform_binary
from tests.provisioning.conftest import LOCAL_MODULE, REPO

MODULES = REPO / "terraform" / "modules"
CLOUD_STAND_IN = REPO / "terraform" / "testing" / "cloud-cluster"
# What provisioning.cloud_auth builds the kubeconfig from, and what the API shows.
CONTRACT_OUTPUTS = {
    "cluster_name",
    "cluster_endpoint",
    "cluster_ca_certificate",
    "kubernetes_version",
    "node_pools",
}
LOCAL_CONTRACT_OUTPUTS = {"cluster_name", "cluster_endpoint", "kubernetes_version", "kubeconfig"}
REQUIRED_VARIABLES = {
    "aws-eks": {"cluster_name", "region"},
    "azure-aks": {"cluster_name", "location"},
}
CLOUD_PROVIDER = {"aws-eks": "aws", "azure-aks": "azurerm"}


@pytest.fixture(scope="module", params=sorted(REQUIRED_VARIABLES))
def module(request):
    return request.param, load_module(MODULES / request.param)


def _all_text(spec) -> str:
    return "\n".join(spec.sources.values())


def test_required_variables_and_every_variable_documented(module):
    name, spec = module
    assert spec.required_variables == REQUIRED_VARIABLES[name]
    for variable, body in spec.variables.items():
        assert unquote(body.get("description", "")).strip(), f"{name}: variable {variable} has no description"
    for expected in ("kubernetes_version", "system_node_pool", "gpu_node_pools"):
        assert expected in spec.variables


def test_gpu_node_pool_shape(module):
    name, spec = module
    pool_type = spec.variables["gpu_node_pools"]["type"]
    size_fields = (
        ("min_size", "max_size", "desired_size")
        if name == "aws-eks"
        else ("min_count", "max_count", "node_count")
    )
    image_field = "ami_type" if name == "aws-eks" else "os_sku"
    machine_field = "instance_type" if name == "aws-eks" else "vm_size"
    for attribute in ("name", machine_field, image_field, "labels", "taints", *size_fields):
        assert re.search(rf"\b{attribute}\b", pool_type), f"{name}: gpu_node_pools lacks {attribute}"


def test_outputs_contract_without_any_credential(module):
    name, spec = module
    assert set(spec.outputs) >= CONTRACT_OUTPUTS
    assert "kubeconfig" not in spec.outputs
    # Nothing an output returns is secret, so nothing needs hiding (a sensitive output is still in the state).
    assert spec.sensitive_outputs == set()
    for output, body in spec.outputs.items():
        assert unquote(body.get("description", "")).strip(), f"{name}: output {output} has no description"
        value = str(body["value"])
        for credential in ("token", "client_key", "client_certificate", "password", "kube_config_raw"):
            assert credential not in value, f"{name}: output {output} reads {credential}"
        assert "kube_admin_config" not in value


def test_nothing_is_created_inside_the_cluster(module):
    """No kubernetes provider and no Kubernetes resource: the state cannot hold a service-account token, and the
    module does not need a provider configured from the cluster it creates."""
    name, spec = module
    assert "kubernetes" not in spec.required_providers
    assert "kubernetes" not in spec.providers
    assert not [r for r in spec.resources if r.startswith("kubernetes_")]
    text = _all_text(spec)
    for forbidden in (
        "kubernetes_secret",
        "aws_eks_cluster_auth",
        "service-account-token",
        "kube_config_raw",
    ):
        assert forbidden not in text, f"{name} mentions {forbidden}"
    assert {"service_account_name", "service_account_cluster_role"}.isdisjoint(spec.variables)


def test_providers_and_terraform_version_pinned(module):
    name, spec = module
    assert spec.required_version == ">= 1.5.0"
    assert set(spec.required_providers) == {CLOUD_PROVIDER[name]}
    for provider, requirement in spec.required_providers.items():
        assert requirement["source"].startswith("hashicorp/"), provider
        assert re.fullmatch(r"~> \d+\.\d+", requirement["version"]), provider


def test_no_backend_and_no_credentials_in_source(module):
    name, spec = module
    assert spec.backends == []
    secret_attributes = re.compile(
        r"^\s*(access_key|secret_key|client_secret|client_certificate_password|sas_token|"
        r"storage_account_key|conn_str|password|token)\s*=\s*\"",
        re.MULTILINE,
    )
    for file_name, text in spec.sources.items():
        # Credentials reach the providers through the environment only.
        assert not secret_attributes.search(text), f"{name}/{file_name} sets a credential literal"
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)


def test_aks_cluster_uses_requested_name():
    spec = load_module(MODULES / "azure-aks")
    cluster = spec.resources["azurerm_kubernetes_cluster"]["this"]
    assert cluster["name"] == "${var.cluster_name}"
    assert spec.outputs["cluster_name"]["value"] == "${azurerm_kubernetes_cluster.this.name}"


def test_aks_has_no_local_accounts_and_the_terraform_principal_is_admin_through_azure_rbac():
    """Local accounts off: the cluster resource's kube_config holds no client key and kube_admin_config is
    empty. Entra ID with Azure RBAC, and the principal running Terraform (BudCluster's) gets the cluster admin
    role, so BudCluster can mint its credential with an Entra ID token of that principal."""
    spec = load_module(MODULES / "azure-aks")
    cluster = spec.resources["azurerm_kubernetes_cluster"]["this"]
    assert cluster["local_account_disabled"] is True
    assert cluster["role_based_access_control_enabled"] is True
    (aad,) = cluster["azure_active_directory_role_based_access_control"]
    assert aad["azure_rbac_enabled"] is True
    assert aad["tenant_id"] == "${data.azurerm_client_config.current.tenant_id}"
    admin = spec.resources["azurerm_role_assignment"]["cluster_admin"]
    assert unquote(admin["role_definition_name"]) == "Azure Kubernetes Service RBAC Cluster Admin"
    assert admin["scope"] == "${azurerm_kubernetes_cluster.this.id}"
    assert admin["principal_id"] == "${data.azurerm_client_config.current.object_id}"
    assert 'data "azurerm_client_config" "current"' in _all_text(spec)
    # The CA is public: an output BudCluster can read (the provider marks the whole kube_config sensitive).
    ca = spec.outputs["cluster_ca_certificate"]
    assert (
        ca["value"]
        == "${nonsensitive(azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate)}"
    )
    assert "tenant_id" in spec.outputs


def test_eks_identity_running_terraform_is_cluster_admin():
    """Access entries on, the creator admin: BudCluster's presigned STS token of that identity works at once."""
    spec = load_module(MODULES / "aws-eks")
    (access,) = spec.resources["aws_eks_cluster"]["this"]["access_config"]
    assert access["bootstrap_cluster_creator_admin_permissions"] is True
    assert unquote(access["authentication_mode"]) in ("API", "API_AND_CONFIG_MAP")


def test_eks_gpu_pools_carry_labels_taints_and_ami():
    spec = load_module(MODULES / "aws-eks")
    gpu = spec.resources["aws_eks_node_group"]["gpu"]
    assert gpu["ami_type"] == "${each.value.ami_type}"
    assert "each.value.labels" in gpu["labels"]
    assert any("taint" in map(unquote, block) for block in gpu.get("dynamic", []))
    assert spec.resources["aws_eks_cluster"]["this"]["version"] == "${var.kubernetes_version}"


def test_local_stand_in_matches_its_contract():
    """The local stand-in is handed the token (a variable, never in the state) and returns the kubeconfig
    without it."""
    spec = load_module(LOCAL_MODULE)
    assert set(spec.outputs) >= LOCAL_CONTRACT_OUTPUTS
    assert "kubeconfig" in spec.sensitive_outputs
    assert "token" not in str(spec.outputs["kubeconfig"]["value"])
    assert spec.variables["token"]["sensitive"] is True
    assert spec.backends == []


def test_cloud_stand_in_matches_the_cloud_contract():
    spec = load_module(CLOUD_STAND_IN)
    assert set(spec.outputs) >= CONTRACT_OUTPUTS
    assert "kubeconfig" not in spec.outputs and spec.sensitive_outputs == set()
    assert spec.variables["bootstrap_token"]["sensitive"] is True
    # The bootstrap token is used by no resource and no output: it cannot reach the state.
    uses = [name for name, text in spec.sources.items() if "var.bootstrap_token" in text]
    assert uses == []
    assert set(spec.required_providers) == {"null"}
    assert spec.backends == []


def test_terraform_fmt_clean():
    result = subprocess.run(
        [find_terraform_binary(), "fmt", "-check", "-recursive", "-no-color", str(REPO / "terraform")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"not fmt clean: {result.stdout}{result.stderr}"
