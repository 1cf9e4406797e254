"""Static checks of the cloud modules (no cloud, no provider downloads here): contract and safety rules.

``terraform validate`` needs the aws/azurerm/kubernetes providers, which cannot be installed where only
PyPI is reachable, so the modules are read with python-hcl2 and ``terraform fmt`` (syntax only) is run
with the Terraform binary available.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from provisioning.hcl import load_module, unquote
from provisioning.toolchain import find_terraform_binary
from tests.provisioning.conftest import LOCAL_MODULE, REPO

MODULES = REPO / "terraform" / "modules"
CONTRACT_OUTPUTS = {"cluster_name", "cluster_endpoint", "kubernetes_version", "kubeconfig"}
REQUIRED_VARIABLES = {
    "aws-eks": {"cluster_name", "region"},
    "azure-aks": {"cluster_name", "location"},
}
CLOUD_PROVIDER = {"aws-eks": "aws", "azure-aks": "azurerm"}


@pytest.fixture(scope="module", params=sorted(REQUIRED_VARIABLES))
def module(request):
    return request.param, load_module(MODULES / request.param)


def _kubeconfig_template(spec) -> str:
    value = spec.outputs["kubeconfig"]["value"]
    # The output points at local.kubeconfig; resolve one level.
    match = re.fullmatch(r"\$\{local\.(\w+)\}", value)
    return spec.locals[match.group(1)] if match else value


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


def test_outputs_contract_with_sensitive_kubeconfig(module):
    name, spec = module
    assert set(spec.outputs) >= CONTRACT_OUTPUTS
    assert "kubeconfig" in spec.sensitive_outputs
    for output, body in spec.outputs.items():
        assert unquote(body.get("description", "")).strip(), f"{name}: output {output} has no description"


def test_kubeconfig_is_token_based_without_exec(module):
    _, spec = module
    template = _kubeconfig_template(spec)
    assert template.startswith("${yamlencode(")
    assert "token =" in template
    for forbidden in ("exec", "auth-provider", "client-certificate =", "tokenFile", "-file"):
        assert forbidden not in template
    # Nor does the apply-time kubernetes provider depend on a cloud CLI.
    assert not re.search(r"\bexec\s*\{", spec.sources["providers.tf"])


def test_providers_and_terraform_version_pinned(module):
    name, spec = module
    assert spec.required_version == ">= 1.5.0"
    assert {CLOUD_PROVIDER[name], "kubernetes"} <= set(spec.required_providers)
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
        # A credential attribute may reference a value (the kubeconfig's token), never hold a literal.
        assert not secret_attributes.search(text), f"{name}/{file_name} sets a credential literal"
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)


def test_aks_cluster_uses_requested_name():
    spec = load_module(MODULES / "azure-aks")
    cluster = spec.resources["azurerm_kubernetes_cluster"]["this"]
    assert cluster["name"] == "${var.cluster_name}"
    assert cluster["local_account_disabled"] is False
    assert spec.outputs["cluster_name"]["value"] == "${azurerm_kubernetes_cluster.this.name}"


def test_eks_gpu_pools_carry_labels_taints_and_ami():
    spec = load_module(MODULES / "aws-eks")
    gpu = spec.resources["aws_eks_node_group"]["gpu"]
    assert gpu["ami_type"] == "${each.value.ami_type}"
    assert "each.value.labels" in gpu["labels"]
    assert any("taint" in map(unquote, block) for block in gpu.get("dynamic", []))
    assert spec.resources["aws_eks_cluster"]["this"]["version"] == "${var.kubernetes_version}"


def test_local_stand_in_matches_the_contract():
    spec = load_module(LOCAL_MODULE)
    assert set(spec.outputs) >= CONTRACT_OUTPUTS
    assert "kubeconfig" in spec.sensitive_outputs
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
