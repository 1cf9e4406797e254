"""Workload controllers: Deployments, ReplicaSets, DaemonSets, StatefulSets and Jobs.

Each `reconcile_*` is level-triggered: it reads the owner and the pods it controls (by controller
ownerReference uid), creates or deletes pods to match the spec, then writes status only when it changed.
Deployments own ReplicaSets named `<deployment>-<pod-template-hash>` and roll out by scaling the new one up
and the old ones down as new pods become ready (Recreate: old first).  DaemonSet pods are pinned with a
`matchFields metadata.name` node affinity and left to the scheduler, as the real controller does.
Model-transfer Jobs (label app.kubernetes.io/component=model-transfer) report progress into the ConfigMap
`<job>-progress` while they run.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from devcluster.sim import scheduler
from devcluster.sim.objects import (
    condition,
    container_env,
    is_owned_by,
    now_iso,
    owner_reference,
    pod_is_active,
    pod_is_ready,
    quantity,
    random_suffix,
    set_condition,
    template_hash,
)

if TYPE_CHECKING:
    from devcluster.sim.core import Simulation

TRANSFER_COMPONENT = "model-transfer"
DEFAULT_TRANSFER_BYTES = 1 << 30

# Tolerations the DefaultTolerationSeconds admission plugin adds to every pod.
_DEFAULT_TOLERATIONS = [
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
]
# What the DaemonSet controller adds so its pods survive node conditions.
_DS_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.endswith("%"):
        num = int(value[:-1]) * total
        return -(-num // 100) if round_up else num // 100
    return int(value)


def pod_from_template(owner: dict, template: dict, name: str, extra_labels: dict | None = None) -> dict:
    meta = copy.deepcopy(template.get("metadata") or {})
    spec = copy.deepcopy(template.get("spec") or {})
    labels = {**(meta.get("labels") or {}), **(extra_labels or {})}
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = sa
    spec["serviceAccount"] = sa
    tolerations = spec.setdefault("tolerations", [])
    for t in _DEFAULT_TOLERATIONS:
        if not any(x.get("key") == t["key"] and x.get("effect") == t["effect"] for x in tolerations):
            tolerations.append(dict(t))
    for c in spec.get("containers") or ():
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels,
            **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


class Workloads:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cluster = sim.cluster
        self.deadline_timers: set[tuple[str, str, str]] = set()
        self.transfers: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ helpers
    def _owned(self, key: str, owner: dict) -> list[dict]:
        ns = owner["metadata"]["namespace"]
        return [o for o in self.cluster.list(key, ns) if is_owned_by(o, owner)]

    def _set_status(self, key: str, obj: dict, status: dict) -> None:
        if obj.get("status") == status:
            return
        obj["status"] = status
        obj["metadata"].pop("resourceVersion", None)
        self.sim.write_status(key, obj)

    def _remind(self, kind: str, obj: dict, delay: float) -> None:
        """Reconcile `obj` again after `delay` (deadlines), at most one pending reminder per object."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        tkey = (kind, ns, name)
        if tkey in self.deadline_timers:
            return
        self.deadline_timers.add(tkey)

        def fire() -> None:
            self.deadline_timers.discard(tkey)
            self.sim.dirty[kind].add((ns, name))
            self.sim.kick()

        self.sim.loop.call_later(max(0.05, delay), fire)

    # ------------------------------------------------------------------ Deployment
    def reconcile_deployment(self, ns: str, name: str) -> None:
        dep = self.cluster.get("deployments.apps", ns, name)
        if dep is None or dep["metadata"].get("deletionTimestamp"):
            return
        spec = dep.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        h = template_hash(template)
        owned = self._owned("replicasets.apps", dep)
        new = next(
            (rs for rs in owned if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == h), None
        )
        olds = [rs for rs in owned if rs is not new]
        revisions = [
            int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
            for rs in owned
        ]
        strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
        old_active = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in olds)
        created = False
        if new is None and not spec.get("paused"):
            revision = str(max(revisions, default=0) + 1)
            labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": h}
            tmpl = copy.deepcopy(template)
            tmpl.setdefault("metadata", {})["labels"] = labels
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})["pod-template-hash"] = h
            start = 0 if strategy == "Recreate" and old_active else replicas
            new = self.sim.create(
                "replicasets.apps",
                {
                    "metadata": {
                        "name": f"{name}-{h}",
                        "namespace": ns,
                        "labels": labels,
                        "annotations": {
                            "deployment.kubernetes.io/revision": revision,
                            "deployment.kubernetes.io/desired-replicas": str(replicas),
                            "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                        },
                        "ownerReferences": [owner_reference(dep)],
                    },
                    "spec": {
                        "replicas": start,
                        "minReadySeconds": spec.get("minReadySeconds", 0),
                        "selector": selector,
                        "template": tmpl,
                    },
                },
            )
            if new is None:
                return
            created = True
            if start:
                self.sim.event(
                    dep,
                    "ScalingReplicaSet",
                    f"Scaled up replica set {new['metadata']['name']} from 0 to {start}",
                    source="deployment-controller",
                )
        if new is None:
            return
        rev = (new["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", "1")
        if (dep["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") != rev:
            dep["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = rev
            dep["metadata"].pop("resourceVersion", None)
            dep = self.sim.write("deployments.apps", dep) or dep
        new_ready = int((new.get("status") or {}).get("readyReplicas", 0))
        if not spec.get("paused"):
            if strategy == "Recreate":
                for rs in olds:
                    self._scale_rs(dep, rs, 0)
                if old_active == 0:
                    self._scale_rs(dep, new, replicas)
            else:
                self._scale_rs(dep, new, replicas)
                budget = max(0, replicas - new_ready)
                for rs in sorted(
                    olds, key=lambda r: r["metadata"].get("creationTimestamp", ""), reverse=True
                ):
                    want = min(int((rs.get("spec") or {}).get("replicas", 0)), budget)
                    budget -= want
                    self._scale_rs(dep, rs, want)
        all_rs = self._owned("replicasets.apps", dep)
        st = [rs.get("status") or {} for rs in all_rs]
        new_st = next(
            (rs.get("status") or {} for rs in all_rs if rs["metadata"]["name"] == new["metadata"]["name"]), {}
        )
        total = sum(int(s.get("replicas", 0)) for s in st)
        ready = sum(int(s.get("readyReplicas", 0)) for s in st)
        available = sum(int(s.get("availableReplicas", 0)) for s in st)
        updated = int(new_st.get("replicas", 0))
        ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = (
            0 if strategy == "Recreate" else _int_or_percent(ru.get("maxUnavailable", "25%"), replicas, False)
        )
        status = copy.deepcopy(dep.get("status") or {})
        status.update(
            observedGeneration=dep["metadata"].get("generation", 1),
            replicas=total,
            updatedReplicas=updated,
            readyReplicas=ready,
            availableReplicas=available,
        )
        unavailable = max(0, replicas - available) if total or replicas else 0
        if unavailable:
            status["unavailableReplicas"] = unavailable
        else:
            status.pop("unavailableReplicas", None)
        for k in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
            if not status.get(k):
                status.pop(k, None)
        if available >= replicas - max_unavailable:
            set_condition(
                status,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                probe_times=True,
            )
        else:
            set_condition(
                status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        rs_name = new["metadata"]["name"]
        complete = updated == replicas and available >= replicas and total == replicas
        deadline = spec.get("progressDeadlineSeconds", 600)
        prog = condition({"status": status}, "Progressing")
        if complete:
            self._progress(
                status,
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        elif created or prog is None:
            self._progress(status, "True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"')
            self._remind("deployments", dep, float(deadline))
        elif prog.get("reason") != "ProgressDeadlineExceeded":
            started = self._progress_started(prog)
            if started is not None and self.sim.loop.time() - started >= float(deadline):
                self._progress(
                    status,
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                )
                self.sim.event(
                    dep,
                    "ProgressDeadlineExceeded",
                    f"Deployment {name!r} has timed out progressing.",
                    "Warning",
                )
            else:
                if prog.get("reason") not in ("ReplicaSetUpdated", "NewReplicaSetCreated"):
                    self._progress(
                        status, "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.'
                    )
                self._remind("deployments", dep, float(deadline))
        self._set_status("deployments.apps", dep, status)

    def _progress(self, status: dict, value: str, reason: str, message: str) -> None:
        cond = condition({"status": status}, "Progressing")
        if cond and cond.get("reason") == reason and cond.get("status") == value:
            return
        # lastUpdateTime marks when progress (re)started; the deadline is measured from it.
        set_condition(status, "Progressing", value, reason, message, probe_times=True)

    def _progress_started(self, cond: dict) -> float | None:
        from datetime import UTC, datetime

        ts = cond.get("lastUpdateTime") or cond.get("lastTransitionTime")
        if not ts:
            return None
        age = (
            datetime.now(UTC) - datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        ).total_seconds()
        return self.sim.loop.time() - age

    def _scale_rs(self, dep: dict, rs: dict, replicas: int) -> None:
        current = int((rs.get("spec") or {}).get("replicas", 0))
        if current == replicas:
            return
        rs = self.cluster.get("replicasets.apps", rs["metadata"]["namespace"], rs["metadata"]["name"])
        if rs is None:
            return
        rs["spec"]["replicas"] = replicas
        rs["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(
            (dep.get("spec") or {}).get("replicas", 1)
        )
        rs["metadata"].pop("resourceVersion", None)
        if self.sim.write("replicasets.apps", rs) is not None:
            verb = "up" if replicas > current else "down"
            self.sim.event(
                dep,
                "ScalingReplicaSet",
                f"Scaled {verb} replica set {rs['metadata']['name']} from {current} to {replicas}",
                source="deployment-controller",
            )

    # ------------------------------------------------------------------ ReplicaSet
    def reconcile_replicaset(self, ns: str, name: str) -> None:
        rs = self.cluster.get("replicasets.apps", ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        spec = rs.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        pods = [p for p in self._owned("pods", rs) if pod_is_active(p)]
        if len(pods) < desired:
            for _ in range(desired - len(pods)):
                pod = pod_from_template(rs, spec.get("template") or {}, f"{name}-{random_suffix()}")
                created = self.sim.create("pods", pod)
                if created is not None:
                    pods.append(created)
                    self.sim.event(
                        rs,
                        "SuccessfulCreate",
                        f"Created pod: {created['metadata']['name']}",
                        source="replicaset-controller",
                    )
        elif len(pods) > desired:
            # Delete the least useful first: unscheduled, then not ready, then the newest.
            pods.sort(
                key=lambda p: (
                    bool(p["spec"].get("nodeName")),
                    pod_is_ready(p),
                    _neg(p["metadata"].get("creationTimestamp", "")),
                )
            )
            for p in pods[: len(pods) - desired]:
                self.sim.delete("pods", ns, p["metadata"]["name"])
                self.sim.event(
                    rs,
                    "SuccessfulDelete",
                    f"Deleted pod: {p['metadata']['name']}",
                    source="replicaset-controller",
                )
            pods = pods[len(pods) - desired :]
        ready = sum(1 for p in pods if pod_is_ready(p))
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        for k in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not status[k]:
                del status[k]
        self._set_status("replicasets.apps", rs, status)

    # ------------------------------------------------------------------ DaemonSet
    def reconcile_daemonset(self, ns: str, name: str) -> None:
        ds = self.cluster.get("daemonsets.apps", ns, name)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return
        template = (ds.get("spec") or {}).get("template") or {}
        h = template_hash(template)[:10]
        tspec = template.get("spec") or {}
        tolerations = list(tspec.get("tolerations") or []) + _DS_TOLERATIONS
        probe = {"spec": {**tspec, "tolerations": tolerations}}
        eligible = []
        for node in self.cluster.list("nodes"):
            if not scheduler.node_matches_pod(probe, node):
                continue
            if scheduler.untolerated_taint({"spec": {"taints": scheduler.node_taints(node)}}, tolerations):
                continue
            eligible.append(node["metadata"]["name"])
        by_node: dict[str, list[dict]] = {}
        for p in self._owned("pods", ds):
            target = p["spec"].get("nodeName") or _pinned_node(p)
            by_node.setdefault(target or "", []).append(p)
        generation = ds["metadata"].get("generation", 1)
        for node_name in eligible:
            pods = [p for p in by_node.get(node_name, []) if not p["metadata"].get("deletionTimestamp")]
            for p in pods:
                if (p.get("status") or {}).get("phase") == "Failed" or (
                    p["metadata"].get("labels") or {}
                ).get("controller-revision-hash") != h:
                    self.sim.delete("pods", ns, p["metadata"]["name"])
            pods = [
                p
                for p in pods
                if (p.get("status") or {}).get("phase") != "Failed"
                and (p["metadata"].get("labels") or {}).get("controller-revision-hash") == h
            ]
            if not pods:
                pod = pod_from_template(
                    ds,
                    template,
                    f"{name}-{random_suffix()}",
                    {"controller-revision-hash": h, "pod-template-generation": str(generation)},
                )
                # The DaemonSet's own tolerations (no tolerationSeconds) replace the admission defaults.
                pod["spec"]["tolerations"] = _merge_tolerations(tspec.get("tolerations"), _DS_TOLERATIONS)
                aff = pod["spec"].setdefault("affinity", {}).setdefault("nodeAffinity", {})
                aff["requiredDuringSchedulingIgnoredDuringExecution"] = {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}
                    ]
                }
                created = self.sim.create("pods", pod)
                if created is not None:
                    by_node[node_name] = [created]
                    self.sim.event(
                        ds,
                        "SuccessfulCreate",
                        f"Created pod: {created['metadata']['name']}",
                        source="daemonset-controller",
                    )
        misscheduled = 0
        for node_name, pods in by_node.items():
            if node_name not in eligible:
                for p in pods:
                    misscheduled += 1 if p["spec"].get("nodeName") else 0
                    self.sim.delete("pods", ns, p["metadata"]["name"])
        current = [
            p
            for n in eligible
            for p in by_node.get(n, [])
            if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        ]
        ready = sum(1 for p in current if pod_is_ready(p))
        updated = sum(
            1 for p in current if (p["metadata"].get("labels") or {}).get("controller-revision-hash") == h
        )
        status = {
            "currentNumberScheduled": len({p["spec"]["nodeName"] for p in current}),
            "desiredNumberScheduled": len(eligible),
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": max(0, len(eligible) - ready),
            "updatedNumberScheduled": updated,
            "observedGeneration": generation,
        }
        for k in ("numberAvailable", "numberUnavailable", "updatedNumberScheduled"):
            if not status[k]:
                del status[k]
        self._set_status("daemonsets.apps", ds, status)

    # ------------------------------------------------------------------ StatefulSet
    def reconcile_statefulset(self, ns: str, name: str) -> None:
        sts = self.cluster.get("statefulsets.apps", ns, name)
        if sts is None or sts["metadata"].get("deletionTimestamp"):
            return
        spec = sts.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        revision = f"{name}-{template_hash(template)[:10]}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods = {p["metadata"]["name"]: p for p in self._owned("pods", sts)}
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            pod = pods.get(pod_name)
            if pod is not None and (
                (pod.get("status") or {}).get("phase") == "Failed"
                or (
                    pod_is_ready(pod)
                    and (pod["metadata"].get("labels") or {}).get("controller-revision-hash") != revision
                )
            ):
                self.sim.delete("pods", ns, pod_name)
                pods.pop(pod_name)
                if ordered:
                    break
                continue
            if pod is None:
                self._sts_claims(sts, i)
                new = pod_from_template(
                    sts,
                    template,
                    pod_name,
                    {
                        "controller-revision-hash": revision,
                        "statefulset.kubernetes.io/pod-name": pod_name,
                        "apps.kubernetes.io/pod-index": str(i),
                    },
                )
                new["spec"]["hostname"] = pod_name
                if spec.get("serviceName"):
                    new["spec"]["subdomain"] = spec["serviceName"]
                for tmpl in spec.get("volumeClaimTemplates") or ():
                    claim = f"{tmpl['metadata']['name']}-{name}-{i}"
                    vols = new["spec"].setdefault("volumes", [])
                    if not any(v.get("name") == tmpl["metadata"]["name"] for v in vols):
                        vols.append(
                            {"name": tmpl["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}}
                        )
                created = self.sim.create("pods", new)
                if created is not None:
                    pods[pod_name] = created
                    self.sim.event(
                        sts,
                        "SuccessfulCreate",
                        f"create Pod {pod_name} in StatefulSet {name} successful",
                        source="statefulset-controller",
                    )
                if ordered:
                    break
            elif ordered and not pod_is_ready(pod):
                break
        for pod_name in sorted(pods, key=_ordinal, reverse=True):
            if _ordinal(pod_name) >= replicas:
                self.sim.delete("pods", ns, pod_name)
                pods.pop(pod_name)
                if ordered:
                    break
        active = [p for p in pods.values() if pod_is_active(p)]
        ready = sum(1 for p in active if pod_is_ready(p))
        updated = sum(
            1
            for p in active
            if (p["metadata"].get("labels") or {}).get("controller-revision-hash") == revision
        )
        status = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": updated,
            "updatedReplicas": updated,
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        for k in ("readyReplicas", "availableReplicas", "currentReplicas", "updatedReplicas"):
            if not status[k]:
                del status[k]
        self._set_status("statefulsets.apps", sts, status)

    def _sts_claims(self, sts: dict, i: int) -> None:
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        for tmpl in (sts.get("spec") or {}).get("volumeClaimTemplates") or ():
            claim = f"{tmpl['metadata']['name']}-{name}-{i}"
            if self.cluster.peek("persistentvolumeclaims", ns, claim) is None:
                labels = dict(((sts.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
                self.sim.create(
                    "persistentvolumeclaims",
                    {
                        "metadata": {"name": claim, "namespace": ns, "labels": labels},
                        "spec": copy.deepcopy(tmpl.get("spec") or {}),
                    },
                )

    # ------------------------------------------------------------------ Job
    def reconcile_job(self, ns: str, name: str) -> None:
        job = self.cluster.get("jobs.batch", ns, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._stop_transfer(ns, name)
            return
        spec = job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or ()
        )
        pods = self._owned("pods", job)
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        active = [p for p in pods if pod_is_active(p)]
        if finished:
            return
        completions = spec.get("completions")
        target = int(completions) if completions is not None else 1
        parallelism = int(spec.get("parallelism", 1))
        backoff_limit = int(spec.get("backoffLimit", 6))
        now = now_iso()
        status.setdefault("startTime", now)
        status["uncountedTerminatedPods"] = {}
        deadline = spec.get("activeDeadlineSeconds")
        outcome = None
        fault = self.sim.job_fault_for(
            {
                "metadata": {
                    "namespace": ns,
                    "ownerReferences": [{"kind": "Job", "name": name, "controller": True}],
                }
            }
        )
        if failed and (failed > backoff_limit or fault):
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif succeeded >= target and (completions is not None or not active):
            outcome = ("Complete", "", "")
        elif deadline is not None:
            started = (
                self._progress_started({"lastTransitionTime": status["startTime"]}) or self.sim.loop.time()
            )
            left = float(deadline) - (self.sim.loop.time() - started)
            if left <= 0:
                outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            else:
                self._remind("jobs", job, left)
        if outcome is None and not spec.get("suspend"):
            want = (
                min(parallelism, max(0, target - succeeded))
                if completions is not None
                else (0 if succeeded else parallelism)
            )
            for _ in range(max(0, want - len(active))):
                pod = pod_from_template(
                    job,
                    spec.get("template") or {},
                    f"{name}-{random_suffix()}",
                    {
                        "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                        "batch.kubernetes.io/job-name": name,
                        "controller-uid": job["metadata"]["uid"],
                        "job-name": name,
                    },
                )
                pod["spec"]["restartPolicy"] = (
                    (spec.get("template") or {}).get("spec", {}).get("restartPolicy", "Never")
                )
                created = self.sim.create("pods", pod)
                if created is not None:
                    active.append(created)
                    self.sim.event(
                        job,
                        "SuccessfulCreate",
                        f"Created pod: {created['metadata']['name']}",
                        source="job-controller",
                    )
            if self._is_transfer(job):
                self._start_transfer(job)
        if outcome is not None:
            kind, reason, message = outcome
            for p in active:
                self.sim.delete("pods", ns, p["metadata"]["name"])
            active = []
            if kind == "Complete":
                set_condition(
                    status,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    probe_times=False,
                )
                set_condition(
                    status,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
                status["completionTime"] = now
                self.sim.event(job, "Completed", "Job completed", source="job-controller")
            else:
                set_condition(status, "FailureTarget", "True", reason, message)
                set_condition(status, "Failed", "True", reason, message)
                self.sim.event(job, reason, message, "Warning", source="job-controller")
            for c in status["conditions"]:
                c["lastProbeTime"] = now
            self._finish_transfer(job, kind == "Complete")
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if pod_is_ready(p))
        status["terminating"] = 0
        for k, v in (("succeeded", succeeded), ("failed", failed)):
            if v:
                status[k] = v
            else:
                status.pop(k, None)
        if not status["active"]:
            del status["active"]
        self._set_status("jobs.batch", job, status)

    # ------------------------------------------------------------------ model transfer progress
    def _is_transfer(self, job: dict) -> bool:
        labels = {
            **(job["metadata"].get("labels") or {}),
            **(((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}),
        }
        return labels.get("app.kubernetes.io/component") == TRANSFER_COMPONENT

    def _transfer_total(self, job: dict) -> int:
        for c in ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or ():
            raw = container_env(c).get("MODEL_SIZE_BYTES")
            if raw:
                return int(quantity(raw))
        return DEFAULT_TRANSFER_BYTES

    def _write_progress(self, job: dict, done: int, total: int, phase: str) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        cm_name = f"{name}-progress"
        data = {"bytes_done": str(done), "bytes_total": str(total), "phase": phase}
        cm = self.cluster.get("configmaps", ns, cm_name)
        if cm is None:
            self.sim.create(
                "configmaps",
                {
                    "metadata": {
                        "name": cm_name,
                        "namespace": ns,
                        "labels": {
                            "app.kubernetes.io/component": TRANSFER_COMPONENT,
                            "batch.kubernetes.io/job-name": name,
                        },
                        "ownerReferences": [owner_reference(job, controller=False)],
                    },
                    "data": data,
                },
            )
        elif (cm.get("data") or {}) != {**(cm.get("data") or {}), **data}:
            cm.setdefault("data", {}).update(data)
            cm["metadata"].pop("resourceVersion", None)
            self.sim.write("configmaps", cm)

    def _start_transfer(self, job: dict) -> None:
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        if key in self.transfers:
            return
        total = self._transfer_total(job)
        cm = self.cluster.peek("configmaps", key[0], f"{key[1]}-progress") or {}
        done = str((cm.get("data") or {}).get("bytes_done") or "")
        ours = any(
            r.get("uid") == job["metadata"]["uid"]
            for r in cm.get("metadata", {}).get("ownerReferences") or ()
        )
        if ours and done.isdigit():
            # A restored transfer (the API server restarted) goes on from the progress it had reported.
            start = self.sim.loop.time() - int(done) / max(total, 1) * self.sim.config.job_duration
        else:
            start = self.sim.loop.time() + self.sim.config.pod_start_delay
            self._write_progress(job, 0, total, "Running")

        def tick() -> None:
            current = self.cluster.get("jobs.batch", *key)
            if current is None or current["metadata"]["uid"] != job["metadata"]["uid"]:
                self.transfers.pop(key, None)
                return
            frac = min(
                0.99, max(0.0, (self.sim.loop.time() - start) / max(self.sim.config.job_duration, 0.001))
            )
            self._write_progress(current, int(total * frac), total, "Running")
            self.transfers[key] = self.sim.loop.call_later(self.sim.config.transfer_progress_interval, tick)

        self.transfers[key] = self.sim.loop.call_later(self.sim.config.transfer_progress_interval, tick)

    def _stop_transfer(self, ns: str, name: str) -> None:
        handle = self.transfers.pop((ns, name), None)
        if handle is not None:
            handle.cancel()

    def _finish_transfer(self, job: dict, ok: bool) -> None:
        if not self._is_transfer(job):
            return
        self._stop_transfer(job["metadata"]["namespace"], job["metadata"]["name"])
        total = self._transfer_total(job)
        cm = self.cluster.get(
            "configmaps", job["metadata"]["namespace"], f"{job['metadata']['name']}-progress"
        )
        done = int(((cm or {}).get("data") or {}).get("bytes_done", 0))
        self._write_progress(job, total if ok else done, total, "Succeeded" if ok else "Failed")


def _neg(ts: str) -> str:
    # Sort helper: newest creationTimestamp first within an ascending sort.
    return "".join(chr(255 - ord(ch)) for ch in ts)


def _ordinal(pod_name: str) -> int:
    try:
        return int(pod_name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _pinned_node(pod: dict) -> str | None:
    terms = (
        (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    for term in terms:
        for f in term.get("matchFields") or ():
            if f.get("key") == "metadata.name" and f.get("values"):
                return f["values"][0]
    return None


def _merge_tolerations(existing: list[dict] | None, extra: list[dict]) -> list[dict]:
    out = list(existing or [])
    for t in extra:
        if not any(x.get("key") == t["key"] and x.get("effect") == t["effect"] for x in out):
            out.append(dict(t))
    return out
