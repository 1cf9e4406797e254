"""Registration with too few rights, on a real API server that enforces RBAC: refused before anything is installed,
naming each missing permission."""

from __future__ import annotations

import base64
import copy

import pytest
import yaml
from kubernetes import client

from clusters.models import Cluster
from clusters.services import CLUSTER_ROLE_FILE
from core.choices import RunStatus
from tests.worker import wait_for

from .test_lifecycle import finished

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _state(cp) -> dict[str, set[str]]:
    api = cp.client()
    return {
        "namespaces": {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items},
        "clusterroles": {
            r.metadata.name for r in client.RbacAuthorizationV1Api(api).list_cluster_role().items
        },
        "crds": {
            c.metadata.name
            for c in client.ApiextensionsV1Api(api).list_custom_resource_definition().items
            if "nfd" in c.metadata.name
        },
    }


def _account_with_rules(cp, name: str, rules: list[dict]) -> str:
    """A service account in its own namespace bound to a ClusterRole with `rules`; its token kubeconfig."""
    api = cp.client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": name}})
    core.create_namespaced_secret(
        name,
        {
            "metadata": {
                "name": f"{name}-token",
                "annotations": {"kubernetes.io/service-account.name": name},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": name}],
        }
    )
    token = wait_for(
        lambda: (core.read_namespaced_secret(f"{name}-token", name).data or {}).get("token"),
        what="the token controller to fill the token",
    )
    return cp.token_kubeconfig_yaml(base64.b64decode(token).decode(), name)


def _register_refused(api, name: str, kubeconfig: str) -> str:
    response = api.post("/clusters/register", {"name": name, "kubeconfig": kubeconfig}, format="json")
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"])
    assert run.status == RunStatus.FAILED
    steps = dict(run.steps.values_list("name", "status"))
    assert steps["verify"] == "failed"
    assert steps["setup_cluster"] != "succeeded" and steps["ensure_collectors"] != "succeeded"
    cluster = Cluster.objects.get(name=name)
    assert cluster.status == "error"
    return run.error


def test_a_role_without_crd_rights_is_refused_naming_what_is_missing(api, worker, real_cluster):
    with open(CLUSTER_ROLE_FILE, encoding="utf-8") as fh:
        rules = copy.deepcopy(yaml.safe_load(fh)["rules"])
    partial = [r for r in rules if r["apiGroups"] != ["apiextensions.k8s.io"]]
    for rule in partial:  # and one verb short elsewhere
        if rule["apiGroups"] == ["batch"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    kubeconfig = _account_with_rules(real_cluster, "partial-rights", partial)
    before = _state(real_cluster)

    error = _register_refused(api, "partial", kubeconfig)

    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert f"{verb} customresourcedefinitions.apiextensions.k8s.io (cluster-wide)" in error
    assert "delete jobs.batch (cluster-wide)" in error
    assert "create jobs.batch" not in error and "nodes" not in error
    assert "8 permission(s)" in error
    # Nothing half-installed: no namespace, role or CRD appeared.
    assert _state(real_cluster) == before


def test_credentials_without_any_rights_are_refused_with_the_api_servers_words(api, worker, real_cluster):
    before = _state(real_cluster)
    error = _register_refused(api, "nobody", real_cluster.kubeconfig_yaml("nobody"))
    assert 'User "budcluster-nobody" cannot list resource "nodes"' in error
    assert _state(real_cluster) == before
