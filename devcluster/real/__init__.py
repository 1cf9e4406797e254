"""A real Kubernetes control plane for the test bed and for local use.

devcluster (the package above) emulates the Kubernetes API in Python: fast, but it stores RBAC without
enforcing it, has no admission, simplifies server-side apply and answers lists in one page.  This package runs
the real thing, built from the published Go modules by ``scripts/build_k8s.sh`` (``make k8s``):

    etcd  <-  kube-apiserver (TLS, Node+RBAC authorization, default admission incl. PodSecurity)
                 ^      ^               ^
    kube-controller-manager   kube-scheduler   KWOK (nodes, leases, pod and volume lifecycle)
                 ^
    agent (in process): LoadBalancer stand-in served by the inference simulator, feature-discovery
                        labels once the collector pods run on a node

There is no kubelet (no container runtime here): KWOK plays every kubelet, moving pods through their phases
as a kubelet would report them.  Nodes come from the same presets and node files as devcluster, so a test
can run one scenario on both.

    from devcluster.real import ControlPlane
    with ControlPlane(nodes="gpu-mixed") as cp:
        cp.write_kubeconfig("admin.yaml")

``python -m devcluster real serve --nodes gpu-mixed --kubeconfig OUT.yaml`` does the same from a shell;
``devcluster.real.testing`` has the pytest fixtures.
"""

from devcluster.real.controlplane import ControlPlane, ControlPlaneError, binaries

__all__ = ["ControlPlane", "ControlPlaneError", "binaries"]
