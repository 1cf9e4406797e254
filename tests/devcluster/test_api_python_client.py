"""Conformance of the emulated API with the official Python client (typed APIs, DynamicClient, watch)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from devcluster.harness import DevCluster
from devcluster.testing import kube_client


@pytest.fixture(scope="module")
def api(devcluster: DevCluster) -> client.ApiClient:
    return kube_client(devcluster)


@pytest.fixture
def ns(api: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def _wait(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    return pred()


def _deployment(name: str, image: str = "nginx:1.25", replicas: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 80}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def _raw(dc: DevCluster, path: str, token: str | None = None) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cadata=dc.ca_pem.decode())
    req = urllib.request.Request(
        dc.cluster_url() + path, headers={"Authorization": f"Bearer {token or dc.token()}"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_wrong_token_gets_401_status(devcluster: DevCluster) -> None:
    code, body = _raw(devcluster, "/api/v1/nodes", token="not-the-token")
    assert code == 401
    assert body["kind"] == "Status" and body["reason"] == "Unauthorized"


def test_version_and_discovery(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")
    core = client.CoreV1Api(api).get_api_resources()
    pods = next(r for r in core.resources if r.name == "pods")
    assert pods.namespaced and pods.kind == "Pod" and "watch" in pods.verbs
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {
        "apps",
        "batch",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
    } <= groups


def test_nodes_are_listed_with_kind_and_resource_version(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node()
    assert nodes.kind == "NodeList" and nodes.metadata.resource_version
    assert nodes.items and all(n.metadata.uid and n.metadata.creation_timestamp for n in nodes.items)


def test_crud_conflicts_and_missing_namespace(api: client.ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    cm = v1.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    assert cm.metadata.uid and cm.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"

    cm.data = {"a": "2"}
    updated = v1.replace_namespaced_config_map("cfg", ns, cm)
    assert updated.data == {"a": "2"}
    assert int(updated.metadata.resource_version) > int(cm.metadata.resource_version)
    cm.data = {"a": "stale"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("cfg", ns, cm)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"

    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "x"}})
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("missing", ns)
    body = json.loads(exc.value.body)
    assert exc.value.status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"

    v1.delete_namespaced_config_map("cfg", ns)
    assert v1.list_namespaced_config_map(ns).items == []


def test_label_and_field_selectors(api: client.ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        v1.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": {"tier": tier}}})
    names = lambda items: sorted(i.metadata.name for i in items)  # noqa: E731
    assert names(v1.list_namespaced_config_map(ns, label_selector="tier=web").items) == ["a", "b"]
    assert names(v1.list_namespaced_config_map(ns, label_selector="tier in (db),!missing").items) == ["c"]
    assert names(v1.list_namespaced_config_map(ns, field_selector="metadata.name!=a").items) == ["b", "c"]
    everywhere = v1.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items
    assert names(everywhere) == ["a", "b", "c"]


def test_generation_bumps_on_spec_change_only(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    d = apps.create_namespaced_deployment(ns, _deployment("gen"))
    assert d.metadata.generation == 1
    d = apps.patch_namespaced_deployment("gen", ns, {"metadata": {"labels": {"extra": "x"}}})
    assert d.metadata.generation == 1
    d = apps.patch_namespaced_deployment("gen", ns, {"spec": {"replicas": 3}})
    assert d.metadata.generation == 2


def test_strategic_merge_patch_merges_lists_by_key(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, _deployment("smp"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "nginx:1.26",
                            "env": [{"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 8080}],
                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                        },
                        {"name": "sidecar", "image": "busybox"},
                    ],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                    "tolerations": [{"key": "gpu", "operator": "Exists"}],
                }
            }
        }
    }
    d = apps.patch_namespaced_deployment("smp", ns, patch)
    spec = d.spec.template.spec
    main = next(c for c in spec.containers if c.name == "main")
    assert [c.name for c in spec.containers] == ["main", "sidecar"]
    assert main.image == "nginx:1.26"
    assert [e.name for e in main.env] == ["A", "B"]
    assert sorted(p.container_port for p in main.ports) == [80, 8080]
    assert sorted(m.mount_path for m in main.volume_mounts) == ["/cache", "/data"]
    assert sorted(v.name for v in spec.volumes) == ["cache", "data"]
    # Deleting one list element by key with the $patch directive.
    d = apps.patch_namespaced_deployment(
        "smp", ns, {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}
    )
    assert [c.name for c in d.spec.template.spec.containers] == ["main"]


def test_merge_and_json_patch(api: client.ApiClient, ns: str) -> None:
    custom = client.CustomObjectsApi(api)
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "p"}, "data": {"a": "1", "b": "2"}})
    # JSON merge patch: null removes a key.
    api.call_api(
        f"/api/v1/namespaces/{ns}/configmaps/p",
        "PATCH",
        body={"data": {"a": None, "c": "3"}},
        header_params={"Content-Type": "application/merge-patch+json"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    assert v1.read_namespaced_config_map("p", ns).data == {"b": "2", "c": "3"}
    v1.patch_namespaced_config_map("p", ns, [{"op": "replace", "path": "/data/b", "value": "two"}])
    assert v1.read_namespaced_config_map("p", ns).data == {"b": "two", "c": "3"}
    assert custom is not None


def test_server_side_apply_creates_updates_and_reports_conflicts(api: client.ApiClient, ns: str) -> None:
    dyn = DynamicClient(api)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    body = _deployment("ssa", replicas=2)
    body["metadata"]["namespace"] = ns
    created = deployments.server_side_apply(body=body, namespace=ns, field_manager="team-a")
    assert created.spec.replicas == 2
    assert any(m.manager == "team-a" and m.operation == "Apply" for m in created.metadata.managedFields)

    # Re-applying the same configuration is a no-op (checked on a ConfigMap: no controller touches it).
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa", "namespace": ns},
        "data": {"a": "1"},
    }
    first = cms.server_side_apply(body=cm, namespace=ns, field_manager="team-a")
    again = cms.server_side_apply(body=cm, namespace=ns, field_manager="team-a")
    assert again.metadata.resourceVersion == first.metadata.resourceVersion

    other = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ssa", "namespace": ns},
        "spec": {"replicas": 5},
    }
    with pytest.raises(ApiException) as exc:
        deployments.server_side_apply(body=other, namespace=ns, field_manager="team-b")
    assert exc.value.status == 409 and "team-a" in json.loads(exc.value.body)["message"]
    forced = deployments.server_side_apply(
        body=other, namespace=ns, field_manager="team-b", force_conflicts=True
    )
    assert forced.spec.replicas == 5

    # Dropping a field from the applied config removes it when nobody else owns it.
    body["spec"]["template"]["spec"]["containers"][0].pop("env")
    del body["spec"]["replicas"]
    pruned = deployments.server_side_apply(body=body, namespace=ns, field_manager="team-a")
    assert pruned.spec.template.spec.containers[0].get("env") is None
    assert pruned.spec.replicas == 5  # still owned by team-b


def test_status_and_scale_subresources(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, _deployment("sc", replicas=1))
    scale = apps.read_namespaced_deployment_scale("sc", ns)
    assert scale.spec.replicas == 1 and scale.status.selector == "app=sc"
    apps.patch_namespaced_deployment_scale("sc", ns, {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("sc", ns).spec.replicas == 4
    # The main resource ignores status, the status subresource ignores spec (on a kind no controller writes).
    policy = client.PolicyV1Api(api)
    policy.create_namespaced_pod_disruption_budget(
        ns,
        {"metadata": {"name": "pdb"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}},
    )
    policy.patch_namespaced_pod_disruption_budget("pdb", ns, {"status": {"observedGeneration": 7}})
    assert (
        policy.read_namespaced_pod_disruption_budget("pdb", ns).status
        or client.V1PodDisruptionBudgetStatus(
            current_healthy=0, desired_healthy=0, disruptions_allowed=0, expected_pods=0
        )
    ).observed_generation != 7
    status = {
        "currentHealthy": 1,
        "desiredHealthy": 1,
        "disruptionsAllowed": 0,
        "expectedPods": 1,
        "observedGeneration": 7,
    }
    policy.patch_namespaced_pod_disruption_budget_status(
        "pdb", ns, {"status": status, "spec": {"minAvailable": 5}}
    )
    pdb = policy.read_namespaced_pod_disruption_budget("pdb", ns)
    assert pdb.status.observed_generation == 7 and pdb.spec.min_available == 1


def test_owner_references_are_garbage_collected(api: client.ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    owner = v1.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    v1.create_namespaced_secret(ns, {"metadata": {"name": "dep", "ownerReferences": [ref]}})
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "orphan-me", "ownerReferences": [ref]}})
    v1.delete_namespaced_config_map("owner", ns)
    assert _wait(lambda: not v1.list_namespaced_secret(ns).items)
    assert not [c for c in v1.list_namespaced_config_map(ns).items if c.metadata.name == "orphan-me"]


def test_deleting_namespace_terminates_then_removes_contents(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    name = f"gone-{uuid.uuid4().hex[:6]}"
    v1.create_namespace({"metadata": {"name": name}})
    v1.create_namespaced_config_map(name, {"metadata": {"name": "x"}})
    v1.delete_namespace(name)
    phase = None
    try:
        phase = v1.read_namespace(name).status.phase
    except ApiException as exc:
        assert exc.status == 404
    assert phase in (None, "Terminating")

    def gone() -> bool:
        try:
            v1.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    assert _wait(gone)
    assert not v1.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={name}").items


def test_watch_streams_events_and_honours_timeout(api: client.ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    start_rv = v1.list_namespaced_config_map(ns).metadata.resource_version
    events: list[tuple[str, str]] = []

    def consume() -> None:
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=start_rv, timeout_seconds=5):
            events.append((ev["type"], ev["object"].metadata.name))
            if len(events) == 3:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "w1"}})
    v1.patch_namespaced_config_map("w1", ns, {"data": {"k": "v"}})
    v1.delete_namespaced_config_map("w1", ns)
    t.join(timeout=15)
    assert not t.is_alive()
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]

    # A watch with nothing happening ends after timeoutSeconds.
    quiet = list(
        watch.Watch().stream(
            v1.list_namespaced_secret,
            ns,
            timeout_seconds=1,
            resource_version=v1.list_namespaced_secret(ns).metadata.resource_version,
        )
    )
    assert quiet == []


def test_dynamic_client_and_crd_becomes_servable(api: client.ApiClient, ns: str) -> None:
    dyn = DynamicClient(api)
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    group = f"g{uuid.uuid4().hex[:6]}.example.com"
    crds.create(
        body={
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
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
    )
    dyn.resources.invalidate_cache()
    widgets = dyn.resources.get(api_version=f"{group}/v1", kind="Widget")
    widgets.create(
        body={"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}},
        namespace=ns,
    )
    listed = widgets.get(namespace=ns)
    assert listed.kind == "WidgetList" and [i.spec.size for i in listed.items] == [3]


def test_pod_log_and_access_review(api: client.ApiClient, ns: str) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod(
        ns, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    )
    assert isinstance(v1.read_namespaced_pod_log("p", ns), str)
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "create", "resource": "deployments", "group": "apps"}}}
    )
    assert review.status.allowed is True


def test_virtual_clusters_are_isolated_and_faults_apply() -> None:
    with DevCluster(clusters=2, openshift=True) as dc:
        assert dc.names == ["c0001", "c0002"]
        one, two = (client.CoreV1Api(kube_client(dc, n)) for n in dc.names)
        one.create_namespace({"metadata": {"name": "only-in-one"}})
        assert "only-in-one" not in {n.metadata.name for n in two.list_namespace().items}
        # A cluster's token does not open another cluster.
        ctx = ssl.create_default_context(cadata=dc.ca_pem.decode())
        req = urllib.request.Request(
            dc.cluster_url("c0001") + "/api/v1/nodes",
            headers={"Authorization": f"Bearer {dc.token('c0002')}"},
        )
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        assert exc.value.code == 401

        # OpenShift flavour: the ClusterVersion is there.
        cv = client.CustomObjectsApi(kube_client(dc, "c0002")).get_cluster_custom_object(
            "config.openshift.io", "v1", "clusterversions", "version"
        )
        assert cv["status"]["desired"]["version"].startswith("4.")

        # Admin API: 5xx fault, then clear.
        def admin(body: dict) -> dict:
            r = urllib.request.Request(
                f"{dc.url}/_devcluster/clusters/c0001/faults",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Authorization": f"Bearer {dc.admin_token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
                return json.loads(resp.read())

        assert admin({"kind": "error"})["faults"] == ["error"]
        with pytest.raises(ApiException) as exc503:
            one.list_node()
        assert exc503.value.status == 503
        two.list_node()  # other clusters unaffected
        admin({"kind": "unreachable"})
        with pytest.raises(Exception):  # noqa: B017 - any client-side timeout/connection error
            one.list_node(_request_timeout=1)
        admin({"kind": "clear"})
        node = one.list_node().items[-1].metadata.name

        # Node faults go to the simulation: the node reports NotReady.
        def ready(name: str) -> str:
            conds = one.read_node(name).status.conditions or []
            return next((c.status for c in conds if c.type == "Ready"), "Unknown")

        admin({"kind": "node-not-ready", "target": node})
        assert _wait(lambda: ready(node) != "True")
        admin({"kind": "clear"})
        assert _wait(lambda: ready(node) == "True")
