"""A devcluster with a state directory comes back from a restart as the same API server.

What a client notices: its old kubeconfig still verifies the server's certificate and still authenticates;
its objects are there with the same uids and resourceVersions; new writes get higher resourceVersions; a watch
resumes from the resourceVersion it had reached (or is told 410 Expired when that is too old); the pods the
simulation was running keep running instead of starting over, and nothing is created twice.  A server killed
with SIGKILL keeps every write it acknowledged; the directory is readable by its owner only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from devcluster.harness import DevCluster
from devcluster.sim import SimConfig
from devcluster.sim.testing import pod_condition, wait_for
from devcluster.store import HISTORY_SIZE

ROOT = Path(__file__).resolve().parents[2]
SIM = SimConfig(pod_start_delay=0.1, pod_ready_delay=0.1, job_duration=3.0, lb_listen=False)

WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def _client(kubeconfig: dict) -> client.ApiClient:
    return config.new_client_from_config_dict(kubeconfig)


def _ready(pod: client.V1Pod) -> bool:
    cond = pod_condition(pod, "Ready")
    return pod.status.phase == "Running" and cond is not None and cond.status == "True"


def _pods(core: client.CoreV1Api, ns: str, selector: str) -> dict[str, client.V1Pod]:
    return {p.metadata.name: p for p in core.list_namespaced_pod(ns, label_selector=selector).items}


def _started_events(core: client.CoreV1Api, ns: str) -> list[str]:
    return sorted(
        e.involved_object.name for e in core.list_namespaced_event(ns).items if e.reason == "Started"
    )


def test_objects_ca_and_tokens_survive_a_restart_and_the_old_kubeconfig_keeps_working(tmp_path):
    dc = DevCluster(nodes="cpu-small", sim_config=SIM, state_dir=tmp_path / "state").start()
    try:
        old_kubeconfig = dc.kubeconfig()
        api = _client(old_kubeconfig)
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        ext, custom = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)

        core.create_namespace({"metadata": {"name": "team"}})
        core.create_namespaced_config_map("team", {"metadata": {"name": "settings"}, "data": {"a": "1"}})
        core.create_namespaced_service_account("team", {"metadata": {"name": "robot"}})
        core.create_namespaced_secret(
            "team",
            {
                "metadata": {
                    "name": "robot-token",
                    "annotations": {"kubernetes.io/service-account.name": "robot"},
                },
                "type": "kubernetes.io/service-account-token",
                "data": {"token": "c2VjcmV0LXRva2Vu"},
            },
        )
        ext.create_custom_resource_definition(WIDGETS_CRD)
        custom.create_namespaced_custom_object(
            "example.com", "v1", "team", "widgets", {"metadata": {"name": "w1"}, "spec": {"size": 3}}
        )
        labels = {"app": "web"}
        apps.create_namespaced_deployment(
            "team",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                    },
                },
            },
        )
        core.create_namespaced_service(
            "team",
            {
                "metadata": {"name": "web"},
                "spec": {"type": "LoadBalancer", "selector": labels, "ports": [{"port": 8080}]},
            },
        )
        web = wait_for(
            lambda: (p := _pods(core, "team", "app=web"))
            and len(p) == 2
            and all(map(_ready, p.values()))
            and p
        )
        lb_ip = wait_for(
            lambda: (core.read_namespaced_service("web", "team").status.load_balancer.ingress or [None])[0]
        )
        batch.create_namespaced_job(
            "team",
            {
                "metadata": {"name": "report"},
                "spec": {
                    "template": {
                        "metadata": {"labels": {"job": "report"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "r", "image": "busybox:1.36"}],
                        },
                    }
                },
            },
        )
        job_pod = wait_for(
            lambda: [p for p in _pods(core, "team", "job=report").values() if p.status.phase == "Running"]
        )[0]

        before = {
            (o.kind, o.metadata.name): (o.metadata.uid, o.metadata.resource_version)
            for o in [
                core.read_namespace("team"),
                core.read_namespaced_config_map("settings", "team"),
                core.read_namespaced_service_account("robot", "team"),
                core.read_namespaced_secret("robot-token", "team"),
                apps.read_namespaced_deployment("web", "team"),
                *core.list_node().items,
            ]
        }
        widget = custom.get_namespaced_custom_object("example.com", "v1", "team", "widgets", "w1")
        last_rv = int(core.list_namespaced_config_map("team").metadata.resource_version)
        ca, admin_token, port = dc.ca_pem, dc.admin_token, dc.port

        dc.restart()

        assert (dc.port, dc.ca_pem, dc.admin_token) == (port, ca, admin_token)
        assert dc.kubeconfig() == old_kubeconfig
        # A client built before the restart: same CA (TLS verifies), same token (authenticates).
        api = _client(old_kubeconfig)
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        custom = client.CustomObjectsApi(api)
        after = {
            (o.kind, o.metadata.name): (o.metadata.uid, o.metadata.resource_version)
            for o in [
                core.read_namespace("team"),
                core.read_namespaced_config_map("settings", "team"),
                core.read_namespaced_service_account("robot", "team"),
                core.read_namespaced_secret("robot-token", "team"),
                apps.read_namespaced_deployment("web", "team"),
                *core.list_node().items,
            ]
        }
        assert after == before
        assert core.read_namespaced_secret("robot-token", "team").data == {"token": "c2VjcmV0LXRva2Vu"}
        assert custom.get_namespaced_custom_object("example.com", "v1", "team", "widgets", "w1") == widget

        # resourceVersions count on from where they were.
        created = core.create_namespaced_config_map("team", {"metadata": {"name": "later"}})
        assert int(created.metadata.resource_version) > last_rv

        # The running pods were taken over, not started again: same pods, same start, still Ready, one
        # "Started" event each; one ReplicaSet; the LoadBalancer keeps its address.
        pods = _pods(core, "team", "app=web")
        assert sorted(pods) == sorted(web)
        for name, pod in pods.items():
            assert pod.metadata.uid == web[name].metadata.uid and _ready(pod)
            assert pod.status.container_statuses[0].state.running.started_at == (
                web[name].status.container_statuses[0].state.running.started_at
            )
            assert pod.status.pod_ip == web[name].status.pod_ip
        assert len(apps.list_namespaced_replica_set("team").items) == 1
        assert core.read_namespaced_service("web", "team").status.load_balancer.ingress[0].ip == lb_ip.ip
        # The Job's pod, Running at the restart, finishes its run: the Job completes with that one pod.
        wait_for(
            lambda: any(
                c.type == "Complete" and c.status == "True"
                for c in batch.read_namespaced_job("report", "team").status.conditions or []
            ),
            timeout=30,
        )
        assert list(_pods(core, "team", "job=report")) == [job_pod.metadata.name]
        started = _started_events(core, "team")
        assert started == sorted([*web, job_pod.metadata.name])
        # New pods do not reuse a restored pod's address.
        apps.patch_namespaced_deployment_scale("web", "team", {"spec": {"replicas": 3}})
        pods = wait_for(
            lambda: (p := _pods(core, "team", "app=web"))
            and len(p) == 3
            and all(map(_ready, p.values()))
            and p
        )
        assert len({p.status.pod_ip for p in pods.values()}) == 3
    finally:
        dc.stop()

    # Another server on the same directory and port is the same server (what a new process would find).
    again = DevCluster(nodes="cpu-small", sim_config=SIM, state_dir=tmp_path / "state", port=port).start()
    try:
        assert again.kubeconfig() == old_kubeconfig and again.admin_token == admin_token
        core = client.CoreV1Api(_client(old_kubeconfig))
        assert core.read_namespaced_config_map("later", "team").metadata.uid == created.metadata.uid
        assert len(core.list_node().items) == 3
    finally:
        again.stop()


def test_a_watch_resumes_across_a_restart_or_is_told_410_expired(tmp_path):
    dc = DevCluster(nodes="cpu-small", sim_config=SIM, state_dir=tmp_path / "state").start()
    try:
        core = client.CoreV1Api(_client(dc.kubeconfig()))
        start_rv = core.list_namespaced_config_map("default").metadata.resource_version
        core.create_namespaced_config_map("default", {"metadata": {"name": "seen-later"}, "data": {"v": "1"}})

        dc.restart()

        core = client.CoreV1Api(_client(dc.kubeconfig()))
        core.patch_namespaced_config_map("seen-later", "default", {"data": {"v": "2"}})
        events = [
            (e["type"], e["object"].metadata.name, e["object"].data)
            for e in watch.Watch().stream(
                core.list_namespaced_config_map, "default", resource_version=start_rv, timeout_seconds=1
            )
        ]
        # What happened before the restart and after it, in order, from the watch position.
        assert events == [("ADDED", "seen-later", {"v": "1"}), ("MODIFIED", "seen-later", {"v": "2"})]

        for i in range(HISTORY_SIZE + 1):  # push the start position out of the kept history
            core.patch_namespaced_config_map("seen-later", "default", {"data": {"v": str(i)}})
        dc.restart()
        core = client.CoreV1Api(_client(dc.kubeconfig()))
        with pytest.raises(ApiException) as expired:
            list(
                watch.Watch().stream(
                    core.list_namespaced_config_map, "default", resource_version=start_rv, timeout_seconds=1
                )
            )
        assert expired.value.status == 410 and "too old resource version" in expired.value.reason
    finally:
        dc.stop()


def _serve(state: Path, kubeconfig: Path, port: int = 0) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "devcluster", "serve", "--port", str(port), "--nodes", "cpu-small",
        "--kubeconfig", str(kubeconfig), "--state-dir", str(state), "--sim-set", "lb_listen=false",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_serving(proc: subprocess.Popen, kubeconfig: Path) -> dict:
    deadline = time.monotonic() + 60
    while not kubeconfig.exists():
        if proc.poll() is not None:
            raise AssertionError(f"devcluster exited {proc.returncode}: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "devcluster did not write its kubeconfig within 60 s"
        time.sleep(0.1)
    return yaml.safe_load(kubeconfig.read_text())


def _end(proc: subprocess.Popen, sig: int) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return proc.stderr.read().decode()


def test_a_killed_server_keeps_every_acknowledged_write_and_the_directory_is_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # an existing, too open directory is tightened before keys go into it
    first = _serve(state, tmp_path / "first.yaml")
    try:
        kubeconfig = _wait_serving(first, tmp_path / "first.yaml")
        port = int(kubeconfig["clusters"][0]["cluster"]["server"].split(":")[2].split("/")[0])
        core = client.CoreV1Api(_client(kubeconfig))
        made = {}
        for i in range(40):
            cm = core.create_namespaced_config_map(
                "default", {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}}
            )
            made[cm.metadata.name] = (cm.metadata.uid, cm.metadata.resource_version)
        last_rv = max(int(rv) for _, rv in made.values())
        core.delete_namespaced_config_map("cm-0", "default")  # the last write: one more resourceVersion
        del made["cm-0"]
        # A second server on the same directory is refused while this one holds it.
        with pytest.raises(RuntimeError, match="in use by another devcluster"):
            DevCluster(nodes="cpu-small", state_dir=state).start()
    finally:
        _end(first, signal.SIGKILL)  # no chance to save anything on the way out

    assert state.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()} == dict.fromkeys(
        [
            "admin-token",
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "snapshot.jsonl",
            "journal-1.jsonl",
            "lock",
        ],
        0o600,
    )
    # A kill in the middle of writing a record leaves a torn last line: it is dropped, the rest replayed.
    with (state / "journal-1.jsonl").open("a") as journal:
        journal.write('{"c":"default","e":"ADDED","k":"configmaps","o":{"metadata":{"na')

    second = _serve(state, tmp_path / "second.yaml", port)
    try:
        assert _wait_serving(second, tmp_path / "second.yaml") == kubeconfig  # same server, CA and token
        core = client.CoreV1Api(_client(kubeconfig))
        listed = core.list_namespaced_config_map("default")
        kept = {
            cm.metadata.name: (cm.metadata.uid, cm.metadata.resource_version)
            for cm in listed.items
            if cm.metadata.name.startswith("cm-")
        }
        assert kept == made  # cm-0's deletion, acknowledged just before the kill, is kept too
        assert int(listed.metadata.resource_version) >= last_rv + 1  # the deletion's resourceVersion
        created = core.create_namespaced_config_map("default", {"metadata": {"name": "next"}})
        assert int(created.metadata.resource_version) > last_rv + 1
        assert len(core.list_node().items) == 3
    finally:
        log = _end(second, signal.SIGTERM)
    assert second.returncode == 0, log
    assert "unfinished record" in log
    # A graceful stop checkpoints everything: the next start has nothing to replay.
    journals = list(state.glob("journal-*.jsonl"))
    assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 1
    header, *clusters = (json.loads(line) for line in (state / "snapshot.jsonl").read_text().splitlines())
    assert header["format"] == 1 and [c["name"] for c in clusters] == ["default"]
    assert "next" in {o["metadata"]["name"] for o in clusters[0]["objects"]["configmaps"]}


def test_restart_without_a_state_dir_hands_the_clusters_over_in_memory():
    dc = DevCluster(nodes="cpu-small", sim_config=SIM, clusters=2).start()
    try:
        kubeconfig = dc.kubeconfig("c0002")
        core = client.CoreV1Api(_client(kubeconfig))
        made = core.create_namespaced_config_map("default", {"metadata": {"name": "kept"}})

        dc.restart()

        core = client.CoreV1Api(_client(kubeconfig))
        assert core.read_namespaced_config_map("kept", "default").metadata.uid == made.metadata.uid
        assert [n.metadata.name for n in core.list_node().items] == [
            "control-plane-0",
            "cpu-worker-0",
            "cpu-worker-1",
        ]
        assert dc.names == ["c0001", "c0002"]
    finally:
        dc.stop()


def test_a_namespace_terminating_at_the_restart_finishes_terminating(tmp_path):
    dc = DevCluster(nodes="cpu-small", sim_config=SIM, state_dir=tmp_path / "state").start()
    try:
        core = client.CoreV1Api(_client(dc.kubeconfig()))
        core.create_namespace({"metadata": {"name": "leaving"}})
        core.create_namespaced_config_map(
            "leaving", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
        )
        core.delete_namespace("leaving")
        wait_for(lambda: core.read_namespaced_config_map("held", "leaving").metadata.deletion_timestamp)
        assert core.read_namespace("leaving").status.phase == "Terminating"

        dc.restart()

        core = client.CoreV1Api(_client(dc.kubeconfig()))
        assert core.read_namespace("leaving").status.phase == "Terminating"
        core.patch_namespaced_config_map("held", "leaving", {"metadata": {"finalizers": None}})

        def gone() -> bool:
            try:
                core.read_namespace("leaving")
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, timeout=10)
    finally:
        dc.stop()
