"""Conformance with Ansible's kubernetes.core.k8s / k8s_info modules run through ansible-runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ansible_collections.kubernetes.core  # noqa: F401  (the `ansible` package ships it)
import ansible_runner

from devcluster.harness import DevCluster
from devcluster.testing import write_kubeconfig

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  connection: local
  vars:
    ansible_python_interpreter: {python}
    kc: {kubeconfig}
  tasks:
    - name: namespace
      kubernetes.core.k8s:
        kubeconfig: "{{{{ kc }}}}"
        state: present
        definition: {{apiVersion: v1, kind: Namespace, metadata: {{name: ansible-demo}}}}
    - name: deployment
      kubernetes.core.k8s:
        kubeconfig: "{{{{ kc }}}}"
        state: present
        definition:
          apiVersion: apps/v1
          kind: Deployment
          metadata: {{name: web, namespace: ansible-demo, labels: {{app: web}}}}
          spec:
            replicas: 2
            selector: {{matchLabels: {{app: web}}}}
            template:
              metadata: {{labels: {{app: web}}}}
              spec:
                containers:
                - name: web
                  image: nginx:1.25
                  env: [{{name: MODE, value: demo}}]
                  ports: [{{containerPort: 80}}]
    - name: read back
      kubernetes.core.k8s_info:
        kubeconfig: "{{{{ kc }}}}"
        kind: Deployment
        namespace: ansible-demo
        label_selectors: ["app=web"]
      register: found
    - name: check
      ansible.builtin.assert:
        that:
          - found.resources | length == 1
          - found.resources[0].spec.replicas == 2
"""


def _run(private: Path) -> object:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return ansible_runner.run(
        private_data_dir=str(private),
        playbook="site.yml",
        quiet=True,
        envvars={"PATH": env["PATH"]},
        timeout=240,
    )


def test_k8s_module_applies_and_rerun_is_idempotent(devcluster: DevCluster, tmp_path: Path) -> None:
    cfg = write_kubeconfig(devcluster, tmp_path / "kubeconfig.yaml")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "site.yml").write_text(PLAYBOOK.format(python=sys.executable, kubeconfig=cfg))
    first = _run(tmp_path)
    assert first.rc == 0, first.stats
    assert first.stats["changed"].get("localhost") == 2
    dep = devcluster.call(devcluster.cluster().get, "deployments.apps", "ansible-demo", "web")
    assert dep["spec"]["replicas"] == 2
    second = _run(tmp_path)
    assert second.rc == 0, second.stats
    assert not second.stats["changed"], second.stats
