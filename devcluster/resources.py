"""The resource set the emulated API server serves.

Each resource is described once by a `ResourceInfo`; discovery documents, OpenAPI documents, URL routing and
the store's namespaced/cluster-scoped checks are all derived from this table, so adding a resource is one line.

Resource keys follow the contract with the simulation: the plural alone for the core group ("pods"), plural
and group joined by a dot otherwise ("deployments.apps").  CustomResourceDefinitions stored in a virtual
cluster add per-cluster entries (see `VirtualCluster.resource_for_crd`), looked up after this static table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()  # "status", "scale", "log", "proxy"
    categories: tuple[str, ...] = ()
    list_kind: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _r(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw) -> ResourceInfo:
    return ResourceInfo(group, version, plural, kind, namespaced, **kw)


_ST = ("status",)
_STSC = ("status", "scale")

RESOURCES: tuple[ResourceInfo, ...] = (
    # core v1
    _r(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        subresources=_ST,
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _r("", "v1", "nodes", "Node", False, short_names=("no",), subresources=_ST),
    _r(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        subresources=("status", "log", "binding", "proxy"),
        categories=("all",),
    ),
    _r(
        "",
        "v1",
        "services",
        "Service",
        short_names=("svc",),
        subresources=("status", "proxy"),
        categories=("all",),
        verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
    ),
    _r("", "v1", "endpoints", "Endpoints", short_names=("ep",), list_kind="EndpointsList"),
    _r("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _r("", "v1", "secrets", "Secret"),
    _r("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _r("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), subresources=_ST),
    _r("", "v1", "persistentvolumes", "PersistentVolume", False, short_names=("pv",), subresources=_ST),
    _r("", "v1", "events", "Event", short_names=("ev",)),
    _r("", "v1", "resourcequotas", "ResourceQuota", short_names=("quota",), subresources=_ST),
    _r("", "v1", "limitranges", "LimitRange", short_names=("limits",)),
    _r("", "v1", "replicationcontrollers", "ReplicationController", short_names=("rc",), subresources=_STSC),
    # apps/v1
    _r(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        subresources=_STSC,
        categories=("all",),
    ),
    _r(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        subresources=_STSC,
        categories=("all",),
    ),
    _r("apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",), subresources=_ST, categories=("all",)),
    _r(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        short_names=("sts",),
        subresources=_STSC,
        categories=("all",),
    ),
    _r("apps", "v1", "controllerrevisions", "ControllerRevision"),
    # batch/v1
    _r("batch", "v1", "jobs", "Job", subresources=_ST, categories=("all",)),
    _r("batch", "v1", "cronjobs", "CronJob", short_names=("cj",), subresources=_ST, categories=("all",)),
    # autoscaling
    _r(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short_names=("hpa",),
        subresources=_ST,
    ),
    # networking
    _r("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",), subresources=_ST),
    _r("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    _r("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    # rbac
    _r("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    # storage
    _r("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, short_names=("sc",)),
    _r("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False),
    # policy
    _r("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",), subresources=_ST),
    # authorization: create-only, answered inline by the server
    _r(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        verbs=("create",),
    ),
    _r(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        False,
        verbs=("create",),
    ),
    _r("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False, verbs=("create",)),
    # apiextensions
    _r(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        subresources=_ST,
    ),
    # events.k8s.io
    _r("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    # coordination
    _r("coordination.k8s.io", "v1", "leases", "Lease"),
    # scheduling
    _r("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, short_names=("pc",)),
)

BY_KEY: dict[str, ResourceInfo] = {r.key: r for r in RESOURCES}
# (group, version, plural) -> info, for URL routing
BY_GVR: dict[tuple[str, str, str], ResourceInfo] = {(r.group, r.version, r.plural): r for r in RESOURCES}

# Resources a namespace can hold; used when a namespace is deleted.
NAMESPACED_KEYS: tuple[str, ...] = tuple(r.key for r in RESOURCES if r.namespaced)

# Field selectors each built-in resource supports besides metadata.name and metadata.namespace (the real
# registries' field label conversion functions); any other field is a 400, as on a real server.
FIELD_SELECTORS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "namespaces": ("status.phase",),
    "nodes": ("spec.unschedulable",),
    "secrets": ("type",),
    "services": ("spec.clusterIP", "spec.type"),
    "replicationcontrollers": ("status.replicas",),
    "replicasets.apps": ("status.replicas",),
    "jobs.batch": ("status.successful",),
    "persistentvolumeclaims": (),
    "certificatesigningrequests.certificates.k8s.io": ("spec.signerName",),
}


def field_selectors(info: ResourceInfo) -> tuple[str, ...] | None:
    """The fields a list or watch of `info` can select on; None when unknown (custom resources: anything)."""
    if info.extra.get("crd"):
        return None
    return ("metadata.name", "metadata.namespace", *FIELD_SELECTORS.get(info.key, ()))


# Create-only review resources: never stored.
VIRTUAL_KEYS = frozenset(
    {
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    }
)


# Versions served per group, in preference order (discovery needs them grouped).
def groups(extra: list[ResourceInfo] | None = None) -> dict[str, dict[str, list[ResourceInfo]]]:
    """Group -> version -> resources, static table first then `extra` (CRD-backed) entries."""
    out: dict[str, dict[str, list[ResourceInfo]]] = {}
    for r in (*RESOURCES, *(extra or ())):
        out.setdefault(r.group, {}).setdefault(r.version, []).append(r)
    return out


def crd_resources(crd: dict) -> list[ResourceInfo]:
    """ResourceInfo entries for every served version of a stored CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not (group and plural and kind):
        return []
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True):
            continue
        subs = []
        sr = v.get("subresources") or {}
        if "status" in sr:
            subs.append("status")
        if "scale" in sr:
            subs.append("scale")
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or None
        out.append(
            ResourceInfo(
                group,
                v.get("name") or "v1",
                plural,
                kind,
                (spec.get("scope") or "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                subresources=tuple(subs),
                categories=tuple(names.get("categories") or ()),
                list_kind=names.get("listKind") or "",
                extra={"schema": schema, "storage": bool(v.get("storage")), "crd": crd["metadata"]["name"]},
            )
        )
    return out
