"""The per-cluster simulation: one store subscriber feeding level-triggered controllers.

The store calls `Simulation.on_change` synchronously after every committed write (ours included).  The
callback only marks objects dirty and schedules one `drain` on the loop; `drain` reconciles dirty objects
controller by controller until nothing is left (bounded rounds), so controllers never re-enter each other
and a burst of writes costs one pass.  Reconcilers compute the desired state from what is stored, write only
differences (the store drops no-op updates), and are therefore safe to run any number of times.
Time-based behaviour (kubelet steps, Job durations, transfer progress) uses loop timers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import Any

from devcluster.sim import scheduler
from devcluster.sim.config import SimConfig
from devcluster.sim.kubelet import Kubelet, is_serving_image
from devcluster.sim.objects import controller_of, now_iso, pod_is_terminal, set_condition

log = logging.getLogger(__name__)

MAX_DRAIN_ROUNDS = 50
LOG_LINES_KEPT = 500

_OWNER_QUEUES = {
    "ReplicaSet": "replicasets",
    "DaemonSet": "daemonsets",
    "StatefulSet": "statefulsets",
    "Job": "jobs",
    "Deployment": "deployments",
}


class Simulation:
    """Everything simulated for one VirtualCluster (`cluster.sim`)."""

    def __init__(self, cluster: Any, config: SimConfig, hardware: dict[str, dict] | None = None) -> None:
        from devcluster.sim.network import Network
        from devcluster.sim.storage import Storage
        from devcluster.sim.workloads import Workloads

        self.cluster = cluster
        self.config = config
        self.hardware: dict[str, dict] = dict(hardware or {})
        self.loop: asyncio.AbstractEventLoop = cluster.loop or asyncio.get_event_loop()
        self.kubelet = Kubelet(self)
        self.workloads = Workloads(self)
        self.network = Network(self)
        self.storage = Storage(self)
        self.dirty: dict[str, set[tuple[str, str]]] = {
            q: set()
            for q in (
                "pvcs",
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "jobs",
                "schedule",
                "kubelet",
                "services",
                "endpoints",
                "ingresses",
                "node_labels",
            )
        }
        self.retry_unschedulable = False
        self._drain_scheduled = False
        self.job_faults: set[str] = set()  # "ns/name", "name" or "*"
        self.logs: dict[tuple[str, str, str], deque] = {}
        self.inference: dict[tuple[str, str], Any] = {}  # (ns, pod) -> InferenceServer
        self.pending_labels: dict[str, dict[str, str]] = {}
        try:
            self._event_source = "source" in inspect.signature(cluster.record_event).parameters
        except (TypeError, ValueError):
            self._event_source = False

    # ------------------------------------------------------------------ change feed
    def on_change(self, event_type: str, key: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        d = self.dirty
        if key == "pods":
            ref = controller_of(obj)
            if ref and ref.get("kind") in _OWNER_QUEUES:
                d[_OWNER_QUEUES[ref["kind"]]].add((ns, ref.get("name", "")))
            d["endpoints"].add((ns, "*"))
            if event_type == "DELETED":
                self.kubelet.forget(ns, name)
                for k in [k for k in self.logs if k[0] == ns and k[1] == name]:
                    del self.logs[k]
                self.retry_unschedulable = True
            else:
                node = (obj.get("spec") or {}).get("nodeName")
                if not node and not pod_is_terminal(obj) and not meta.get("deletionTimestamp"):
                    d["schedule"].add((ns, name))
                elif node and not pod_is_terminal(obj) and self.kubelet.wants(obj):
                    d["kubelet"].add((ns, name))
                if pod_is_terminal(obj):
                    self.retry_unschedulable = True
                    if (ns, name) in self.inference:
                        self.drop_pod_runtime(ns, name)
        elif key == "nodes":
            self.retry_unschedulable = True
            for ds in self.cluster.iter_objects("daemonsets.apps"):
                d["daemonsets"].add((ds["metadata"]["namespace"], ds["metadata"]["name"]))
            if event_type == "DELETED":
                self.hardware.pop(name, None)
                # Pod GC: pods bound to a node that no longer exists are deleted.
                self.loop.call_soon(self._collect_node_pods, name)
        elif key == "deployments.apps":
            d["deployments"].add((ns, name))
        elif key == "replicasets.apps":
            d["replicasets"].add((ns, name))
            ref = controller_of(obj)
            if ref and ref.get("kind") == "Deployment":
                d["deployments"].add((ns, ref.get("name", "")))
        elif key == "daemonsets.apps":
            d["daemonsets"].add((ns, name))
        elif key == "statefulsets.apps":
            d["statefulsets"].add((ns, name))
        elif key == "jobs.batch":
            d["jobs"].add((ns, name))
        elif key == "persistentvolumeclaims":
            if event_type == "DELETED":
                self.storage.released(obj)
            else:
                d["pvcs"].add((ns, name))
            self.retry_unschedulable = True
        elif key == "services":
            if event_type == "DELETED":
                self.network.service_deleted(obj)
            else:
                d["services"].add((ns, name))
                d["endpoints"].add((ns, name))
                d["ingresses"].add((ns, "*"))
        elif key == "ingresses.networking.k8s.io" and event_type != "DELETED":
            d["ingresses"].add((ns, name))
        elif key == "namespaces" and event_type == "DELETED":
            for k in [k for k in self.logs if k[0] == name]:
                del self.logs[k]
        else:
            return
        self.kick()

    def kick(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self.drain)

    def drain(self) -> None:
        self._drain_scheduled = False
        steps = (
            ("pvcs", self.storage.reconcile_pvc),
            ("deployments", self.workloads.reconcile_deployment),
            ("replicasets", self.workloads.reconcile_replicaset),
            ("statefulsets", self.workloads.reconcile_statefulset),
            ("daemonsets", self.workloads.reconcile_daemonset),
            ("jobs", self.workloads.reconcile_job),
            ("kubelet", self._kubelet_start),
            ("node_labels", self._apply_node_labels),
            ("services", self.network.reconcile_service),
            ("endpoints", self.network.reconcile_endpoints),
            ("ingresses", self.network.reconcile_ingress),
        )
        for _ in range(MAX_DRAIN_ROUNDS):
            if self.retry_unschedulable:
                self.retry_unschedulable = False
                for pod in self.cluster.iter_objects("pods"):
                    if not (pod.get("spec") or {}).get("nodeName") and not pod_is_terminal(pod):
                        self.dirty["schedule"].add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            if not any(self.dirty.values()):
                return
            for queue, fn in steps:
                items, self.dirty[queue] = self.dirty[queue], set()
                for ns, name in sorted(items):
                    try:
                        fn(ns, name)
                    except Exception:  # keep the other controllers running; the object is retried on change
                        log.exception("devcluster %s reconcile failed for %s/%s", queue, ns, name)
                if queue == "jobs":
                    self._schedule_pending()
        if any(self.dirty.values()):
            self.kick()

    # ------------------------------------------------------------------ scheduler glue
    def _schedule_pending(self) -> None:
        items, self.dirty["schedule"] = self.dirty["schedule"], set()
        if not items:
            return
        nodes = self.cluster.iter_objects("nodes")
        usage = scheduler.usage_by_node(self.cluster.iter_objects("pods"))
        for ns, name in sorted(items, key=self._pod_age):
            pod = self.cluster.get("pods", ns, name)
            if pod is None or pod["spec"].get("nodeName") or pod_is_terminal(pod):
                continue
            blocked = self.storage.unbound_claims(pod)
            if blocked:
                node_name, message = (
                    None,
                    (
                        f"0/{len(nodes)} nodes are available: pod has unbound immediate "
                        "PersistentVolumeClaims."
                    ),
                )
            else:
                node_name, message = scheduler.schedule(pod, nodes, usage)
            if node_name is None:
                self._unschedulable(pod, message)
                continue
            scheduler.add_usage(usage, node_name, pod)
            pod["spec"]["nodeName"] = node_name
            status = pod.setdefault("status", {})
            status["phase"] = "Pending"
            set_condition(status, "PodScheduled", "True")
            pod["metadata"].pop("resourceVersion", None)
            if self.write("pods", pod) is not None:
                self.event(
                    pod,
                    "Scheduled",
                    f"Successfully assigned {ns}/{name} to {node_name}",
                    source="default-scheduler",
                )

    def _pod_age(self, item: tuple[str, str]) -> tuple[str, str, str]:
        pod = self.cluster.peek("pods", item[0], item[1]) or {}
        return ((pod.get("metadata") or {}).get("creationTimestamp") or "", *item)

    def _unschedulable(self, pod: dict, message: str) -> None:
        status = pod.setdefault("status", {})
        cond = next((c for c in status.get("conditions") or () if c.get("type") == "PodScheduled"), None)
        if cond and cond.get("status") == "False" and cond.get("message") == message:
            return
        status["phase"] = "Pending"
        set_condition(status, "PodScheduled", "False", "Unschedulable", message)
        pod["metadata"].pop("resourceVersion", None)
        self.write_status("pods", pod)
        self.event(pod, "FailedScheduling", message, "Warning", source="default-scheduler")

    def _collect_node_pods(self, node_name: str) -> None:
        if self.cluster.peek("nodes", None, node_name) is not None:
            return
        for pod in self.cluster.list("pods", field_selector=f"spec.nodeName={node_name}"):
            self.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _kubelet_start(self, ns: str, name: str) -> None:
        pod = self.cluster.get("pods", ns, name)
        if pod and pod["spec"].get("nodeName") and not pod_is_terminal(pod) and self.kubelet.wants(pod):
            self.kubelet.start(pod)

    # ------------------------------------------------------------------ pods at runtime
    def pod_running(self, pod: dict) -> None:
        """Called by the kubelet once containers run: collectors label nodes, servers get a simulator."""
        labels = self.kubelet.collector_labels(pod)
        node = pod["spec"].get("nodeName")
        if labels and node:
            self.pending_labels.setdefault(node, {}).update(labels)
            self.dirty["node_labels"].add(("", node))
            self.kick()
        for c in pod["spec"].get("containers") or ():
            if is_serving_image(c.get("image", "")):
                from devcluster.sim.inference import InferenceServer

                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                self.inference[key] = InferenceServer.for_pod(
                    pod, c, self.hardware.get(node or ""), self.config
                )
                for line in self.inference[key].startup_log():
                    self.append_log(pod, c["name"], line)
                break

    def drop_pod_runtime(self, ns: str, name: str) -> None:
        server = self.inference.pop((ns, name), None)
        if server is not None:
            server.close()

    def _apply_node_labels(self, _ns: str, name: str) -> None:
        labels = self.pending_labels.pop(name, None)
        if not labels:
            return
        node = self.cluster.get("nodes", None, name)
        if node is None:
            return
        current = node["metadata"].setdefault("labels", {})
        if all(current.get(k) == v for k, v in labels.items()):
            return
        current.update(labels)
        node["metadata"].pop("resourceVersion", None)
        self.write("nodes", node)

    def append_log(self, pod: dict, container: str, line: str) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"], container)
        buf = self.logs.get(key)
        if buf is None:
            buf = self.logs[key] = deque(maxlen=LOG_LINES_KEPT)
        buf.append(f"{now_iso()} {line}")

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str | None:
        """Log text of a pod's container (first container when None), for the API's pods/log endpoint."""
        if container is None:
            pod = self.cluster.peek("pods", namespace, name)
            containers = ((pod or {}).get("spec") or {}).get("containers") or [{}]
            container = containers[0].get("name", "")
        buf = self.logs.get((namespace, name, container or ""))
        return "".join(line.split(" ", 1)[1] + "\n" for line in buf) if buf else None

    # ------------------------------------------------------------------ faults
    def job_fault_for(self, pod: dict) -> bool:
        if not self.job_faults:
            return False
        ref = controller_of(pod)
        if not ref or ref.get("kind") != "Job":
            return False
        ns = pod["metadata"]["namespace"]
        return bool({"*", ref.get("name"), f"{ns}/{ref.get('name')}"} & self.job_faults)

    def set_node_ready(self, node_name: str, ready: bool) -> None:
        node = self.cluster.get("nodes", None, node_name)
        if node is None:
            from devcluster.store import ApiError

            raise ApiError(404, "NotFound", f'nodes "{node_name}" not found')
        status = node.setdefault("status", {})
        taints = [
            t
            for t in node.setdefault("spec", {}).get("taints") or ()
            if t.get("key") != scheduler.NOT_READY_TAINT
        ]
        ts = now_iso()
        for c in status.get("conditions") or ():
            if c.get("type") != "Ready":
                continue
            if ready:
                c.update(status="True", reason="KubeletReady", message="kubelet is posting ready status")
            else:
                c.update(status="False", reason="KubeletNotReady", message="container runtime is down")
            c["lastTransitionTime"] = ts
            c["lastHeartbeatTime"] = ts
        if not ready:
            taints += [
                {"key": scheduler.NOT_READY_TAINT, "effect": "NoSchedule"},
                {"key": scheduler.NOT_READY_TAINT, "effect": "NoExecute", "timeAdded": ts},
            ]
        if taints:
            node["spec"]["taints"] = taints
        else:
            node["spec"].pop("taints", None)
        node["metadata"].pop("resourceVersion", None)
        self.write("nodes", node)
        self.kubelet.mark_node_pods(node_name, ready)
        if ready:
            # Pods bound while the node was down start now that its kubelet reports again.
            for pod in self.cluster.list("pods", field_selector=f"spec.nodeName={node_name}"):
                if (pod.get("status") or {}).get("phase") in (None, "Pending"):
                    self.kubelet.tracked.pop((pod["metadata"]["namespace"], pod["metadata"]["name"]), None)
                    self.dirty["kubelet"].add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            self.kick()

    # ------------------------------------------------------------------ store helpers
    def write(self, key: str, obj: dict) -> dict | None:
        from devcluster.store import ApiError

        try:
            return self.cluster.replace(key, obj)
        except ApiError as exc:  # the object changed or vanished meanwhile: its next event retries
            log.debug("devcluster write %s %s: %s", key, obj["metadata"].get("name"), exc.message)
            return None

    def write_status(self, key: str, obj: dict) -> dict | None:
        from devcluster.store import ApiError

        try:
            return self.cluster.update_status(key, obj)
        except ApiError as exc:
            log.debug("devcluster status %s %s: %s", key, obj["metadata"].get("name"), exc.message)
            return None

    def create(self, key: str, obj: dict) -> dict | None:
        from devcluster.store import ApiError

        try:
            return self.cluster.create(key, obj)
        except ApiError as exc:
            log.debug("devcluster create %s %s: %s", key, obj["metadata"].get("name"), exc.message)
            return None

    def delete(self, key: str, ns: str | None, name: str) -> None:
        from devcluster.store import ApiError

        try:
            self.cluster.delete(key, ns, name)
        except ApiError as exc:
            log.debug("devcluster delete %s %s: %s", key, name, exc.message)

    def event(
        self, involved: dict, reason: str, message: str, type_: str = "Normal", source: str = ""
    ) -> None:
        # The reporting component ("kubelet", "default-scheduler", ...) is passed when the store accepts it.
        kwargs = {"source": source or "kubelet"} if self._event_source else {}
        try:
            self.cluster.record_event(involved, reason, message, type_, **kwargs)
        except Exception:  # events are best effort, as in the real recorder
            log.debug("event %s dropped", reason, exc_info=True)
