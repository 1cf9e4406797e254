"""OpenShift emulation: what makes a virtual cluster look like OpenShift to clients that probe for it.

The `config.openshift.io`, `route.openshift.io` and `project.openshift.io` API groups (as CRDs, so they are
served, discovered and stored like any custom resource) and the `ClusterVersion` named `version` that
OpenShift detection reads.  Nothing OpenShift does (routes, projects, operators) is acted out.
"""

from __future__ import annotations

from devcluster.store import VirtualCluster

_CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"


def _crd(group: str, plural: str, kind: str, scope: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def install_openshift(vc: VirtualCluster) -> None:
    """Make a virtual cluster look like OpenShift: its config/route/project API groups and a ClusterVersion."""
    vc.create(_CRD_KEY, _crd("config.openshift.io", "clusterversions", "ClusterVersion", "Cluster"))
    vc.create(_CRD_KEY, _crd("config.openshift.io", "infrastructures", "Infrastructure", "Cluster"))
    vc.create(_CRD_KEY, _crd("route.openshift.io", "routes", "Route", "Namespaced"))
    vc.create(_CRD_KEY, _crd("project.openshift.io", "projects", "Project", "Cluster"))
    vc.create(
        "clusterversions.config.openshift.io",
        {
            "metadata": {"name": "version"},
            "spec": {"channel": "stable-4.16", "clusterID": vc.uid},
            "status": {
                "desired": {"version": "4.16.0"},
                "history": [{"state": "Completed", "version": "4.16.0"}],
            },
        },
    )
