"""The admin's Delete button on a deployment runs the deletion workflow (issue "The operators' console and the API
contract", item 1): a confirmation page says what leaves the cluster, confirming starts the same run as
``DELETE /deployments/{id}`` and opens its page, and the namespace, pods and releases are gone from the cluster
afterwards; the row stays, marked deleted. A real worker and the devcluster gpu-mixed preset over HTTPS."""

from __future__ import annotations

import pytest

from clusters.models import Release
from clusters.services import gateway_for
from core.choices import RunStatus
from core.models import Run
from deployments.models import Deployment, Worker

from .conftest import finished

pytestmark = pytest.mark.django_db(transaction=True)

LLAMA_8B = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8, "device_type": "cuda"}


def _running_deployment(api, cluster, name: str) -> Deployment:
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": name, **LLAMA_8B}, format="json"
    )
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Deployment.objects.get(pk=response.json()["deployment_id"])


def _left_in_namespace(cluster, namespace: str) -> dict[str, list[str]]:
    with gateway_for(cluster) as gw:
        found = {"Namespace": [] if gw.get_or_none("v1", "Namespace", namespace) is None else [namespace]}
        for kind, api_version in (("Pod", "v1"), ("Service", "v1"), ("Deployment", "apps/v1")):
            found[kind] = [o["metadata"]["name"] for o in gw.list(api_version, kind, namespace)]
    return {kind: names for kind, names in found.items() if names}


def test_the_delete_button_confirms_then_runs_the_deletion_workflow(api, cluster, client, admin_user):
    deployment = _running_deployment(api, cluster, "console-del")
    namespace = deployment.namespace
    pods = list(Worker.objects.filter(deployment=deployment).values_list("name", "node", "device"))
    releases = list(
        Release.objects.filter(cluster=cluster, namespace=namespace).values_list("name", flat=True)
    )
    assert pods and releases and _left_in_namespace(cluster, namespace)["Pod"]
    client.force_login(admin_user)
    url = f"/admin/deployments/deployment/{deployment.pk}/delete/"

    # The confirmation page names what leaves the cluster: namespace, releases, pods and the GPUs they hold.
    page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert f"namespace {namespace}" in text
    for release in releases:
        assert f"release {release} " in text
    for name, node, device in pods:
        assert f"pod {name} on node {node}" in text and device and device in text
    assert "Uninstall releases and delete the namespace" in text  # the run's steps
    assert Deployment.objects.get(pk=deployment.pk).status == "running"  # looking starts nothing
    assert not Run.objects.filter(kind="deployment.delete").exists()

    # Confirming starts the API's deletion run and opens its page.
    response = client.post(url, {"post": "yes"})
    run = Run.objects.get(kind="deployment.delete", subject_id=str(deployment.pk))
    assert response.status_code == 302
    assert response["Location"] == f"/admin/core/run/{run.pk}/change/"
    assert client.get(response["Location"]).status_code == 200
    assert finished(run.pk).status == RunStatus.SUCCEEDED

    # Removed from the cluster, not only from the database; the row stays as history.
    assert _left_in_namespace(cluster, namespace) == {}
    assert set(
        Release.objects.filter(cluster=cluster, namespace=namespace).values_list("status", flat=True)
    ) == {"uninstalled"}
    deployment.refresh_from_db()
    assert deployment.status == "deleted"

    # Deleting again is refused as the API refuses it, on the page, and starts nothing.
    again = client.post(url, {"post": "yes"})
    assert again.status_code == 409
    assert "already deleted" in again.content.decode()
    assert Run.objects.filter(kind="deployment.delete").count() == 1
