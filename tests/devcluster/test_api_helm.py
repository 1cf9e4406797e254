"""Conformance with the Helm v4 engine (helm_python): install, upgrade and uninstall a small chart."""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest

from devcluster.harness import DevCluster

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    "values.yaml": "replicas: 1\nimage: nginx:1.25\n",
    "templates/objects.yaml": """
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  image: {{ .Values.image | quote }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      containers:
      - name: web
        image: {{ .Values.image }}
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-svc
spec:
  selector: {app: {{ .Release.Name }}}
  ports: [{port: 80, targetPort: 80}]
""",
}


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    for rel, text in CHART.items():
        p = tmp_path / "demo" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "demo"


def test_install_upgrade_uninstall(devcluster: DevCluster, chart: Path) -> None:
    vc = devcluster.cluster()
    ns = "helm-demo"
    devcluster.call(vc.create, "namespaces", {"metadata": {"name": ns}})

    def deployment() -> dict | None:
        return devcluster.call(vc.get, "deployments.apps", ns, "rel-web")

    with helm_python.Config(
        kubeconfig_content=devcluster.kubeconfig_yaml(), namespace=ns, storage_driver="memory"
    ) as cfg:
        cfg.install(chart, "rel", {"replicas": 2}, namespace=ns, timeout=60)
        assert deployment()["spec"]["replicas"] == 2
        assert devcluster.call(vc.get, "configmaps", ns, "rel-settings")["data"] == {"image": "nginx:1.25"}
        assert devcluster.call(vc.get, "services", ns, "rel-svc") is not None

        cfg.upgrade(chart, "rel", {"replicas": 3, "image": "nginx:1.26"}, namespace=ns, timeout=60)
        dep = deployment()
        assert dep["spec"]["replicas"] == 3
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26"
        assert dep["metadata"]["generation"] >= 2

        cfg.uninstall("rel", timeout=60)
        assert deployment() is None
        assert devcluster.call(vc.get, "configmaps", ns, "rel-settings") is None
