"""BudCluster's playbooks run through ansible-runner against the devcluster (HTTPS, real kubernetes.core)."""

from __future__ import annotations

from pathlib import Path

import ansible_collections.kubernetes.core  # noqa: F401  (the playbooks need it; `ansible` ships it)
import ansible_runner  # noqa: F401  (BudCluster runs the playbooks through it)

from devcluster.testing import devcluster_fixture
from provisioning.ansible import run_playbook
from tests.worker import wait_for

dc = devcluster_fixture(name="dc", nodes="cpu-small", clusters=1, scope="module")
ocp = devcluster_fixture(name="ocp", nodes="cpu-small", clusters=1, openshift=True, scope="module")

SCC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "securitycontextconstraints.security.openshift.io"},
    "spec": {
        "group": "security.openshift.io",
        "scope": "Cluster",
        "names": {
            "plural": "securitycontextconstraints",
            "singular": "securitycontextconstraints",
            "kind": "SecurityContextConstraints",
            "listKind": "SecurityContextConstraintsList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
SCC = "securitycontextconstraints.security.openshift.io"


def _get(cluster, resource: str, name: str, namespace: str | None = None):
    return cluster.call(cluster.cluster().get, resource, namespace, name)


def test_setup_is_idempotent_and_teardown_removes_it(dc):
    kubeconfig = dc.kubeconfig_yaml()
    first = run_playbook("setup_cluster.yml", kubeconfig=kubeconfig)
    assert first.ok, first.summary()
    # namespaces, service account + token, role, binding, own namespace owned by the role
    assert first.changed == 5
    tasks = [e.task for e in first.events]
    assert len(tasks) == len(set(tasks))  # one event per task (single host)
    by_task = {e.task: e for e in first.events}
    assert by_task["Create BudCluster namespaces"].status == "changed"
    assert by_task["Create the BudCluster SecurityContextConstraints (OpenShift)"].status == "skipped"
    assert all(e.host == "localhost" for e in first.events)
    assert _get(dc, "namespaces", "bud-system") is not None
    assert _get(dc, "serviceaccounts", "budcluster", "bud-system") is not None
    binding = _get(dc, "clusterrolebindings.rbac.authorization.k8s.io", "budcluster")
    assert binding["subjects"][0]["name"] == "budcluster"
    role = _get(dc, "clusterroles.rbac.authorization.k8s.io", "budcluster")
    # The binding and BudCluster's own namespace go with the role (teardown deletes the role last).
    owner = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "budcluster",
              "uid": role["metadata"]["uid"]}]  # fmt: skip
    assert binding["metadata"]["ownerReferences"] == owner
    system = _get(dc, "namespaces", "bud-system")
    assert system["metadata"]["ownerReferences"] == owner
    assert system["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert _get(dc, "namespaces", "bud-runtime")["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"
    ] == ("baseline")
    # No bind/escalate: BudCluster cannot grant itself more than it holds.
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert not verbs & {"bind", "escalate", "impersonate", "*"}

    second = run_playbook("setup_cluster.yml", kubeconfig=kubeconfig, extravars={"platform": "kubernetes"})
    assert second.ok, second.summary()
    assert second.changed == 0
    assert not second.stats["changed"]

    down = run_playbook("teardown_cluster.yml", kubeconfig=kubeconfig)
    assert down.ok, down.summary()
    assert down.changed == 2  # bud-runtime, then the role (the binding and bud-system follow it)
    assert _get(dc, "clusterroles.rbac.authorization.k8s.io", "budcluster") is None
    wait_for(
        lambda: _get(dc, "clusterrolebindings.rbac.authorization.k8s.io", "budcluster") is None,
        what="the garbage collector to remove the binding",
    )
    namespace = _get(dc, "namespaces", "bud-system")
    assert namespace is None or namespace["metadata"].get("deletionTimestamp")


def test_identify_platform_publishes_the_platform(dc, ocp):
    assert run_playbook("identify_platform.yml", kubeconfig=dc.kubeconfig_yaml()).data == {
        "platform": "kubernetes"
    }
    assert run_playbook("identify_platform.yml", kubeconfig=ocp.kubeconfig_yaml()).data == {
        "platform": "openshift"
    }


def test_openshift_gets_a_dedicated_scc_and_privileged_is_untouched(ocp):
    vc = ocp.cluster()
    ocp.call(vc.create, "customresourcedefinitions.apiextensions.k8s.io", SCC_CRD)
    ocp.call(
        vc.create,
        SCC,
        {"metadata": {"name": "privileged"}, "allowPrivilegedContainer": True, "users": ["system:admin"]},
    )
    before = _get(ocp, SCC, "privileged")
    up = run_playbook("setup_cluster.yml", kubeconfig=ocp.kubeconfig_yaml())
    assert up.ok, up.summary()
    scc = _get(ocp, SCC, "budcluster")
    assert scc["groups"] == ["system:serviceaccounts:bud-system", "system:serviceaccounts:bud-runtime"]
    after = _get(ocp, SCC, "privileged")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["users"] == ["system:admin"]

    down = run_playbook("teardown_cluster.yml", kubeconfig=ocp.kubeconfig_yaml())
    assert down.ok, down.summary()
    assert _get(ocp, SCC, "budcluster") is None
    assert _get(ocp, SCC, "privileged") is not None


LEAKY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Print the kubeconfig
      ansible.builtin.debug:
        msg: "{{ lookup('file', lookup('env', 'K8S_AUTH_KUBECONFIG')) }}"
    - name: Fail with the secret
      ansible.builtin.fail:
        msg: "the password is {{ lookup('env', 'VAULT_PASSWORD') }}"
"""


def test_secrets_never_reach_events(dc, tmp_path: Path):
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "leaky.yml").write_text(LEAKY)
    secret = "s3cr3t-passw0rd-value"
    seen = []
    result = run_playbook(
        "leaky.yml",
        kubeconfig=dc.kubeconfig_yaml(),
        env={"VAULT_PASSWORD": secret},
        on_event=seen.append,
        playbook_dir=playbooks,
    )
    assert not result.ok and result.failures[0].task == "Fail with the secret"
    assert seen == result.events
    text = " ".join(e.message for e in result.events)
    assert secret not in text
    assert dc.token() not in text
    assert "the password is ***" in text
    assert result.events[0].status == "ok" and "***" in result.events[0].message


def test_temp_files_are_removed(dc, tmp_path: Path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_playbook("identify_platform.yml", kubeconfig=dc.kubeconfig_yaml())
    assert result.ok
    assert not list(tmp_path.glob("budcluster-ansible-*"))
