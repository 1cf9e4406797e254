"""Differential fidelity: the same operations against devcluster and the real API server, compared.

Every row of the table (one `@operation` below) runs once against the real control plane (kube-apiserver
v1.37 + controllers + KWOK) and once against devcluster, in a fresh namespace of the same name on each, and
returns an *observation*: status codes, `reason`s and chosen fields a user would notice (never whole bodies,
never timing).  The two observations must be equal, unless the row is in DOCUMENTED, which names the
observation keys that differ and why; those must differ exactly there, so a new undocumented difference fails
and so does a documented one that disappeared (devcluster/README.md "What it does not do" must stay true).

The real server is always right.  Differences found by this table and FIXED in devcluster are listed in FIXED
(and in devcluster/README.md); their rows now compare equal.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

from devcluster.harness import DevCluster
from devcluster.testing import kube_client, write_kubeconfig
from tests.tools import kubectl_binary
from tests.worker import wait_for

README = Path(__file__).resolve().parents[2] / "devcluster" / "README.md"

# Row -> the observation keys in which devcluster knowingly differs, and why (also in devcluster/README.md).
DOCUMENTED: dict[str, dict[str, Any]] = {
    "py-deployment-crud": {
        "keys": {"defaults"},
        "why": "built-in types are stored as sent: no defaulting (strategy, revisionHistoryLimit, "
        "progressDeadlineSeconds, restartPolicy, imagePullPolicy stay unset)",
    },
    "err-field-validation": {
        "keys": {
            "strict",
            "strict names the field",
            "strict nested",
            "strict nested names the field",
            "ignore",
            "default",
            "bad value",
        },
        "why": "built-in types have open schemas: unknown fields are stored (not pruned, not refused under "
        "fieldValidation=Strict) and values of the wrong type are accepted",
    },
    "err-forbidden": {
        "keys": {"list secrets as a user without rights", "create a namespace as a user without rights"},
        "why": "one all-powerful user per virtual cluster; RBAC objects are stored, never enforced",
    },
    "kubectl-errors": {
        "keys": {"forbidden", "unknown field (strict by default)"},
        "why": "the same two as err-forbidden and err-field-validation, seen through kubectl",
    },
    "kubectl-discovery": {
        "keys": {"explain"},
        "why": "the OpenAPI documents carry open schemas, so `kubectl explain` has no fields to describe",
    },
}

# Rows that differed when this table was first run and were fixed in devcluster (also in devcluster/README.md).
FIXED: dict[str, str] = {
    "py-configmap-crud": "a no-op replace by the Python client bumped the resourceVersion: managedFields times "
    'sent back as "+00:00" instead of "Z" looked like a change (patch.track_update)',
    "py-label-selector": "a malformed label selector (`a=(`) was accepted and matched nothing; now 400 BadRequest",
    "py-field-selector": "a field selector on an unsupported field (`data.k`) was accepted; now 400 BadRequest "
    'naming the supported fields ("metadata.name", "metadata.namespace", plus per-resource ones)',
    "py-server-side-apply": "apply without fieldManager answered 400 BadRequest; now 422 Invalid on "
    "PatchOptions.fieldManager",
    "py-discovery": "an unknown API group answered a NotFound Status; now the plain-text `404 page not found`",
    "py-pagination": "remainingItemCount was set on filtered lists; the real server only counts unfiltered ones",
    "py-namespace-delete": "a deleted namespace removed its contents after 0.2 s regardless of their finalizers; "
    "now contents with finalizers get a deletionTimestamp and hold the namespace in Terminating",
    "err-invalid": "an invalid name had no details.causes; workloads with a negative replica count, no or a "
    "non-matching selector, or a container without an image were created; now 422 Invalid with the causes",
}


# ----------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One API server as a user reaches it: an official-client ApiClient and kubectl with a kubeconfig."""

    name: str
    api: Any
    nobody: Any  # a client without RBAC rights (devcluster has one all-powerful user: it is that one)
    stranger: Any  # a client with credentials the server does not know
    kubeconfig: Path
    nobody_kubeconfig: Path
    workdir: Path

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict | None = None,
        ctype: str = "application/json",
        api: Any = None,
    ) -> tuple[int, Any]:
        """(status code, decoded JSON body) of one request; errors are answers, not exceptions."""
        api = api or self.api
        try:
            resp, status, _ = api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": ctype},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=False,
            )
            data = resp.data
        except client.ApiException as exc:
            status, data = exc.status, exc.body
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode() if isinstance(data, bytes) else data

    def kubectl(self, *args: str, stdin: str | None = None, user: str = "admin") -> tuple[int, str, str]:
        cfg = self.kubeconfig if user == "admin" else self.nobody_kubeconfig
        proc = subprocess.run(
            [
                kubectl_binary(),
                "--kubeconfig",
                str(cfg),
                "--cache-dir",
                str(self.workdir / "kubectl-cache"),
                "--request-timeout=30s",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=90,
        )
        return proc.returncode, proc.stdout.strip(), proc.stderr.strip()

    def namespace(self, op: str) -> str:
        """A fresh namespace for one row, same name on both servers."""
        ns = f"fid-{op}"[:63].rstrip("-")
        self.core.create_namespace({"metadata": {"name": ns}})
        return ns


def _client_from_yaml(text: str) -> Any:
    return config.new_client_from_config_dict(yaml.safe_load(text))


@pytest.fixture(scope="module")
def targets(real_cluster, tmp_path_factory) -> Iterator[dict[str, Target]]:
    dc = DevCluster(nodes="gpu-mixed").start()
    try:
        real_dir, dev_dir = tmp_path_factory.mktemp("real"), tmp_path_factory.mktemp("devcluster")
        dev_cfg = write_kubeconfig(dc, dev_dir / "kubeconfig.yaml")
        stranger_dev = dc.kubeconfig()
        stranger_dev["users"][0]["user"]["token"] = "not-a-token-this-server-knows"
        stranger_real = _client_from_yaml(real_cluster.token_kubeconfig_yaml("not-a-token-this-server-knows"))
        yield {
            "real": Target(
                "real",
                real_cluster.client(),
                real_cluster.client("nobody"),
                stranger_real,
                real_cluster.write_kubeconfig(real_dir / "admin.yaml"),
                real_cluster.identities["nobody"].kubeconfig_path,
                real_dir,
            ),
            "devcluster": Target(
                "devcluster",
                kube_client(dc),
                kube_client(dc),
                config.new_client_from_config_dict(stranger_dev),
                dev_cfg,
                dev_cfg,
                dev_dir,
            ),
        }
    finally:
        dc.stop()


# ----------------------------------------------------------------------------------------------- helpers

OPERATIONS: dict[str, Callable[[Target], dict]] = {}


def operation(op: str) -> Callable:
    def register(fn: Callable[[Target], dict]) -> Callable[[Target], dict]:
        assert op not in OPERATIONS, op
        OPERATIONS[op] = fn
        return fn

    return register


def answer(status: int, body: Any) -> tuple:
    """What a client tells apart in an answer: the code and, for a Status, its reason."""
    if isinstance(body, dict) and body.get("kind") == "Status":
        return (status, body.get("reason") or body.get("status"))
    return (status, body.get("kind") if isinstance(body, dict) else None)


def api_error(fn: Callable[[], Any]) -> tuple:
    """(code, reason) of a typed-client call that is expected to fail, or (200, None) if it did not."""
    try:
        fn()
    except client.ApiException as exc:
        return (exc.status, json.loads(exc.body).get("reason"))
    return (200, None)


def cause_fields(body: dict) -> list[str]:
    return sorted({c.get("field", "") for c in (body.get("details") or {}).get("causes") or []})


def server_reasons(stderr: str) -> list[str]:
    """kubectl's "Error from server (Reason)" reasons, in order."""
    return re.findall(r"Error from server \((\w+)\)", stderr)


def cm(name: str, data: dict | None = None, labels: dict | None = None) -> dict:
    body: dict = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data or {}}
    if labels:
        body["metadata"]["labels"] = labels
    return body


def deployment(name: str, image: str = "busybox:1.36", replicas: int = 0) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }


def managers(obj: dict) -> list[tuple[str, str]]:
    return sorted((m["manager"], m["operation"]) for m in obj["metadata"].get("managedFields") or [])


def owned(obj: dict, manager: str) -> list[str]:
    """The leaf fields a manager owns, as FieldsV1 paths ("f:data.f:k")."""
    out: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if k == ".":
                continue
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and any(x != "." for x in v):
                walk(v, path)
            else:
                out.append(path)

    for m in obj["metadata"].get("managedFields") or []:
        if m["manager"] == manager:
            walk(m.get("fieldsV1") or {}, "")
    return sorted(out)


def cm_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def deploy_path(ns: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


# ----------------------------------------------------------------------------------------------- CRUD (client)


@operation("py-configmap-crud")
def _configmap_crud(t: Target) -> dict:
    ns = t.namespace("py-configmap-crud")
    core = t.core
    created, create_code, _ = core.create_namespaced_config_map_with_http_info(ns, cm("a", {"k": "1"}))
    got, get_code, _ = core.read_namespaced_config_map_with_http_info("a", ns)
    listed = core.list_namespaced_config_map(ns, label_selector="!nothing")
    got.data = {"k": "2"}
    replaced, replace_code, _ = core.replace_namespaced_config_map_with_http_info("a", ns, got)
    same = core.replace_namespaced_config_map("a", ns, replaced)
    delete_code, deleted = t.raw("DELETE", cm_path(ns, "a"))
    return {
        "create": (
            create_code,
            created.data,
            bool(created.metadata.uid and created.metadata.resource_version),
        ),
        "get": (get_code, got.metadata.uid == created.metadata.uid),
        "list": sorted(i.metadata.name for i in listed.items if i.metadata.name != "kube-root-ca.crt"),
        "list.kind": (listed.kind, listed.api_version),
        "replace": (
            replace_code,
            replaced.data,
            replaced.metadata.resource_version != created.metadata.resource_version,
        ),
        "replace unchanged keeps resourceVersion": same.metadata.resource_version
        == replaced.metadata.resource_version,
        "delete": (answer(delete_code, deleted), (deleted.get("details") or {}).get("kind")),
        "get.after.delete": api_error(lambda: core.read_namespaced_config_map("a", ns)),
    }


@operation("py-deployment-crud")
def _deployment_crud(t: Target) -> dict:
    ns = t.namespace("py-deployment-crud")
    apps = t.apps
    created, create_code, _ = apps.create_namespaced_deployment_with_http_info(ns, deployment("web"))
    got = apps.read_namespaced_deployment("web", ns)
    listed = apps.list_namespaced_deployment(ns)

    def replace() -> tuple | None:
        """Read-modify-write, again on a 409: the deployment controller writes status meanwhile."""
        current = apps.read_namespaced_deployment("web", ns)
        current.spec.template.spec.containers[0].image = "busybox:1.37"
        try:
            return apps.replace_namespaced_deployment_with_http_info("web", ns, current)
        except client.ApiException as exc:
            if exc.status == 409:
                return None
            raise

    replaced, replace_code, _ = wait_for(replace, timeout=30, what="a replace without a conflict")
    delete_code, deleted = t.raw("DELETE", deploy_path(ns, "web"))
    return {
        "create": (create_code, created.metadata.generation),
        "defaults": (
            created.spec.strategy and created.spec.strategy.type,
            created.spec.revision_history_limit,
            created.spec.progress_deadline_seconds,
            created.spec.template.spec.restart_policy,
            created.spec.template.spec.containers[0].image_pull_policy,
        ),
        "get": got.metadata.uid == created.metadata.uid,
        "list": [i.metadata.name for i in listed.items],
        "replace": (replace_code, replaced.metadata.generation),
        "delete": answer(delete_code, deleted),
        "get.after.delete": api_error(lambda: apps.read_namespaced_deployment("web", ns)),
    }


# ----------------------------------------------------------------------------------------------- selectors


@operation("py-label-selector")
def _label_selector(t: Target) -> dict:
    ns = t.namespace("py-label-selector")
    for name, labels in {
        "a": {"app": "a", "tier": "web"},
        "b": {"app": "b"},
        "c": {"app": "c", "tier": "db"},
        "d": {"fid": "x"},
    }.items():
        t.core.create_namespaced_config_map(ns, cm(name, labels=labels))

    def names(sel: str) -> list[str] | tuple:
        try:
            items = t.core.list_namespaced_config_map(ns, label_selector=sel).items
        except client.ApiException as exc:
            return (exc.status, json.loads(exc.body).get("reason"))
        return sorted(i.metadata.name for i in items if i.metadata.name != "kube-root-ca.crt")

    return {
        sel: names(sel)
        for sel in ("app=a", "app!=a", "app in (a,c)", "app notin (a)", "tier", "!tier", "app,tier=db", "a=(")
    }


@operation("py-field-selector")
def _field_selector(t: Target) -> dict:
    ns = t.namespace("py-field-selector")
    for name in ("x", "y"):
        t.core.create_namespaced_config_map(ns, cm(name, labels={"fid": "1"}))
    for name, kind in (("warn", "Warning"), ("norm", "Normal")):
        t.core.create_namespaced_event(
            ns,
            {
                "metadata": {"name": name},
                "involvedObject": {"kind": "ConfigMap", "name": "x", "namespace": ns},
                "reason": "Test",
                "message": "fidelity",
                "type": kind,
            },
        )

    def names(kind: str, sel: str) -> list[str] | tuple:
        lister = t.core.list_namespaced_config_map if kind == "cm" else t.core.list_namespaced_event
        try:
            items = lister(ns, field_selector=sel, label_selector="fid=1" if kind == "cm" else None).items
        except client.ApiException as exc:
            return (exc.status, json.loads(exc.body).get("reason"))
        return sorted(i.metadata.name for i in items)

    return {
        "cm metadata.name=x": names("cm", "metadata.name=x"),
        "cm metadata.name!=x": names("cm", "metadata.name!=x"),
        f"cm metadata.namespace={ns}": names("cm", f"metadata.namespace={ns}"),
        "cm data.k=v (unsupported)": names("cm", "data.k=v"),
        "events type=Warning": names("ev", "type=Warning"),
        "events involvedObject.name=x": names("ev", "involvedObject.name=x"),
    }


# ----------------------------------------------------------------------------------------------- patches

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


@operation("py-json-patch")
def _json_patch(t: Target) -> dict:
    ns = t.namespace("py-json-patch")
    t.core.create_namespaced_config_map(ns, cm("a", {"k": "1", "gone": "x"}))
    ok = t.raw(
        "PATCH",
        cm_path(ns, "a"),
        [
            {"op": "replace", "path": "/data/k", "value": "2"},
            {"op": "remove", "path": "/data/gone"},
            {"op": "add", "path": "/metadata/labels", "value": {"patched": "yes"}},
        ],
        ctype=JSON_PATCH,
    )
    failed_test = t.raw(
        "PATCH", cm_path(ns, "a"), [{"op": "test", "path": "/data/k", "value": "nope"}], ctype=JSON_PATCH
    )
    missing_path = t.raw(
        "PATCH", cm_path(ns, "a"), [{"op": "remove", "path": "/data/nope"}], ctype=JSON_PATCH
    )
    missing_obj = t.raw(
        "PATCH", cm_path(ns, "zz"), [{"op": "add", "path": "/data", "value": {}}], ctype=JSON_PATCH
    )
    return {
        "ok": (ok[0], ok[1]["data"], ok[1]["metadata"].get("labels")),
        "failed test op": answer(*failed_test),
        "remove missing path": answer(*missing_path),
        "missing object": answer(*missing_obj),
    }


@operation("py-merge-patch")
def _merge_patch(t: Target) -> dict:
    ns = t.namespace("py-merge-patch")
    t.core.create_namespaced_config_map(ns, cm("a", {"k": "1", "gone": "x"}))
    code, obj = t.raw(
        "PATCH",
        cm_path(ns, "a"),
        {"data": {"k": "2", "gone": None, "new": "n"}, "metadata": {"labels": {"l": "v"}}},
        ctype=MERGE_PATCH,
    )
    t.apps.create_namespaced_deployment(ns, deployment("web"))
    # A merge patch replaces lists whole: the one container becomes the patch's (which lacks an image).
    dcode, dep = t.raw(
        "PATCH",
        deploy_path(ns, "web"),
        {"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "busybox:1.37"}]}}}},
        ctype=MERGE_PATCH,
    )
    return {
        "configmap": (code, obj["data"], obj["metadata"]["labels"]),
        "deployment containers": (dcode, [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]),
        "missing object": answer(*t.raw("PATCH", cm_path(ns, "zz"), {"data": {}}, ctype=MERGE_PATCH)),
        "not an object": answer(*t.raw("PATCH", cm_path(ns, "a"), "[]", ctype=MERGE_PATCH)),
    }


@operation("py-strategic-merge-patch")
def _strategic_patch(t: Target) -> dict:
    ns = t.namespace("py-strategic-merge-patch")
    t.apps.create_namespaced_deployment(ns, deployment("web"))
    code, dep = t.raw(
        "PATCH",
        deploy_path(ns, "web"),
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "main", "env": [{"name": "MODE", "value": "x"}]},
                            {"name": "side", "image": "busybox:1.37"},
                        ]
                    }
                }
            }
        },
        ctype=STRATEGIC,
    )
    dcode, dep2 = t.raw(
        "PATCH",
        deploy_path(ns, "web"),
        {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}},
        ctype=STRATEGIC,
    )

    def shape(d: dict) -> list:
        return [
            (c["name"], c.get("image"), [e["name"] for e in c.get("env") or []])
            for c in d["spec"]["template"]["spec"]["containers"]
        ]

    return {
        "merge by name": (code, shape(dep), dep["metadata"]["generation"]),
        "$patch delete": (dcode, shape(dep2)),
    }


@operation("py-server-side-apply")
def _server_side_apply(t: Target) -> dict:
    ns = t.namespace("py-server-side-apply")
    path = cm_path(ns, "a")
    first = t.raw("PATCH", path, cm("a", {"k": "1", "j": "1"}), query={"fieldManager": "alice"}, ctype=APPLY)
    second = t.raw("PATCH", path, cm("a", {"k": "2"}), query={"fieldManager": "alice"}, ctype=APPLY)
    noop = t.raw("PATCH", path, cm("a", {"k": "2"}), query={"fieldManager": "alice"}, ctype=APPLY)
    no_manager = t.raw("PATCH", path, cm("a", {"k": "2"}), ctype=APPLY)
    wrong_kind = t.raw(
        "PATCH", path, {**cm("a", {"k": "2"}), "kind": "Secret"}, query={"fieldManager": "alice"}, ctype=APPLY
    )
    return {
        "create": (first[0], first[1]["data"], managers(first[1])),
        "update drops unapplied field": (second[0], second[1]["data"], owned(second[1], "alice")),
        "no-op keeps resourceVersion": noop[1]["metadata"]["resourceVersion"]
        == second[1]["metadata"]["resourceVersion"],
        "without fieldManager": answer(*no_manager),
        "kind mismatch": answer(*wrong_kind),
    }


@operation("py-ssa-conflict")
def _ssa_conflict(t: Target) -> dict:
    ns = t.namespace("py-ssa-conflict")
    path = cm_path(ns, "a")
    t.raw("PATCH", path, cm("a", {"k": "1", "mine": "a"}), query={"fieldManager": "alice"}, ctype=APPLY)
    same_value = t.raw("PATCH", path, cm("a", {"k": "1"}), query={"fieldManager": "bob"}, ctype=APPLY)
    conflict = t.raw("PATCH", path, cm("a", {"k": "2"}), query={"fieldManager": "bob"}, ctype=APPLY)
    forced = t.raw(
        "PATCH", path, cm("a", {"k": "2"}), query={"fieldManager": "bob", "force": "true"}, ctype=APPLY
    )
    details = conflict[1].get("details") or {}
    return {
        "same value is shared": (same_value[0], sorted(m for m, _ in managers(same_value[1]))),
        "conflict": answer(*conflict),
        "conflict causes": sorted((c.get("reason"), c.get("field")) for c in details.get("causes") or []),
        "conflict names the owner": 'conflict with "alice"' in conflict[1].get("message", ""),
        "force": (forced[0], forced[1]["data"]),
        "force moves ownership": (owned(forced[1], "alice"), owned(forced[1], "bob")),
    }


# ----------------------------------------------------------------------------------------------- status


@operation("py-status-subresource")
def _status_subresource(t: Target) -> dict:
    ns = t.namespace("py-status-subresource")
    t.apps.create_namespaced_deployment(ns, deployment("web"))
    status_path = deploy_path(ns, "web") + "/status"
    scode, sobj = t.raw(
        "PATCH",
        status_path,
        {"spec": {"replicas": 3}, "status": {"collisionCount": 3}},
        ctype=MERGE_PATCH,
    )
    mcode, mobj = t.raw(
        "PATCH",
        deploy_path(ns, "web"),
        {"spec": {"replicas": 1}, "status": {"collisionCount": 9}},
        ctype=MERGE_PATCH,
    )
    gcode, gobj = t.raw("GET", status_path)
    return {
        "write /status": (
            scode,
            sobj["spec"]["replicas"],
            sobj["status"].get("collisionCount"),
            sobj["metadata"]["generation"],
        ),
        "write main resource": (
            mcode,
            mobj["spec"]["replicas"],
            mobj["status"].get("collisionCount") != 9,
            mobj["metadata"]["generation"],
        ),
        "get /status": (gcode, gobj["kind"], "spec" in gobj),
        "configmap has no /status": answer(*t.raw("GET", f"/api/v1/namespaces/{ns}/configmaps/nope/status")),
    }


# ----------------------------------------------------------------------------------------------- watch


def _watch_events(t: Target, ns: str, selector: str, changes: Callable[[], None], count: int) -> list:
    rv = t.core.list_namespaced_config_map(ns, label_selector=selector).metadata.resource_version
    worker = threading.Thread(target=changes)
    events = []
    w = watch.Watch()
    worker.start()
    try:
        for ev in w.stream(
            t.core.list_namespaced_config_map,
            ns,
            label_selector=selector,
            resource_version=rv,
            timeout_seconds=20,
        ):
            obj = ev["raw_object"]
            events.append((ev["type"], obj["metadata"]["name"], (obj.get("data") or {}).get("k")))
            if len(events) >= count:
                break
    finally:
        w.stop()
        worker.join(30)
    return events


@operation("py-watch")
def _watch(t: Target) -> dict:
    ns = t.namespace("py-watch")

    def changes() -> None:
        t.core.create_namespaced_config_map(ns, cm("a", {"k": "1"}, {"w": "1"}))
        t.core.patch_namespaced_config_map("a", ns, {"data": {"k": "2"}})
        t.core.delete_namespaced_config_map("a", ns)

    def leaving() -> None:
        t.core.create_namespaced_config_map(ns, cm("b", {"k": "1"}, {"w": "2"}))
        t.core.patch_namespaced_config_map("b", ns, {"metadata": {"labels": {"w": "other"}}})
        t.core.patch_namespaced_config_map("b", ns, {"metadata": {"labels": {"w": "2"}}, "data": {"k": "3"}})

    return {
        "change": _watch_events(t, ns, "w=1", changes, 3),
        "label selector enter/leave": _watch_events(t, ns, "w=2", leaving, 3),
    }


# ----------------------------------------------------------------------------------------------- discovery

# What BudCluster reads and writes (core/gateway.py, clusters/, deployments/, hardware/).
USED_RESOURCES = (
    ("v1", "nodes"),
    ("v1", "namespaces"),
    ("v1", "pods"),
    ("v1", "pods/log"),
    ("v1", "events"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("v1", "secrets"),
    ("v1", "persistentvolumeclaims"),
    ("apps/v1", "deployments"),
    ("apps/v1", "deployments/status"),
    ("apps/v1", "deployments/scale"),
    ("apps/v1", "daemonsets"),
    ("batch/v1", "jobs"),
    ("storage.k8s.io/v1", "storageclasses"),
    ("authorization.k8s.io/v1", "selfsubjectaccessreviews"),
)


@operation("py-discovery")
def _discovery(t: Target) -> dict:
    code, api = t.raw("GET", "/api")
    gcode, apis = t.raw("GET", "/apis")
    preferred = {g["name"]: g["preferredVersion"]["groupVersion"] for g in apis["groups"]}
    out: dict = {
        "/api": (code, api["kind"], api["versions"]),
        "/apis": (gcode, apis["kind"]),
        "/apis preferred versions": {
            gv.split("/")[0]: preferred.get(gv.split("/")[0]) for gv, _ in USED_RESOURCES if "/" in gv
        },
    }
    lists: dict[str, dict] = {}
    for gv, res in USED_RESOURCES:
        if gv not in lists:
            path = f"/api/{gv}" if gv == "v1" else f"/apis/{gv}"
            lists[gv] = {r["name"]: r for r in t.raw("GET", path)[1]["resources"]}
        r = lists[gv].get(res)
        out[f"{gv} {res}"] = r and (r["namespaced"], r["kind"], sorted(r["verbs"]))
    out["unknown group"] = answer(*t.raw("GET", "/apis/nothing.example.com"))
    return out


# ----------------------------------------------------------------------------------------------- pagination


@operation("py-pagination")
def _pagination(t: Target) -> dict:
    ns = t.namespace("py-pagination")
    for i in range(30):
        t.core.create_namespaced_config_map(ns, cm(f"cm-{i:02d}"))
    everything = sorted(i.metadata.name for i in t.core.list_namespaced_config_map(ns).items)
    pages: list[list[str]] = []
    remaining: list[int | None] = []
    token = None
    while True:
        page = t.core.list_namespaced_config_map(ns, limit=7, _continue=token)
        pages.append([i.metadata.name for i in page.items])
        remaining.append(page.metadata.remaining_item_count)
        token = page.metadata._continue
        if not token or len(pages) > 10:
            break
    seen = [n for p in pages for n in p]
    return {
        "every page within limit": all(len(p) <= 7 for p in pages),
        "full pages until the last": all(len(p) == 7 for p in pages[:-1]),
        "every item once": sorted(seen) == everything and len(seen) == len(set(seen)),
        "remainingItemCount on the first page": remaining[0] == len(everything) - 7,
        "remainingItemCount on the last page": remaining[-1],
        "bad continue token": answer(
            *t.raw("GET", cm_path(ns), query={"limit": "5", "continue": "not-a-token"})
        ),
        "limit with a selector": [
            len(t.core.list_namespaced_config_map(ns, limit=4, label_selector="!none").items),
            t.core.list_namespaced_config_map(
                ns, limit=4, label_selector="!none"
            ).metadata.remaining_item_count,
        ],
    }


# ----------------------------------------------------------------------------------------------- errors


@operation("err-missing-namespace")
def _missing_namespace(t: Target) -> dict:
    ns = "fid-no-such-namespace"
    code, body = t.raw("POST", cm_path(ns), cm("a"))
    return {
        "create": answer(code, body),
        "create details": ((body.get("details") or {}).get("kind"), (body.get("details") or {}).get("name")),
        "get": answer(*t.raw("GET", cm_path(ns, "a"))),
        "list": answer(*t.raw("GET", cm_path(ns))),
        "delete": answer(*t.raw("DELETE", cm_path(ns, "a"))),
    }


@operation("err-already-exists")
def _already_exists(t: Target) -> dict:
    ns = t.namespace("err-already-exists")
    t.raw("POST", cm_path(ns), cm("a"))
    code, body = t.raw("POST", cm_path(ns), cm("a"))
    ncode, nbody = t.raw("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    return {
        "configmap": answer(code, body),
        "configmap details": (body["details"]["kind"], body["details"]["name"]),
        "namespace": answer(ncode, nbody),
        "generateName": t.raw("POST", cm_path(ns), {"metadata": {"generateName": "a-"}})[0],
    }


@operation("err-stale-resource-version")
def _stale_rv(t: Target) -> dict:
    ns = t.namespace("err-stale-resource-version")
    old = t.raw("POST", cm_path(ns), cm("a", {"k": "1"}))[1]
    t.raw("PUT", cm_path(ns, "a"), {**old, "data": {"k": "2"}})
    put = t.raw("PUT", cm_path(ns, "a"), {**old, "data": {"k": "3"}})
    merge = t.raw(
        "PATCH",
        cm_path(ns, "a"),
        {"metadata": {"resourceVersion": old["metadata"]["resourceVersion"]}, "data": {"k": "4"}},
        ctype=MERGE_PATCH,
    )
    no_rv = {**old, "data": {"k": "5"}, "metadata": {**old["metadata"], "resourceVersion": None}}
    return {
        "update": answer(*put),
        "update details": (put[1].get("details") or {}).get("kind"),
        "patch with stale resourceVersion": answer(*merge),
        "update without resourceVersion": t.raw("PUT", cm_path(ns, "a"), no_rv)[0],
    }


@operation("err-invalid")
def _invalid(t: Target) -> dict:
    ns = t.namespace("err-invalid")
    bad_name = t.raw("POST", cm_path(ns), cm("Bad_Name"))
    no_name = t.raw("POST", cm_path(ns), {"metadata": {}})
    dep = deployment("web")
    del dep["spec"]["selector"]
    dep["spec"]["template"]["spec"]["containers"][0].pop("image")
    bad_dep = t.raw("POST", deploy_path(ns), dep)
    negative = deployment("neg", replicas=-1)
    bad_replicas = t.raw("POST", deploy_path(ns), negative)
    return {
        "bad name": (answer(*bad_name), cause_fields(bad_name[1])),
        "no name": (answer(*no_name), cause_fields(no_name[1])),
        "deployment without selector and image": (answer(*bad_dep), cause_fields(bad_dep[1])),
        "negative replicas": (answer(*bad_replicas), cause_fields(bad_replicas[1])),
    }


@operation("err-field-validation")
def _field_validation(t: Target) -> dict:
    ns = t.namespace("err-field-validation")
    body = {**cm("a", {"k": "1"}), "bogus": 1}
    strict = t.raw("POST", cm_path(ns), body, query={"fieldValidation": "Strict"})
    ignored = t.raw(
        "POST", cm_path(ns), {**body, "metadata": {"name": "b"}}, query={"fieldValidation": "Ignore"}
    )
    default = t.raw("POST", cm_path(ns), {**body, "metadata": {"name": "c"}})
    nested = {**deployment("web"), "spec": {**deployment("web")["spec"], "replicaz": 2}}
    strict_nested = t.raw("POST", deploy_path(ns), nested, query={"fieldValidation": "Strict"})
    return {
        "strict": answer(*strict),
        "strict names the field": 'unknown field "bogus"' in str(strict[1].get("message")),
        "strict nested": answer(*strict_nested),
        "strict nested names the field": 'unknown field "spec.replicaz"'
        in str(strict_nested[1].get("message")),
        "ignore": (ignored[0], "bogus" in ignored[1]),
        "default": (default[0], "bogus" in default[1]),
        "bad value": answer(
            *t.raw("POST", cm_path(ns), {**cm("d"), "data": {"k": 1}}, query={"fieldValidation": "Strict"})
        ),
    }


@operation("err-forbidden")
def _forbidden(t: Target) -> dict:
    return {
        "list secrets as a user without rights": answer(
            *t.raw("GET", "/api/v1/namespaces/kube-system/secrets", api=t.nobody)
        ),
        "create a namespace as a user without rights": answer(
            *t.raw("POST", "/api/v1/namespaces", {"metadata": {"name": "fid-forbidden"}}, api=t.nobody)
        ),
    }


@operation("err-unauthorized")
def _unauthorized(t: Target) -> dict:
    return {"unknown token": answer(*t.raw("GET", "/api/v1/namespaces", api=t.stranger))}


@operation("py-namespace-delete")
def _namespace_delete(t: Target) -> dict:
    ns = t.namespace("py-namespace-delete")
    held = cm("held")
    held["metadata"]["finalizers"] = ["fidelity.budcluster.io/hold"]
    t.raw("POST", cm_path(ns), held)
    code, body = t.raw("DELETE", f"/api/v1/namespaces/{ns}")
    gcode, got = t.raw("GET", f"/api/v1/namespaces/{ns}")
    create = t.raw("POST", cm_path(ns), cm("late"))
    # The namespace controller deletes the contents; one with a finalizer only gets a deletionTimestamp.
    wait_for(
        lambda: t.raw("GET", cm_path(ns, "held"))[1]["metadata"].get("deletionTimestamp"),
        timeout=60,
        what=f"the namespace controller to delete the contents of {ns} ({t.name})",
    )
    held_code, held_ns = t.raw("GET", f"/api/v1/namespaces/{ns}")
    # The finalizer holds the namespace in Terminating; releasing it lets the namespace go.
    t.raw("PATCH", cm_path(ns, "held"), {"metadata": {"finalizers": None}}, ctype=MERGE_PATCH)
    wait_for(
        lambda: t.raw("GET", f"/api/v1/namespaces/{ns}")[0] == 404, timeout=60, what=f"{ns} to go ({t.name})"
    )
    return {
        "delete": (code, body.get("kind"), (body.get("status") or {}).get("phase")),
        "delete sets deletionTimestamp": bool(body["metadata"].get("deletionTimestamp")),
        "get right after": (gcode, (got.get("status") or {}).get("phase")),
        "create in a terminating namespace": answer(*create),
        "content with a finalizer holds the namespace": (
            held_code,
            (held_ns.get("status") or {}).get("phase"),
        ),
        "delete again": answer(*t.raw("DELETE", f"/api/v1/namespaces/{ns}")),
    }


# ----------------------------------------------------------------------------------------------- kubectl


def _apply_doc(ns: str, data: dict) -> str:
    return yaml.safe_dump({**cm("app", data), "metadata": {"name": "app", "namespace": ns}})


@operation("kubectl-crud")
def _kubectl_crud(t: Target) -> dict:
    ns = t.namespace("kubectl-crud")
    k = t.kubectl
    dep = yaml.safe_dump({**deployment("web"), "metadata": {"name": "web", "namespace": ns}})
    return {
        "create configmap": k("create", "configmap", "a", "-n", ns, "--from-literal=k=1"),
        "create deployment": k("create", "-f", "-", stdin=dep),
        "get": k("get", "configmap", "a", "-n", ns, "-o", "jsonpath={.data.k}"),
        "get -o name": k("get", "deployments", "-n", ns, "-o", "name"),
        "label": k("label", "configmap", "a", "-n", ns, "tier=web"),
        "get -l": k("get", "configmaps", "-n", ns, "-l", "tier=web", "-o", "name"),
        "get --field-selector": k("get", "cm", "-n", ns, "--field-selector", "metadata.name=a", "-o", "name"),
        "replace": k(
            "replace",
            "-f",
            "-",
            stdin=yaml.safe_dump({**cm("a", {"k": "2"}), "metadata": {"name": "a", "namespace": ns}}),
        ),
        "get after replace": k("get", "configmap", "a", "-n", ns, "-o", "jsonpath={.data.k}"),
        "scale": k("scale", "deployment", "web", "-n", ns, "--replicas=0"),
        "delete": k("delete", "configmap", "a", "-n", ns),
        "get missing": (
            k("get", "configmap", "a", "-n", ns)[0],
            server_reasons(k("get", "cm", "a", "-n", ns)[2]),
        ),
    }


@operation("kubectl-patch")
def _kubectl_patch(t: Target) -> dict:
    ns = t.namespace("kubectl-patch")
    k = t.kubectl
    k("create", "configmap", "a", "-n", ns, "--from-literal=k=1", "--from-literal=gone=x")
    k(
        "create",
        "-f",
        "-",
        stdin=yaml.safe_dump({**deployment("web"), "metadata": {"name": "web", "namespace": ns}}),
    )
    return {
        "json": k("patch", "cm", "a", "-n", ns, "--type=json", "-p", '[{"op":"remove","path":"/data/gone"}]'),
        "merge": k("patch", "cm", "a", "-n", ns, "--type=merge", "-p", '{"data":{"k":"2"}}'),
        "strategic": k(
            "patch",
            "deployment",
            "web",
            "-n",
            ns,
            "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"A","value":"1"}]}]}}}}',
        ),
        "no change": k("patch", "cm", "a", "-n", ns, "--type=merge", "-p", '{"data":{"k":"2"}}'),
        "result": k("get", "cm", "a", "-n", ns, "-o", "jsonpath={.data}"),
        "deployment result": k(
            "get",
            "deploy",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}",
        ),
        "bad json patch": (
            k(
                "patch",
                "cm",
                "a",
                "-n",
                ns,
                "--type=json",
                "-p",
                '[{"op":"test","path":"/data/k","value":"x"}]',
            )[0],
        ),
    }


@operation("kubectl-apply")
def _kubectl_apply(t: Target) -> dict:
    ns = t.namespace("kubectl-apply")
    k = t.kubectl
    ssa = yaml.safe_dump({**deployment("web"), "metadata": {"name": "web", "namespace": ns}})
    return {
        "client-side create": k("apply", "-f", "-", stdin=_apply_doc(ns, {"k": "1", "j": "1"})),
        "client-side update": k("apply", "-f", "-", stdin=_apply_doc(ns, {"k": "2"})),
        "client-side unchanged": k("apply", "-f", "-", stdin=_apply_doc(ns, {"k": "2"})),
        "client-side result": k("get", "cm", "app", "-n", ns, "-o", "jsonpath={.data}"),
        "server-side create": k("apply", "--server-side", "-f", "-", stdin=ssa),
        "server-side again": k("apply", "--server-side", "-f", "-", stdin=ssa),
        # Only kubectl's own entries: when the controller's status write lands is timing, not fidelity.
        "managers": [
            m
            for m in k(
                "get",
                "deploy",
                "web",
                "-n",
                ns,
                "--show-managed-fields",
                "-o",
                "jsonpath={.metadata.managedFields[*].manager}",
            )[1].split()
            if m.startswith("kubectl")
        ],
        "diff": k("diff", "-f", "-", stdin=ssa.replace("replicas: 0", "replicas: 2"))[0],
    }


@operation("kubectl-ssa-conflict")
def _kubectl_ssa_conflict(t: Target) -> dict:
    ns = t.namespace("kubectl-ssa-conflict")
    k = t.kubectl
    first = k("apply", "--server-side", "--field-manager=alice", "-f", "-", stdin=_apply_doc(ns, {"k": "1"}))
    rc, out, err = k(
        "apply", "--server-side", "--field-manager=bob", "-f", "-", stdin=_apply_doc(ns, {"k": "2"})
    )
    forced = k(
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        "-",
        stdin=_apply_doc(ns, {"k": "2"}),
    )
    return {
        "first": first,
        "conflict": (rc, out, 'conflict with "alice"' in err, ".data.k" in err),
        "force-conflicts": forced,
        "result": k("get", "cm", "app", "-n", ns, "-o", "jsonpath={.data.k}"),
    }


@operation("kubectl-errors")
def _kubectl_errors(t: Target) -> dict:
    ns = t.namespace("kubectl-errors")
    k = t.kubectl

    def outcome(*args: str, stdin: str | None = None, user: str = "admin") -> tuple:
        rc, _, err = k(*args, stdin=stdin, user=user)
        return rc, server_reasons(err)

    bad = yaml.safe_dump({**cm("x", {"k": "1"}), "metadata": {"name": "x", "namespace": ns}, "bogus": 1})
    rc, _, err = k("create", "-f", "-", stdin=bad)
    return {
        "get missing": outcome("get", "configmap", "nope", "-n", ns),
        "create in a missing namespace": outcome("create", "configmap", "a", "-n", "fid-no-such-namespace"),
        "create existing": outcome("create", "namespace", ns),
        "invalid name": outcome("create", "configmap", "Bad_Name", "-n", ns),
        "unknown field (strict by default)": (rc, server_reasons(err), 'unknown field "bogus"' in err),
        "forbidden": outcome("get", "secrets", "-n", "kube-system", user="nobody"),
        "unknown resource type": k("get", "frobnicators", "-n", ns)[0],
    }


@operation("kubectl-namespace-delete")
def _kubectl_namespace_delete(t: Target) -> dict:
    ns = t.namespace("kubectl-namespace-delete")
    k = t.kubectl
    held = cm("held")
    held["metadata"].update(namespace=ns, finalizers=["fidelity.budcluster.io/hold"])
    k("create", "-f", "-", stdin=yaml.safe_dump(held))
    out = {
        "delete": k("delete", "namespace", ns, "--wait=false"),
        "phase": k("get", "namespace", ns, "-o", "jsonpath={.status.phase}"),
        "create inside": k("create", "configmap", "late", "-n", ns)[0],
    }
    k("patch", "cm", "held", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_for(lambda: k("get", "namespace", ns)[0] != 0, timeout=60, what=f"{ns} to go ({t.name})")
    out["after release"] = server_reasons(k("get", "namespace", ns)[2])
    return out


@operation("kubectl-discovery")
def _kubectl_discovery(t: Target) -> dict:
    rc, out, _ = t.kubectl("api-resources", "-o", "wide", "--no-headers")
    wanted = {res for _, res in USED_RESOURCES if "/" not in res}
    lines = {}
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] in wanted:
            lines.setdefault(cols[0], []).append(" ".join(cols))
    return {
        "rc": rc,
        "lines": {k: sorted(v) for k, v in sorted(lines.items())},
        "api-versions has apps/v1": "apps/v1" in t.kubectl("api-versions")[1].split(),
        "explain": t.kubectl("explain", "deployment.spec.replicas")[1].splitlines()[:5],
    }


# ----------------------------------------------------------------------------------------------- the table

RESULTS: dict[str, dict] = {}


def _differing(real: dict, dev: dict) -> set[str]:
    return {k for k in real.keys() | dev.keys() if real.get(k) != dev.get(k)}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_devcluster_answers_like_the_real_api_server(op: str, targets: dict[str, Target]) -> None:
    real = OPERATIONS[op](targets["real"])
    dev = OPERATIONS[op](targets["devcluster"])
    differing = _differing(real, dev)
    RESULTS[op] = {"real": real, "devcluster": dev, "differing": differing}
    report = "\n".join(
        f"  {k}:\n    real:       {real.get(k)!r}\n    devcluster: {dev.get(k)!r}" for k in sorted(differing)
    )
    documented = set(DOCUMENTED.get(op, {}).get("keys", ()))
    assert differing == documented, (
        f"{op}: devcluster differs from the real API server in {sorted(differing)}; documented: "
        f"{sorted(documented)} (fix devcluster, or document it in devcluster/README.md and DOCUMENTED)\n{report}"
    )


def test_documentation_lists_every_documented_and_fixed_difference() -> None:
    text = README.read_text()
    section = text.split("## What it does not do", 1)[1]
    for op in DOCUMENTED:
        assert f"`{op}`" in section.split("\n## ", 1)[0], f"{op} is missing under 'What it does not do'"
    for op in FIXED:
        assert f"`{op}`" in text, f"fixed row {op} is missing from devcluster/README.md"
    assert set(DOCUMENTED) <= set(OPERATIONS) and set(FIXED) <= set(OPERATIONS)


def summary_lines() -> list[str]:
    """The table of the comparisons this session ran: operation, equal / fixed / documented, differing keys.

    tests/real/conftest.py prints it at the end of the session (tests.parallel.add_summary), whichever of the
    comparisons ran and in whatever order; no test depends on another having run first."""
    if not RESULTS:
        return []
    rows = []
    for op, r in RESULTS.items():
        state = "documented" if r["differing"] else "fixed" if op in FIXED else "equal"
        rows.append(f"  {op:<32} {state:<10} {', '.join(sorted(r['differing']))}")
    equal = sum(1 for r in RESULTS.values() if not r["differing"])
    documented = len(RESULTS) - equal
    fixed = sum(1 for op in RESULTS if op in FIXED)
    return [
        "devcluster fidelity against kube-apiserver v1.37 (rows: operation, state, differing keys)",
        *rows,
        f"operations compared: {len(RESULTS)}  equal: {equal}  fixed: {fixed}  documented: {documented}",
    ]
