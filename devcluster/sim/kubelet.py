"""The simulated kubelet: pod lifecycle on simulated nodes.

Bound pods walk the real status sequence on loop timers (never blocking the loop):
ContainerCreating -> (pod_start_delay) Running, podIP assigned, Pulled/Created/Started events ->
(pod_ready_delay) Ready.  restartPolicy Never/OnFailure pods (Jobs) finish after `job_duration` as
Succeeded, or Failed when the container env has DEVCLUSTER_FAIL=1 or a job-fail fault names their Job.
Known-bad images (a reference containing "does-not-exist" or "nonexistent") end in ErrImagePull ->
ImagePullBackOff; DEVCLUSTER_CRASH=1 gives CrashLoopBackOff with a growing restartCount.  Each step re-reads
the pod and stops when its uid changed, so deleted or replaced pods leave no stray writes.

When a collector pod (NFD worker, GPU feature discovery, ROCm labeller) starts, its node gets the feature
labels computed from the hidden hardware description; a serving pod (a vLLM image) gets an inference
simulator registered under its namespace/name.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devcluster.sim import hardware
from devcluster.sim.objects import condition, container_env, now_iso, pod_env, set_condition
from devcluster.sim.scheduler import pod_requests

if TYPE_CHECKING:
    from devcluster.sim.core import Simulation

log = logging.getLogger(__name__)

BAD_IMAGE_MARKERS = ("does-not-exist", "nonexistent")
# The order kubelet reports pod conditions in.
_CONDITION_ORDER = {
    "PodReadyToStartContainers": 0,
    "Initialized": 1,
    "Ready": 2,
    "ContainersReady": 3,
    "PodScheduled": 4,
}


def _seconds_since(timestamp: str) -> float:
    """Wall-clock seconds since an RFC 3339 timestamp of ours (0 when there is none): what a restored pod
    already ran survives a restart, the loop clock does not."""
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(UTC) - then).total_seconds())


def image_is_bad(image: str) -> bool:
    return not image or any(m in image for m in BAD_IMAGE_MARKERS)


def is_serving_image(image: str) -> bool:
    repo = image.split("@")[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: repo.rfind(":")]
    return "vllm" in repo.lower()


def _full_image(image: str) -> str:
    parts = image.split("/")
    if len(parts) == 1:
        return f"docker.io/library/{image}"
    if "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
        return f"docker.io/{image}"
    return image


def _image_id(image: str) -> str:
    ref = _full_image(image).split("@")[0]
    repo = ref[: ref.rfind(":")] if ":" in ref.rsplit("/", 1)[-1] else ref
    return f"{repo}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"


def _qos_class(pod: dict) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and req[r] != lim[r]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class Kubelet:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.tracked: dict[tuple[str, str], str] = {}  # (ns, name) -> uid of the pod being run
        self.timers: dict[tuple[str, str], list[Any]] = {}
        self.restarts: dict[tuple[str, str], int] = {}
        self.ip_next: dict[str, int] = {}

    # ------------------------------------------------------------------ bookkeeping
    def wants(self, pod: dict) -> bool:
        key = (pod["metadata"].get("namespace", ""), pod["metadata"]["name"])
        return self.tracked.get(key) != pod["metadata"].get("uid")

    def forget(self, ns: str, name: str) -> None:
        for h in self.timers.pop((ns, name), []):
            h.cancel()
        self.tracked.pop((ns, name), None)
        self.restarts.pop((ns, name), None)
        self.sim.drop_pod_runtime(ns, name)

    def _later(self, delay: float, fn: Any, pod: dict, *args: Any) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        uid = pod["metadata"]["uid"]
        handles = self.timers.setdefault(key, [])
        handles[:] = [h for h in handles if not h.cancelled() and h.when() > self.sim.loop.time()]
        handles.append(self.sim.loop.call_later(max(0.0, delay), self._run, fn, key, uid, args))

    def _run(self, fn: Any, key: tuple[str, str], uid: str, args: tuple) -> None:
        pod = self.sim.cluster.get("pods", key[0], key[1])
        if pod is None or pod["metadata"].get("uid") != uid or self.tracked.get(key) != uid:
            return
        try:
            fn(pod, *args)
        except Exception:  # one pod's bad spec must not stop the loop's other timers
            log.exception("kubelet step failed for %s/%s", *key)

    def _write_status(self, pod: dict) -> dict | None:
        conds = (pod.get("status") or {}).get("conditions")
        if conds:
            conds.sort(key=lambda c: _CONDITION_ORDER.get(c.get("type"), 99))
        pod["metadata"].pop("resourceVersion", None)
        return self.sim.write_status("pods", pod)

    def _node(self, pod: dict) -> dict | None:
        return self.sim.cluster.get("nodes", None, pod["spec"]["nodeName"])

    def _node_ready(self, node: dict | None) -> bool:
        c = condition(node or {}, "Ready")
        return c is not None and c.get("status") == "True"

    # ------------------------------------------------------------------ lifecycle
    def start(self, pod: dict) -> None:
        """A pod was bound to a node: report ContainerCreating, then run it on timers."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        self.forget(*key)
        self.tracked[key] = meta["uid"]
        node = self._node(pod)
        if node is None:
            return
        status = pod.setdefault("status", {})
        status["phase"] = "Pending"
        set_condition(status, "PodReadyToStartContainers", "False")
        set_condition(status, "Initialized", "True")
        names = [c["name"] for c in pod["spec"].get("containers") or ()]
        not_ready = f"containers with unready status: [{' '.join(names)}]"
        set_condition(status, "Ready", "False", "ContainersNotReady", not_ready)
        set_condition(status, "ContainersReady", "False", "ContainersNotReady", not_ready)
        set_condition(status, "PodScheduled", "True")
        host_ip = next(
            (
                a["address"]
                for a in (node.get("status") or {}).get("addresses") or ()
                if a.get("type") == "InternalIP"
            ),
            "10.0.0.1",
        )
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
        status["startTime"] = now_iso()
        status["qosClass"] = _qos_class(pod)
        status["containerStatuses"] = [
            self._cstatus(c, pod, {"waiting": {"reason": "ContainerCreating"}})
            for c in pod["spec"]["containers"]
        ]
        if pod["spec"].get("initContainers"):
            status["initContainerStatuses"] = [
                self._cstatus(
                    c,
                    pod,
                    {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": status["startTime"],
                            "finishedAt": status["startTime"],
                        }
                    },
                )
                for c in pod["spec"]["initContainers"]
            ]
        pod = self._write_status(pod) or pod
        if self._node_ready(node):
            self._later(self.sim.config.pod_start_delay, self._containers_start, pod)

    def resume(self, pod: dict) -> bool:
        """Take over a pod this kubelet had already started before the API server restarted (restored state):
        its status stays as stored and only what was still to come is re-armed (Ready, a Job's finish, the
        next crash or image back-off); a serving pod gets its inference simulator back.  False when the pod
        was never started, or is finished: `start()` (or nothing) is right for those."""
        meta, status = pod["metadata"], pod.get("status") or {}
        cstatuses = status.get("containerStatuses") or []
        node = self._node(pod) if pod["spec"].get("nodeName") else None
        if not cstatuses or node is None or status.get("phase") not in ("Pending", "Running"):
            return False
        key = (meta["namespace"], meta["name"])
        self.tracked[key] = meta["uid"]
        self.restarts[key] = max(int(cs.get("restartCount") or 0) for cs in cstatuses)
        ip = status.get("podIP") or ""
        if ip.rpartition(".")[2].isdigit():  # new pods on this node must not get a restored pod's address
            name = node["metadata"]["name"]
            self.ip_next[name] = max(self.ip_next.get(name, 1), int(ip.rpartition(".")[2]))
        waiting = {((cs.get("state") or {}).get("waiting") or {}).get("reason"): cs for cs in cstatuses}
        config = self.sim.config
        if status.get("phase") == "Pending":
            if "ErrImagePull" in waiting:
                self._later(config.crash_backoff, self._image_backoff, pod, [waiting["ErrImagePull"]["name"]])
            elif "ContainerCreating" in waiting and self._node_ready(node):
                self._later(config.pod_start_delay, self._containers_start, pod)
            return True
        self.sim.pod_running(pod)
        crashing = [
            c["name"]
            for c in pod["spec"].get("containers") or ()
            if container_env(c).get("DEVCLUSTER_CRASH", "").lower() in ("1", "true")
        ]
        ready = (condition(pod, "Ready") or {}).get("status") == "True"
        if crashing:
            if "CrashLoopBackOff" not in waiting:
                self._later(config.pod_ready_delay, self._crash, pod, crashing)
            elif self.restarts[key] < config.max_restarts:
                self._later(config.crash_backoff, self._restart, pod, crashing)
        elif pod["spec"].get("restartPolicy") in ("Never", "OnFailure"):
            ran = _seconds_since(
                min(
                    ((cs.get("state") or {}).get("running") or {}).get("startedAt") or "~" for cs in cstatuses
                )
            )
            if not ready and config.pod_ready_delay < config.job_duration:
                self._later(config.pod_ready_delay - ran, self._ready, pod)
            self._later(config.job_duration - ran, self._finish, pod)
        elif not ready:
            self._later(config.pod_ready_delay, self._ready, pod)
        return True

    def _cstatus(
        self,
        c: dict,
        pod: dict,
        state: dict,
        ready: bool = False,
        started: bool = False,
        restarts: int = 0,
        last: dict | None = None,
    ) -> dict:
        out = {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "" if "waiting" in state else _image_id(c.get("image", "")),
            "ready": ready,
            "started": started,
            "restartCount": restarts,
            "state": state,
            "lastState": last or {},
        }
        if "waiting" not in state:
            seed = f"{pod['metadata']['uid']}/{c['name']}/{restarts}"
            out["containerID"] = "containerd://" + hashlib.sha256(seed.encode()).hexdigest()
        return out

    def _pod_ip(self, pod: dict, node: dict) -> str:
        cidr = ((node.get("spec") or {}).get("podCIDR") or "10.244.0.0/24").split("/")[0]
        prefix = cidr.rsplit(".", 1)[0]
        name = node["metadata"]["name"]
        n = self.ip_next.get(name, 1) + 1
        if n > 254:
            n = 2
        self.ip_next[name] = n
        return f"{prefix}.{n}"

    def _event(self, pod: dict, reason: str, message: str, type_: str = "Normal") -> None:
        self.sim.event(pod, reason, message, type_)

    def _containers_start(self, pod: dict) -> None:
        spec, status = pod["spec"], pod["status"]
        containers = spec["containers"]
        bad = [c for c in containers if image_is_bad(c.get("image", ""))]
        if bad:
            self._image_pull_failed(pod, bad)
            return
        node = self._node(pod)
        if node is None:
            return
        ip = status.get("podIP") or self._pod_ip(pod, node)
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
        status["phase"] = "Running"
        set_condition(status, "PodReadyToStartContainers", "True")
        started_at = now_iso()
        restarts = self.restarts.get((pod["metadata"]["namespace"], pod["metadata"]["name"]), 0)
        status["containerStatuses"] = [
            self._cstatus(
                c,
                pod,
                {"running": {"startedAt": started_at}},
                started=True,
                restarts=restarts,
                last=self._last_state(pod, c),
            )
            for c in containers
        ]
        for c in containers:
            image = c.get("image", "")
            if restarts == 0:
                policy = c.get("imagePullPolicy") or (
                    "Always"
                    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]
                    else "IfNotPresent"
                )
                if policy == "Always":
                    self._event(pod, "Pulling", f'Pulling image "{image}"')
                    self._event(
                        pod,
                        "Pulled",
                        f'Successfully pulled image "{image}" in 812ms (812ms including '
                        "waiting). Image size: 51234567 bytes.",
                    )
                else:
                    self._event(pod, "Pulled", f'Container image "{image}" already present on machine')
            self._event(pod, "Created", f"Created container: {c['name']}")
            self._event(pod, "Started", f"Started container {c['name']}")
            self.sim.append_log(
                pod, c["name"], f"devcluster: container {c['name']} started from image {image}"
            )
        pod = self._write_status(pod) or pod
        self.sim.pod_running(pod)
        crashing = [
            c for c in containers if container_env(c).get("DEVCLUSTER_CRASH", "").lower() in ("1", "true")
        ]
        if crashing:
            self._later(self.sim.config.pod_ready_delay, self._crash, pod, [c["name"] for c in crashing])
            return
        if spec.get("restartPolicy") in ("Never", "OnFailure"):
            if self.sim.config.pod_ready_delay < self.sim.config.job_duration:
                self._later(self.sim.config.pod_ready_delay, self._ready, pod)
            self._later(self.sim.config.job_duration, self._finish, pod)
        else:
            self._later(self.sim.config.pod_ready_delay, self._ready, pod)

    def _last_state(self, pod: dict, c: dict) -> dict:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            if cs.get("name") == c["name"] and cs.get("lastState"):
                return cs["lastState"]
        return {}

    def _ready(self, pod: dict) -> None:
        if pod["status"].get("phase") != "Running" or not self._node_ready(self._node(pod)):
            return
        status = pod["status"]
        set_condition(status, "Ready", "True")
        set_condition(status, "ContainersReady", "True")
        for cs in status.get("containerStatuses") or ():
            if "running" in (cs.get("state") or {}):
                cs["ready"] = True
        self._write_status(pod)

    def mark_node_pods(self, node_name: str, ready: bool) -> None:
        """Node readiness changed: its running pods follow (node lifecycle controller / kubelet report)."""
        for pod in self.sim.cluster.list("pods", field_selector=f"spec.nodeName={node_name}"):
            status = pod.get("status") or {}
            if status.get("phase") != "Running":
                continue
            if ready:
                if any(
                    not cs.get("ready") and "running" not in (cs.get("state") or {})
                    for cs in status.get("containerStatuses") or ()
                ):
                    continue
                set_condition(status, "Ready", "True")
                set_condition(status, "ContainersReady", "True")
                for cs in status.get("containerStatuses") or ():
                    cs["ready"] = "running" in (cs.get("state") or {})
            else:
                set_condition(status, "Ready", "False", "NodeNotReady", "")
                for cs in status.get("containerStatuses") or ():
                    cs["ready"] = False
            self._write_status(pod)

    def _finish(self, pod: dict) -> None:
        status = pod["status"]
        if status.get("phase") != "Running":
            return
        failed = pod_env(pod).get("DEVCLUSTER_FAIL", "").lower() in ("1", "true") or self.sim.job_fault_for(
            pod
        )
        finished = now_iso()
        exit_code = 1 if failed else 0
        reason = "Error" if failed else "Completed"
        for cs in status.get("containerStatuses") or ():
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt", finished)
            cs["state"] = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": finished,
                    "containerID": cs.get("containerID", ""),
                }
            }
            cs["ready"] = False
            cs["started"] = False
            self.sim.append_log(
                pod,
                cs["name"],
                "devcluster: simulated failure (exit code 1)" if failed else "devcluster: completed",
            )
        status["phase"] = "Failed" if failed else "Succeeded"
        set_condition(status, "Ready", "False", "PodCompleted", "")
        set_condition(status, "ContainersReady", "False", "PodCompleted", "")
        set_condition(status, "PodReadyToStartContainers", "False")
        self._write_status(pod)

    def _crash(self, pod: dict, names: list[str]) -> None:
        if pod["status"].get("phase") != "Running":
            return
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        restarts = self.restarts.get(key, 0) + 1
        self.restarts[key] = restarts
        backoff = self.sim.config.crash_backoff * min(16, 2 ** (restarts - 1))
        now = now_iso()
        status = pod["status"]
        for cs in status.get("containerStatuses") or ():
            if cs["name"] not in names:
                continue
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt", now)
            cs["lastState"] = {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "startedAt": started,
                    "finishedAt": now,
                    "containerID": cs.get("containerID", ""),
                }
            }
            cs["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {int(backoff * 10)}s restarting failed container={cs['name']} "
                    f"pod={key[1]}_{key[0]}({pod['metadata']['uid']})",
                }
            }
            cs["ready"] = False
            cs["started"] = False
            cs["restartCount"] = restarts
            self.sim.append_log(pod, cs["name"], "Error: simulated crash (DEVCLUSTER_CRASH=1)")
            self._event(
                pod,
                "BackOff",
                f"Back-off restarting failed container {cs['name']} in pod "
                f"{key[1]}_{key[0]}({pod['metadata']['uid']})",
                "Warning",
            )
        names_all = [c["name"] for c in pod["spec"]["containers"]]
        msg = f"containers with unready status: [{' '.join(names_all)}]"
        set_condition(status, "Ready", "False", "ContainersNotReady", msg)
        set_condition(status, "ContainersReady", "False", "ContainersNotReady", msg)
        self._write_status(pod)
        if restarts < self.sim.config.max_restarts:
            self._later(backoff, self._restart, pod, names)

    def _restart(self, pod: dict, names: list[str]) -> None:
        now = now_iso()
        restarts = self.restarts.get((pod["metadata"]["namespace"], pod["metadata"]["name"]), 0)
        for cs in pod["status"].get("containerStatuses") or ():
            if cs["name"] in names:
                c = next(c for c in pod["spec"]["containers"] if c["name"] == cs["name"])
                new = self._cstatus(
                    c,
                    pod,
                    {"running": {"startedAt": now}},
                    started=True,
                    restarts=restarts,
                    last=cs.get("lastState"),
                )
                cs.clear()
                cs.update(new)
                self._event(pod, "Started", f"Started container {c['name']}")
        self._write_status(pod)
        self._later(self.sim.config.pod_ready_delay, self._crash, pod, names)

    def _image_pull_failed(self, pod: dict, bad: list[dict]) -> None:
        status = pod["status"]
        for c in bad:
            image = c.get("image", "")
            self._event(pod, "Pulling", f'Pulling image "{image}"')
            self._event(
                pod,
                "Failed",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack '
                f'image "{_full_image(image)}": failed to resolve reference "{_full_image(image)}": '
                f"{_full_image(image)}: not found",
                "Warning",
            )
            self._event(pod, "Failed", "Error: ErrImagePull", "Warning")
        for cs in status.get("containerStatuses") or ():
            if any(cs["name"] == c["name"] for c in bad):
                cs["state"] = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f"failed to pull image {cs['image']!r}: not found",
                    }
                }
        self._write_status(pod)
        self._later(self.sim.config.crash_backoff, self._image_backoff, pod, [c["name"] for c in bad])

    def _image_backoff(self, pod: dict, names: list[str]) -> None:
        for cs in pod["status"].get("containerStatuses") or ():
            if cs["name"] in names:
                cs["state"] = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{cs["image"]}"',
                    }
                }
                self._event(pod, "BackOff", f'Back-off pulling image "{cs["image"]}"', "Normal")
                self._event(pod, "Failed", "Error: ImagePullBackOff", "Warning")
        self._write_status(pod)

    # ------------------------------------------------------------------ collectors
    def collector_labels(self, pod: dict) -> dict[str, str]:
        node_name = pod["spec"].get("nodeName")
        node = self.sim.cluster.get("nodes", None, node_name) if node_name else None
        return hardware.collector_labels(pod, self.sim.hardware.get(node_name) or {}, node)


__all__ = ["Kubelet", "image_is_bad", "is_serving_image", "pod_requests"]
