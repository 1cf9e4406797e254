"""Clusters whose kubeconfig uses exec (EKS `aws eks get-token`, GKE, AKS kubelogin), on the real control plane.

BudCluster refuses such a kubeconfig; the operator runs scripts/budcluster-kubeconfig.sh on their own machine,
with their own kubectl and exec plugin, and gets a service-account kubeconfig BudCluster accepts. Here the exec
plugin is a small script printing an ExecCredential (the cloud CLI cannot run here); everything else is real:
kubectl runs the plugin, the API server checks RBAC, the token controller fills the token.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from clusters.kubeconfig import KubeconfigError, validate_kubeconfig
from devcluster.real.testing import real_cluster_fixture
from tests.tools import kubectl_binary
from tests.worker import run_finished, wait_for

# A control plane of this module's own: these tests assert on BudCluster's default objects (bud-system,
# budcluster), which other modules' tests remove from the session's control plane (cluster deletion runs the
# teardown playbook, whose garbage collection would race the script re-creating them).
real_cluster = real_cluster_fixture(scope="module")

# All of this module's tests in pytest-django's transactional group: it runs database tests, transactional ones
# and the rest in three passes, and a module split across passes would start its control plane twice.
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "budcluster-kubeconfig.sh"
ROLE_FILE = ROOT / "playbooks" / "files" / "budcluster-clusterrole.yaml"
SA_USER = "system:serviceaccount:bud-system:budcluster"
LABELS = {"app.kubernetes.io/managed-by": "budcluster", "app.kubernetes.io/part-of": "budcluster"}
# EKS names contexts, clusters and users after the cluster's ARN (':' and '/' in names).
EKS_ARN = "arn:aws:eks:eu-west-1:111122223333:cluster/budcluster-real"
EXEC_NS = "exec-auth"


def _env() -> dict[str, str]:
    """The operator's shell: their kubectl first on PATH, no KUBECONFIG (the tests name the file)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PATH"] = f"{Path(kubectl_binary()).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=180, env=env or _env(), check=False
    )


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--request-timeout", "30s", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )


def whoami(kubeconfig: Path) -> str:
    out = kubectl(kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wait_token(core: client.CoreV1Api, name: str, namespace: str) -> str:
    def token():
        data = core.read_namespaced_secret(name, namespace).data or {}
        return data.get("token")

    return base64.b64decode(wait_for(token, timeout=30, what=f"the token of {namespace}/{name}")).decode()


@pytest.fixture(scope="module")
def operator_token(real_cluster) -> str:
    """The operator's own cloud identity: a cluster-admin service account's token stands in for the bearer
    token `aws eks get-token` would print (IAM is outside this machine)."""
    api = real_cluster.client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace({"metadata": {"name": EXEC_NS}})
    core.create_namespaced_service_account(EXEC_NS, {"metadata": {"name": "eks-admin"}})
    core.create_namespaced_secret(
        EXEC_NS,
        {
            "metadata": {
                "name": "eks-admin-token",
                "annotations": {"kubernetes.io/service-account.name": "eks-admin"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "exec-auth-eks-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "eks-admin", "namespace": EXEC_NS}],
        }
    )
    return _wait_token(core, "eks-admin-token", EXEC_NS)


@pytest.fixture(scope="module")
def exec_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="module")
def exec_kubeconfig(real_cluster, operator_token, exec_home) -> Path:
    """A kubeconfig of the shape `aws eks update-kubeconfig` writes: ARN names, CA data, an exec user."""
    calls = exec_home / "plugin-calls"
    plugin = exec_home / "aws-eks-get-token"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": operator_token},
    }
    plugin.write_text(f"#!/bin/sh\necho called >> '{calls}'\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    plugin.chmod(stat.S_IRWXU)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": EKS_ARN,
                "cluster": {
                    "server": real_cluster.url,
                    "certificate-authority-data": base64.b64encode(real_cluster.ca_pem).decode(),
                },
            }
        ],
        "users": [
            {
                "name": EKS_ARN,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": str(plugin),
                        "args": ["eks", "get-token", "--cluster-name", "budcluster-real"],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": EKS_ARN, "context": {"cluster": EKS_ARN, "user": EKS_ARN}}],
        "current-context": EKS_ARN,
    }
    path = exec_home / "config"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def printed(exec_kubeconfig) -> subprocess.CompletedProcess:
    """The operator's one command, run with the exec kubeconfig."""
    return run_script("--kubeconfig", str(exec_kubeconfig), "--context", EKS_ARN)


def _printed_ok(printed: subprocess.CompletedProcess) -> dict:
    assert printed.returncode == 0, printed.stderr
    return yaml.safe_load(printed.stdout)


def _sa_token(doc: dict) -> str:
    return doc["users"][0]["user"]["token"]


def test_budcluster_refuses_the_exec_kubeconfig_that_kubectl_uses(exec_kubeconfig, exec_home, real_cluster):
    with pytest.raises(KubeconfigError, match="uses exec"):
        validate_kubeconfig(exec_kubeconfig.read_bytes(), allow_loopback=True)

    # The operator's kubectl works with it: it runs the plugin and authenticates as the plugin's identity.
    nodes = kubectl(exec_kubeconfig, "get", "nodes", "-o", "name")
    assert nodes.returncode == 0, nodes.stderr
    assert {n.removeprefix("node/") for n in nodes.stdout.split()} == set(real_cluster.hardware)
    assert (exec_home / "plugin-calls").read_text().count("called") >= 1
    assert whoami(exec_kubeconfig) == f"system:serviceaccount:{EXEC_NS}:eks-admin"


def test_script_prints_a_token_kubeconfig_that_budcluster_accepts(printed, operator_token, real_cluster):
    doc = _printed_ok(printed)
    checked = validate_kubeconfig(printed.stdout, allow_loopback=True)
    assert checked.server == real_cluster.url
    assert checked.namespace == "bud-system"
    assert doc["current-context"] == checked.context_name
    assert [c["name"] for c in doc["contexts"]] == [checked.context_name]
    (cluster,) = doc["clusters"]
    assert cluster["name"] == EKS_ARN
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == real_cluster.ca_pem
    (user,) = doc["users"]
    assert set(user["user"]) == {"token"}  # no exec, no auth-provider, no file
    token = _sa_token(doc)
    # The operator's own credential stays on their machine; the new token is on stdout only.
    assert operator_token not in printed.stdout and operator_token not in printed.stderr
    assert token not in printed.stderr
    assert "authenticates as system:serviceaccount:bud-system:budcluster" in printed.stderr

    # What the script created on the cluster, labelled as BudCluster's, the role from the playbook's file.
    api = real_cluster.client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    secret = core.read_namespaced_secret("budcluster-token", "bud-system")
    assert secret.type == "kubernetes.io/service-account-token"
    assert base64.b64decode(secret.data["token"]).decode() == token
    role = rbac.read_cluster_role("budcluster")
    binding = rbac.read_cluster_role_binding("budcluster")
    # (Not the namespace's labels: once the cluster is registered, BudCluster's collectors chart labels it.)
    assert core.read_namespace("bud-system").status.phase == "Active"
    for obj in (
        core.read_namespaced_service_account("budcluster", "bud-system"),
        secret,
        role,
        binding,
    ):
        assert LABELS.items() <= (obj.metadata.labels or {}).items(), obj.metadata.name
    expected_rules = yaml.safe_load(ROLE_FILE.read_text())["rules"]
    actual_rules = [api.sanitize_for_serialization(r) for r in role.rules]
    assert [{k: v for k, v in r.items() if v} for r in actual_rules] == expected_rules
    assert binding.role_ref.name == "budcluster"
    assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [
        ("ServiceAccount", "bud-system", "budcluster")
    ]


def test_printed_kubeconfig_has_exactly_the_budcluster_role_rights(printed, tmp_path):
    _printed_ok(printed)
    path = tmp_path / "budcluster.kubeconfig"
    path.write_text(printed.stdout)
    assert whoami(path) == SA_USER

    nodes = kubectl(path, "get", "nodes", "-o", "name")
    assert nodes.returncode == 0 and "node/gpu-h100-0" in nodes.stdout, nodes.stderr
    secrets = kubectl(path, "get", "secrets", "-n", "kube-system", "-o", "name")
    assert secrets.returncode == 0, secrets.stderr

    # Not in the role: deleting nodes, creating pods directly, granting itself cluster-admin.
    delete = kubectl(path, "delete", "node", "gpu-h100-0", "--dry-run=server")
    assert delete.returncode != 0
    assert f'User "{SA_USER}" cannot delete resource "nodes"' in delete.stderr
    escalate = kubectl(
        path, "create", "clusterrolebinding", "budcluster-escalates", "--clusterrole=cluster-admin",
        "--serviceaccount=bud-system:budcluster",
    )  # fmt: skip
    assert escalate.returncode != 0
    assert "forbidden" in escalate.stderr and "not currently held" in escalate.stderr
    for verb, resource in (("create", "pods"), ("escalate", "clusterroles"), ("bind", "clusterroles")):
        can = kubectl(path, "auth", "can-i", verb, resource, "-n", "default")
        assert can.stdout.strip() == "no", (verb, resource, can.stdout, can.stderr)


def test_rerunning_the_script_is_idempotent(printed, exec_kubeconfig, real_cluster):
    first = _printed_ok(printed)
    again = run_script("--kubeconfig", str(exec_kubeconfig), "--context", EKS_ARN)
    assert again.returncode == 0, again.stderr
    assert _sa_token(yaml.safe_load(again.stdout)) == _sa_token(first)
    assert again.stdout == printed.stdout
    assert "clusterrole.rbac.authorization.k8s.io/budcluster unchanged" in again.stderr
    # Still one token Secret for the account: the re-run minted no second credential.
    core = client.CoreV1Api(real_cluster.client())
    tokens = [
        s.metadata.name
        for s in core.list_namespaced_secret("bud-system").items
        if s.type == "kubernetes.io/service-account-token"
        and (s.metadata.annotations or {}).get("kubernetes.io/service-account.name") == "budcluster"
    ]
    assert tokens == ["budcluster-token"]


def test_account_without_rights_gets_a_clear_error_and_no_kubeconfig(real_cluster, tmp_path, printed):
    sa_token = _sa_token(_printed_ok(printed))
    nobody = real_cluster.write_kubeconfig(tmp_path / "nobody", "nobody")
    result = run_script("--kubeconfig", str(nobody))  # its current context
    assert result.returncode != 0
    assert result.stdout == ""
    assert 'is forbidden: User "budcluster-nobody" cannot' in result.stderr
    assert "could not create namespace bud-system" in result.stderr
    assert sa_token not in result.stderr


def test_insecure_skip_tls_verify_is_refused_before_anything_is_created(real_cluster, tmp_path):
    config = real_cluster.kubeconfig("admin")
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    path = tmp_path / "insecure"
    path.write_text(yaml.safe_dump(config))
    result = run_script("--kubeconfig", str(path), "--namespace", "exec-insecure")
    assert result.returncode != 0 and result.stdout == ""
    assert "sets insecure-skip-tls-verify" in result.stderr
    core = client.CoreV1Api(real_cluster.client())
    with pytest.raises(client.ApiException) as err:
        core.read_namespace("exec-insecure")
    assert err.value.status == 404


def test_certificate_authority_file_is_inlined_and_names_and_server_can_be_chosen(real_cluster, tmp_path):
    config = real_cluster.kubeconfig("admin")
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["certificate-authority"] = "pki/ca.crt"  # relative to the kubeconfig, as kubectl reads it
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(real_cluster.ca_pem)
    path = tmp_path / "admin"
    path.write_text(yaml.safe_dump(config))
    server = real_cluster.url.replace("127.0.0.1", "127.0.0.2")  # an address only "BudCluster" uses
    names = ["--namespace", "exec-cafile", "--service-account", "bud2", "--cluster-role", "budcluster-cafile"]
    rbac = client.RbacAuthorizationV1Api(real_cluster.client())
    try:
        result = run_script("--kubeconfig", str(path), *names, "--server", server)
        assert result.returncode == 0, result.stderr
        doc = yaml.safe_load(result.stdout)
        checked = validate_kubeconfig(
            result.stdout, allow_loopback=True
        )  # refuses certificate-authority files
        assert checked.server == server
        assert f"warning: could not check the kubeconfig against {server}" in result.stderr
        ca = doc["clusters"][0]["cluster"]["certificate-authority-data"]
        assert base64.b64decode(ca) == real_cluster.ca_pem
        assert checked.namespace == "exec-cafile"
        assert rbac.read_cluster_role_binding("budcluster-cafile").subjects[0].name == "bud2"

        direct = tmp_path / "direct"
        direct.write_text(result.stdout.replace(server, real_cluster.url))
        assert whoami(direct) == "system:serviceaccount:exec-cafile:bud2"
    finally:
        rbac.delete_cluster_role_binding("budcluster-cafile")
        rbac.delete_cluster_role("budcluster-cafile")
        client.CoreV1Api(real_cluster.client()).delete_namespace("exec-cafile")


def test_missing_kubectl_is_named(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = run_script("--context", "any", env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert result.returncode != 0 and result.stdout == ""
    assert "kubectl not found on PATH" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_printed_kubeconfig_registers_the_cluster_and_deploys_a_model(api, worker, settings, printed):
    """BudCluster's own path with the script's kubeconfig: register (verify, setup playbook, collectors) and
    deploy, all as the service account with BudCluster's role, not as cluster-admin."""
    import httpx

    from clusters.models import Cluster
    from core.choices import RunStatus
    from core.models import Run
    from deployments.models import Deployment

    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    _printed_ok(printed)

    def describe(run: Run) -> str:
        steps = "; ".join(f"{s.name}={s.status} {s.message[:300]!r}" for s in run.steps.order_by("order"))
        return f"{run.kind} {run.status}: {run.error!r} [{steps}]"

    def finished(run_id, timeout: float) -> Run:
        return run_finished(run_id, timeout)

    response = api.post(
        "/clusters/register", {"name": "eks-exec", "kubeconfig": printed.stdout}, format="json"
    )
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"], timeout=240)
    assert run.status == RunStatus.SUCCEEDED, describe(run)
    cluster = Cluster.objects.get(name="eks-exec")
    assert cluster.status == "available"

    response = api.post(
        "/deployments/deploy",
        {"cluster": cluster.pk, "name": "phi-mini", "model": "phi-3-mini-4k-instruct", "context_len": 4096,
         "concurrency": 8},
        format="json",
    )  # fmt: skip
    assert response.status_code == 202, response.json()
    body = response.json()
    run = finished(body["run_id"], timeout=240)
    assert run.status == RunStatus.SUCCEEDED, describe(run)
    deployment = Deployment.objects.get(pk=body["deployment_id"])
    assert deployment.status == "running"
    url = api.get(f"/deployments/{deployment.pk}").json()["endpoint_url"]
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["phi-3-mini-4k-instruct"]

    response = api.delete(f"/deployments/{deployment.pk}")
    assert response.status_code == 202
    run = finished(response.json()["run_id"], timeout=120)
    assert run.status == RunStatus.SUCCEEDED, describe(run)


def test_unknown_context_is_named_with_the_available_ones(real_cluster, tmp_path):
    admin = real_cluster.write_kubeconfig(tmp_path / "admin")
    result = run_script("--kubeconfig", str(admin), "--context", EKS_ARN)
    assert result.returncode != 0 and result.stdout == ""
    assert f"context '{EKS_ARN}' not found in the kubeconfig (available: budcluster-real)" in result.stderr


def test_deleting_the_token_secret_revokes_the_printed_kubeconfig(real_cluster, tmp_path):
    admin = real_cluster.write_kubeconfig(tmp_path / "admin")
    names = [
        "--namespace",
        "exec-revoke",
        "--service-account",
        "revoked",
        "--cluster-role",
        "budcluster-revoke",
    ]
    api = real_cluster.client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    try:
        result = run_script("--kubeconfig", str(admin), *names)
        assert result.returncode == 0, result.stderr
        printed = tmp_path / "printed"
        printed.write_text(result.stdout)
        assert whoami(printed) == "system:serviceaccount:exec-revoke:revoked"

        core.delete_namespaced_secret("revoked-token", "exec-revoke")
        refused = wait_for(
            lambda: (out := kubectl(printed, "get", "nodes")).returncode != 0 and out,
            timeout=30,
            what="the deleted token to be refused",
        )
        assert "You must be logged in to the server (Unauthorized)" in refused.stderr
    finally:
        rbac.delete_cluster_role_binding("budcluster-revoke")
        rbac.delete_cluster_role("budcluster-revoke")
        core.delete_namespace("exec-revoke")
