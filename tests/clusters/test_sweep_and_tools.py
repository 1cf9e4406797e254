"""Health sweep isolation, management commands and the admin console for clusters."""

from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from devcluster.testing import devcluster_fixture

dc3 = devcluster_fixture(name="dc3", nodes="cpu-small", clusters=6, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _store(dc, name: str, vc: str, status=ClusterStatus.AVAILABLE) -> Cluster:
    checked = services.validate(dc.kubeconfig_yaml(vc).encode())
    return Cluster.objects.create(
        name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status=status
    )


def test_black_holed_cluster_is_not_available_and_the_others_stay_available(dc3):
    # What the dead cluster costs the sweep in time is measured by benchmarks/health_sweep.py ("sweep with 1
    # black-holed cluster"), not asserted here.
    clusters = [_store(dc3, f"sweep-{i}", vc) for i, vc in enumerate(dc3.names)]
    dc3.set_fault(dc3.names[0], "unreachable")
    try:
        report = services.sweep(timeout=2.0, workers=8, cluster_ids=[c.pk for c in clusters])
    finally:
        dc3.set_fault(dc3.names[0], "clear")
    assert report.checked == 6
    assert report.transitions == [("sweep-0", "available", "not_available")]
    # Its own timeout ended its probe, not the sweep's overall deadline.
    assert "deadline" not in Cluster.objects.get(name="sweep-0").reason
    statuses = dict(Cluster.objects.values_list("name", "status"))
    assert statuses["sweep-0"] == "not_available"
    assert all(statuses[f"sweep-{i}"] == "available" for i in range(1, 6))


def test_not_available_for_a_day_becomes_error_and_is_retried_daily(dc3):
    from datetime import timedelta

    from django.utils import timezone

    cluster = _store(dc3, "old-dead", dc3.names[1], status=ClusterStatus.NOT_AVAILABLE)
    Cluster.objects.filter(pk=cluster.pk).update(not_available_since=timezone.now() - timedelta(hours=25))
    dc3.set_fault(dc3.names[1], "unreachable")
    try:
        services.sweep(timeout=1.0, cluster_ids=[cluster.pk])
        cluster.refresh_from_db()
        assert cluster.status == ClusterStatus.ERROR
        assert "more than 24 h" in cluster.reason
        # Retried at most once a day: an immediate second sweep skips it.
        assert services.sweep(timeout=1.0, cluster_ids=[cluster.pk]).checked == 0
    finally:
        dc3.set_fault(dc3.names[1], "clear")
    Cluster.objects.filter(pk=cluster.pk).update(last_retry_at=timezone.now() - timedelta(hours=25))
    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    assert report.transitions == [("old-dead", "error", "available")]


def test_sweep_query_count_does_not_grow_with_clusters(dc3, django_assert_max_num_queries):
    ids = [_store(dc3, f"q-{i}", vc).pk for i, vc in enumerate(dc3.names)]
    with django_assert_max_num_queries(8):
        services.sweep(timeout=5.0, cluster_ids=ids)


def test_check_kubeconfig_and_list_commands(dc3, tmp_path):
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(dc3.kubeconfig_yaml(dc3.names[2]))
    out = io.StringIO()
    call_command("check_kubeconfig", str(path), stdout=out)
    assert out.getvalue().strip() == "OK"
    config = yaml.safe_load(path.read_text())
    config["users"][0]["user"] = {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CommandError, match="exec"):
        call_command("check_kubeconfig", str(path))
    _store(dc3, "listed", dc3.names[3])
    out = io.StringIO()
    call_command("list_clusters", stdout=out)
    assert "listed" in out.getvalue() and "available" in out.getvalue()
    out = io.StringIO()
    call_command("check_clusters", stdout=out)
    assert "checked 1 cluster(s)" in out.getvalue()


def test_register_command_follows_the_run(dc3, tmp_path, worker):
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(dc3.kubeconfig_yaml(dc3.names[4]))
    out = io.StringIO()
    call_command("register_cluster", "cmd-registered", str(path), "--timeout", "60", stdout=out)
    text = out.getvalue()
    assert "Verify connection and permissions: started" in text
    assert "cluster cmd-registered is available" in text


def test_admin_masks_credentials_and_lists_status(admin_client, dc3):
    cluster = _store(dc3, "admin-view", dc3.names[5])
    listing = admin_client.get("/admin/clusters/cluster/")
    assert listing.status_code == 200
    assert b"admin-view" in listing.content and b"Available" in listing.content
    page = admin_client.get(f"/admin/clusters/cluster/{cluster.pk}/change/")
    assert page.status_code == 200
    assert b"encrypted (key id" in page.content
    assert dc3.token(dc3.names[5]).encode() not in page.content


def test_sweep_does_not_revive_a_failed_registration(dc3):
    cluster = _store(dc3, "failed-reg", dc3.names[0], status=ClusterStatus.ERROR)
    Cluster.objects.filter(pk=cluster.pk).update(reason="Cluster setup failed: missing permissions")
    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    assert report.checked == 0
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ERROR  # a new registration run is what brings it back


def test_refused_updates_and_deletions_carry_codes_and_change_nothing(api, dc3):
    first = _store(dc3, "keep-a", dc3.names[0])
    _store(dc3, "keep-b", dc3.names[1])
    renamed = api.patch(f"/clusters/{first.pk}", {"name": "keep-b", "labels": {"x": "y"}}, format="json")
    assert renamed.status_code == 409
    assert renamed.json() == {"detail": "a cluster named 'keep-b' already exists", "code": "name_taken"}
    first.refresh_from_db()
    assert (first.name, first.labels) == ("keep-a", {})

    # A kubeconfig of a server another cluster holds is refused, and the label change with it is rolled back.
    other = dc3.kubeconfig_yaml(dc3.names[1])
    replaced = api.patch(f"/clusters/{first.pk}", {"labels": {"x": "y"}, "kubeconfig": other}, format="json")
    assert replaced.status_code == 409 and replaced.json()["code"] == "server_registered"
    first.refresh_from_db()
    assert first.labels == {} and first.status == ClusterStatus.AVAILABLE

    # Deleting, with its deletion run in progress (a cluster left deleting without one may be deleted again:
    # tests/lifecycle/test_cancel_pending.py).
    from core.models import Run

    Cluster.objects.filter(pk=first.pk).update(status=ClusterStatus.DELETING)
    Run.objects.create(kind="cluster.delete", subject_id=str(first.pk), status="running")
    again = api.delete(f"/clusters/{first.pk}")
    assert again.status_code == 409 and again.json()["code"] == "already_deleting"
    with pytest.raises(services.RegistrationRefused) as refused:
        services.rerun_registration(Cluster.objects.get(pk=first.pk))
    assert refused.value.code == "cluster_busy"
    assert Cluster.objects.get(pk=first.pk).status == ClusterStatus.DELETING


def test_refusal_codes_are_in_the_openapi_schema(api):
    schema = yaml.safe_load(api.get("/schema").content)
    register = schema["paths"]["/clusters/register"]["post"]["responses"]
    # The one error shape (the Error component), its code narrowed to what this answer may carry.
    error, codes = register["409"]["content"]["application/json"]["schema"]["allOf"][:2]
    assert error["$ref"].endswith("/Error")
    enum = codes["properties"]["code"]["enum"]
    assert {"name_taken", "server_registered", "already_deleting", "kubeconfig_invalid"} <= set(enum)


def test_admin_cluster_page_shows_nodes_and_collection_action(admin_client, dc3):
    cluster = _store(dc3, "admin-ext", dc3.names[2])
    page = admin_client.get(f"/admin/clusters/cluster/{cluster.pk}/change/").content.decode()
    assert 'id="nodes-group"' in page  # the hardware app's inline on the cluster page
    listing = admin_client.get("/admin/clusters/cluster/").content.decode()
    assert "collect_node_info" in listing and "rerun_registration" in listing
    Cluster.objects.filter(pk=cluster.pk).update(status=ClusterStatus.DELETING)
    response = admin_client.post(
        "/admin/clusters/cluster/",
        {"action": "rerun_registration", "_selected_action": [cluster.pk]},
        follow=True,
    )
    text = response.content.decode()
    assert "registration cannot re-run now" in text and "Registration re-run for 0 cluster(s)." in text


def test_verify_step_ends_within_its_overall_deadline(dc3, settings):
    """Each call answers within its own timeout, but ~100 slow permission checks together would hold the worker
    for minutes: the verify step as a whole stops at CLUSTER_VERIFY_DEADLINE with a clear reason."""
    from types import SimpleNamespace

    from clusters.workflows import verify
    from core.workflow import StepFailed

    cluster = _store(dc3, "slow-verify", dc3.names[3], status=ClusterStatus.REGISTERING)
    settings.CLUSTER_VERIFY_DEADLINE = 1.0
    dc3.set_fault(dc3.names[3], "slow", delay=0.3)  # every request answers, 0.3 s late
    try:
        with pytest.raises(StepFailed, match="the 1s allowed for this check"):
            verify(SimpleNamespace(params={"cluster_id": cluster.pk}))
    finally:
        dc3.set_fault(dc3.names[3], "clear")
    settings.CLUSTER_VERIFY_DEADLINE = 60.0
    assert verify(SimpleNamespace(params={"cluster_id": cluster.pk}))["version"]
