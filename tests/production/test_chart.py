"""charts/budcluster: BudCluster itself on Kubernetes.

Offline: lint-clean with the Helm engine (strict), the values schema refuses what would go wrong, every rendered
object valid under kubernetes-validate (strict, newest schema it ships), every pod PodSecurity ``restricted``.
On the real control plane (kube-apiserver, controllers, scheduler, KWOK): installed with the Helm engine into a
namespace that enforces ``restricted``: the migration hook Job completes first, every pod is admitted,
scheduled and Running; an upgrade to a new image tag rolls web and the workers while beat stays one pod.
"""

from __future__ import annotations

import copy
import threading

import helm_python as helm
import pytest
from kubernetes import client, watch

from devcluster.real.testing import real_cluster  # noqa: F401  (session fixture)
from tests.charts.helpers import (
    CHARTS_DIR,
    containers,
    find,
    k8s_native,
    lint,
    one,
    render_objects,
    validate,
)
from tests.worker import wait_for

CHART = "budcluster"
SECRETS = {
    "django": {"name": "bc-django", "key": "DJANGO_SECRET_KEY"},
    "database": {"name": "bc-database", "key": "DATABASE_URL"},
    "broker": {"name": "bc-broker", "key": "CELERY_BROKER_URL"},
    "cryptoKeys": {"name": "bc-crypto-keys"},
}
VALUES = {"secrets": SECRETS}
EVERYTHING = {
    "secrets": {**SECRETS, "retiredKeys": {"name": "bc-retired-keys"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "budcluster.example.com",
        "tlsSecretName": "bc-tls",
    },
    "worker": {"autoscaling": {"hpa": {"enabled": True}}},
    "pollWorker": {"autoscaling": {"keda": {"enabled": True, "redisAddress": "redis.data:6379"}}},
    "serviceMonitor": {"enabled": True},
    "env": {"DJANGO_SECURE": "1", "WORKFLOW_STALE_AFTER": 30},
}
POD_KINDS = ("Deployment", "Job")


def pod_specs(objs):
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs if o["kind"] in POD_KINDS]


def env_of(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- offline ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [VALUES, EVERYTHING], ids=["defaults", "everything"])
def test_lint_clean_and_every_object_valid(values):
    assert lint(CHART, values) == []
    objs = render_objects(CHART, values, release="bc", namespace="budcluster")
    for obj in k8s_native(
        o for o in objs if not o["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))
    ):
        validate(obj)


def test_every_pod_meets_pod_security_restricted_and_writes_only_var():
    objs = render_objects(CHART, EVERYTHING, release="bc", namespace="budcluster")
    specs = pod_specs(objs)
    assert {name for name, _ in specs} == {
        "bc-budcluster-web", "bc-budcluster-worker", "bc-budcluster-poll-worker", "bc-budcluster-beat",
        "bc-budcluster-migrate",
    }  # fmt: skip
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 1000, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert all(v.get("emptyDir") is not None or "secret" in v for v in spec["volumes"]), name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
            assert writable == ["/app/var"], name
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name


def test_secrets_come_from_existing_secrets_only():
    objs = render_objects(CHART, EVERYTHING, release="bc", namespace="budcluster")
    assert find(objs, "Secret") == []
    web = containers(one(objs, "Deployment", "bc-budcluster-web"))[0]
    env = env_of(web)
    for var, ref in (
        ("DJANGO_SECRET_KEY", "django"),
        ("DATABASE_URL", "database"),
        ("CELERY_BROKER_URL", "broker"),
    ):
        assert env[var] == {"secretKeyRef": {"name": SECRETS[ref]["name"], "key": SECRETS[ref]["key"]}}
    assert "budcluster.example.com" in env["DJANGO_ALLOWED_HOSTS"].split(",")
    assert env["DJANGO_CSRF_TRUSTED_ORIGINS"] == "https://budcluster.example.com"
    assert env["LOG_FORMAT"] == "json" and env["WORKFLOW_STALE_AFTER"] == "30"
    # Without the Secrets named, nothing renders: the message says which value is missing.
    with pytest.raises(helm.HelmError, match=r"secrets\.\w+\.name: the name of an existing Secret"):
        render_objects(CHART, {}, release="bc", namespace="budcluster")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"env": {"DATABASE_URL": "postgresql://u:p@db/x"}}, "DATABASE_URL"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"worker": {"terminationGracePeriodSeconds": 5}}, "terminationGracePeriodSeconds"),
        ({"web": {"replicas": 0}}, "replicas"),
        ({"image": {"tag": "bad tag"}}, "tag"),
    ],
)
def test_values_schema_refuses(values, complaint):
    merged = {**copy.deepcopy(VALUES), **values}
    with pytest.raises(helm.HelmError, match=complaint):
        render_objects(CHART, merged, release="bc", namespace="budcluster")


def test_workers_web_and_beat_shape():
    objs = render_objects(CHART, EVERYTHING, release="bc", namespace="budcluster")
    beat = one(objs, "Deployment", "bc-budcluster-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    worker = one(objs, "Deployment", "bc-budcluster-worker")
    assert "replicas" not in worker["spec"]  # the HPA owns it
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5  # WORKFLOW_INLINE_SECONDS
    assert containers(worker)[0]["args"][:3] == ["worker", "-Q", "celery"]
    assert one(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "bc-budcluster-worker"
    scaled = one(objs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "bc-budcluster-poll-worker"
    assert scaled["spec"]["triggers"][0]["metadata"]["listName"] == "polls"
    job = one(objs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert containers(job)[0]["args"] == ["migrate"]
    web = one(objs, "Deployment", "bc-budcluster-web")
    probe = containers(web)[0]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and {"name": "Host", "value": "localhost"} in probe["httpHeaders"]
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert one(objs, "Ingress")["spec"]["rules"][0]["host"] == "budcluster.example.com"
    assert one(objs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objs, "NetworkPolicy")}
    assert policies["bc-budcluster-base"]["ingress"] == []  # nothing reaches beat, workers or the Job
    assert policies["bc-budcluster-web"]["ingress"][0]["ports"] == [{"port": 9082, "protocol": "TCP"}]
    with pytest.raises(helm.HelmError, match="not both"):
        render_objects(
            CHART,
            {**VALUES, "worker": {"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}},
            release="bc",
            namespace="budcluster",
        )


# --- the real control plane ---------------------------------------------------------------------------------------

NAMESPACE = "budcluster-chart"


def _pods(core, component: str | None = None):
    selector = "app.kubernetes.io/instance=bc"
    if component:
        selector += f",app.kubernetes.io/component={component}"
    return core.list_namespaced_pod(NAMESPACE, label_selector=selector).items


def _running_with(core, component: str, image: str, count: int) -> bool:
    pods = [p for p in _pods(core, component) if p.metadata.deletion_timestamp is None]
    return len(pods) == count and all(
        p.status.phase == "Running" and p.spec.node_name and p.spec.containers[0].image == image for p in pods
    )


def test_install_and_upgrade_on_the_real_control_plane(real_cluster):  # noqa: F811
    api = real_cluster.client()
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    core.create_namespace(
        {"metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    try:
        # PodSecurity is enforced here: a pod that is not restricted is refused (so the chart's pods passing means
        # something).
        with pytest.raises(client.ApiException) as refused:
            core.create_namespaced_pod(
                NAMESPACE, {"metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                dry_run="All",
            )  # fmt: skip
        assert refused.value.status == 403
        for ref in SECRETS.values():
            data = {ref.get("key", "rsa-private-key.pem"): "placeholder"}
            core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": ref["name"]}, "stringData": data})

        beat_pods_at_once = _watch_beat(core)
        with helm.Config(kubeconfig_content=real_cluster.kubeconfig_yaml(), namespace=NAMESPACE) as cfg:
            values = {
                **VALUES,
                "image": {"repository": "budcluster", "tag": "1.0.0", "pullPolicy": "IfNotPresent"},
            }
            cfg.install(CHARTS_DIR / CHART, "bc", values, namespace=NAMESPACE, timeout=180, wait="watcher")
            assert _status(cfg) == ("deployed", 1)
            job = batch.read_namespaced_job("bc-budcluster-migrate", NAMESPACE)
            assert job.status.succeeded == 1  # the hook ran to completion before the release was deployed
            for component, count in (("web", 2), ("worker", 2), ("poll-worker", 1), ("beat", 1)):
                wait_for(lambda c=component, n=count: _running_with(core, c, "budcluster:1.0.0", n),
                         timeout=60, what=f"{component} pods Running")  # fmt: skip
            before = {
                name: apps.read_namespaced_deployment(f"bc-budcluster-{name}", NAMESPACE).metadata.generation
                for name in ("web", "worker", "poll-worker", "beat")
            }

            values["image"]["tag"] = "1.1.0"
            cfg.upgrade(CHARTS_DIR / CHART, "bc", values, namespace=NAMESPACE, timeout=180, wait="watcher")
            assert _status(cfg) == ("deployed", 2)
            job = batch.read_namespaced_job("bc-budcluster-migrate", NAMESPACE)
            assert job.status.succeeded == 1
            assert job.spec.template.spec.containers[0].image == "budcluster:1.1.0"
            for component, count in (("web", 2), ("worker", 2), ("poll-worker", 1), ("beat", 1)):
                wait_for(lambda c=component, n=count: _running_with(core, c, "budcluster:1.1.0", n),
                         timeout=90, what=f"{component} rolled to 1.1.0")  # fmt: skip
            for name, generation in before.items():
                dep = apps.read_namespaced_deployment(f"bc-budcluster-{name}", NAMESPACE)
                assert dep.metadata.generation > generation, name
            cfg.uninstall("bc", timeout=120)
        assert max(beat_pods_at_once()) == 1
    finally:
        core.delete_namespace(NAMESPACE)


def _status(cfg) -> tuple[str, int]:
    """The release's (status, revision) as Helm's storage has it."""
    release = cfg.status("bc")
    info = release.get("info", release)
    return str(info.get("status", release.get("status"))).lower(), int(
        release.get("version", release.get("revision"))
    )


def _watch_beat(core):
    """Watch beat pods from now on; the returned function stops the watch and gives how many beat pods existed
    at each moment (any phase, terminating ones included)."""
    counts: list[int] = []
    alive: set[str] = set()
    w = watch.Watch()
    started = threading.Event()

    def run():
        stream = w.stream(
            core.list_namespaced_pod,
            NAMESPACE,
            label_selector="app.kubernetes.io/component=beat",
            timeout_seconds=600,
        )
        started.set()
        try:
            for event in stream:
                name = event["object"].metadata.name
                if event["type"] == "DELETED":
                    alive.discard(name)
                else:
                    alive.add(name)
                counts.append(len(alive))
        except Exception:  # noqa: S110 - the stream ends when stop() closes it
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)

    def stop() -> list[int]:
        w.stop()
        return counts

    return stop
