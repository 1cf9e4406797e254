"""The console as an operator uses it, in chromium, against the gpu-mixed devcluster and the real worker.

- Logging in goes through the login form (a wrong password is refused on the form, the right one opens the
  dashboard).
- The dashboard's figures are read off the rendered page and compared with the database rows: clusters by
  status, and per cluster and fleet-wide the accelerators by model, total and free, summed here from the Node
  rows (not from the dashboard's own queries).
- Deleting a deployment goes through its page's Delete link and the confirmation page; the run it starts
  finishes and the deployment's namespace is gone from the devcluster.
- Deploying from the plan preview's result opens the run page, whose `#run-status` moves to `running` and
  then `succeeded` by the page's own refresh: a marker set on the window before waiting is still there, so the
  page was never reloaded. The simulated pods take a few seconds to become ready, so the run cannot have
  finished before the page first rendered it: the page is seen to move, not merely to show the end.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from selenium.webdriver.support.ui import Select

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from clusters.services import gateway_for
from core.choices import RunStatus
from core.models import Run
from deployments.models import Deployment
from hardware.choices import AcceleratorType
from hardware.models import Node
from tests.worker import run_finished

from .conftest import (
    PASSWORD,
    RUN_PAGE,
    mark_page,
    page_not_reloaded,
    run_status,
    wait_for_run_status,
)

pytestmark = pytest.mark.django_db(transaction=True)

LLAMA_8B = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8, "device_type": "cuda"}


def test_logging_in_through_the_form(anonymous_console, admin_user):
    console = anonymous_console
    console.open("/admin/")
    console.wait(lambda _d: console.path == "/admin/login/", what="the redirect to the login form")

    console.log_in(admin_user.username, "not-the-password")
    assert "correct username and password" in console.find(".errornote").text
    assert console.path == "/admin/login/"

    console.log_in(admin_user.username, PASSWORD)
    console.wait(lambda _d: console.path == "/admin/", what="the dashboard")
    # textContent: the stylesheet shows the user tools in capitals.
    assert console.find("#user-tools strong").get_attribute("textContent") == admin_user.username
    assert console.find("#fleet-clusters").is_displayed()


def _expected_accelerators(nodes) -> dict[str, tuple[int, int]]:
    """{model: (total, free)} of the accelerator nodes given, CPU-only nodes left out."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for node in nodes:
        if node.accelerator_type == AcceleratorType.CPU:
            continue
        sums[node.accelerator_model][0] += node.accelerator_count
        sums[node.accelerator_model][1] += node.free_accelerators
    return {model: (total, free) for model, (total, free) in sums.items()}


def test_the_dashboard_shows_what_the_database_holds(console, cluster):
    # Beside the devcluster's inventory: a cluster in error holding one more node of a model the devcluster has
    # (so the fleet-wide figure is a sum over clusters), and one still registering with no nodes.
    nodes = list(Node.objects.filter(cluster=cluster).exclude(accelerator_type=AcceleratorType.CPU))
    assert nodes, "the devcluster's inventory has no accelerator node"
    shared = nodes[0]
    other = Cluster.objects.create(
        name="lab-b", status=ClusterStatus.ERROR, reason="unreachable: connection refused",
        server_url="https://lab-b.example",
    )  # fmt: skip
    Node.objects.create(
        cluster=other, name="gpu-9", ready=True, accelerator_type=shared.accelerator_type,
        accelerator_model=shared.accelerator_model, accelerator_count=4, free_accelerators=1,
    )  # fmt: skip
    Cluster.objects.create(name="lab-c", status=ClusterStatus.REGISTERING, server_url="https://lab-c.example")

    console.open("/admin/")
    section = console.find("#fleet-clusters")

    statuses = Counter(Cluster.objects.values_list("status", flat=True))
    shown = {item.text.rsplit(" ", 1)[0]: int(item.text.rsplit(" ", 1)[1]) for item in section.find_elements(
        "css selector", "ul.figures li"
    )}  # fmt: skip
    assert shown == {ClusterStatus(status).label: n for status, n in statuses.items()}

    for row_cluster in Cluster.objects.all():
        row = section.find_element("css selector", f'.fleet-cluster[data-cluster="{row_cluster.name}"]')
        rows = list(Node.objects.filter(cluster=row_cluster))
        if rows:
            ready = sum(1 for n in rows if n.ready)
            assert row.find_element("css selector", ".nodes").text == f"{ready} / {len(rows)}"
        gpus = {
            g.get_attribute("data-model"): (
                int(g.find_element("css selector", ".total").text),
                int(g.find_element("css selector", ".free").text),
            )
            for g in row.find_elements("css selector", ".gpu")
        }
        assert gpus == _expected_accelerators(rows), row_cluster.name

    fleet = {
        r.find_element("css selector", "td").text: (
            int(r.find_element("css selector", ".total").text),
            int(r.find_element("css selector", ".free").text),
        )
        for r in section.find_elements("css selector", ".fleet-model")
    }
    expected = _expected_accelerators(Node.objects.all())
    assert fleet == expected
    assert expected[shared.accelerator_model][0] > 4  # the devcluster's and lab-b's together


def _running_deployment(api, cluster, name: str) -> Deployment:
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": name, **LLAMA_8B}, format="json"
    )
    assert response.status_code == 202, response.json()
    run = run_finished(response.json()["run_id"], 60)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Deployment.objects.get(pk=response.json()["deployment_id"])


def _namespace_left(cluster, namespace: str) -> dict[str, list[str]]:
    with gateway_for(cluster) as gw:
        found = {"Namespace": [] if gw.get_or_none("v1", "Namespace", namespace) is None else [namespace]}
        found["Pod"] = [p["metadata"]["name"] for p in gw.list("v1", "Pod", namespace)]
    return {kind: names for kind, names in found.items() if names}


def test_deleting_a_deployment_confirms_then_clears_the_cluster(console, api, cluster):
    deployment = _running_deployment(api, cluster, "browser-del")
    assert _namespace_left(cluster, deployment.namespace)["Pod"]

    console.open(f"/admin/deployments/deployment/{deployment.pk}/change/")
    console.submit("a.deletelink")
    assert console.path == f"/admin/deployments/deployment/{deployment.pk}/delete/"
    removes = console.find(".deletion-removes").text
    assert f"namespace {deployment.namespace}" in removes
    assert Deployment.objects.get(pk=deployment.pk).status == "running"  # the page alone starts nothing

    console.submit('input[type=submit][value="Yes, start the deletion"]')
    run_pk = console.wait_for_path(RUN_PAGE).group("pk")
    run = Run.objects.get(pk=run_pk)
    assert (run.kind, run.subject_id) == ("deployment.delete", str(deployment.pk))
    assert run_finished(run_pk, 60).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run_pk).error

    assert _namespace_left(cluster, deployment.namespace) == {}
    assert Deployment.objects.get(pk=deployment.pk).status == "deleted"


def test_deploying_from_the_plan_opens_a_run_page_that_moves_by_itself(console, cluster, gpu_reset):
    # Pods take 5 s from Running to Ready: the deploy cannot be over before its run page first renders, and
    # the page (refreshing every 2 s) has more than one chance to show it running.
    gpu_reset.sim_config.pod_ready_delay = 5.0
    console.open("/admin/deployments/deployment/plan/")
    Select(console.find("#id_cluster")).select_by_value(str(cluster.pk))
    Select(console.find("#id_model")).select_by_value(LLAMA_8B["model"])
    Select(console.find("#id_device_type")).select_by_value(LLAMA_8B["device_type"])
    for field in ("name", "context_len", "concurrency"):
        console.find(f"#id_{field}").clear()
    console.find("#id_name").send_keys("from-plan")
    console.find("#id_context_len").send_keys(str(LLAMA_8B["context_len"]))
    console.find("#id_concurrency").send_keys(str(LLAMA_8B["concurrency"]))
    console.submit('input[type=submit][value="Plan"]')
    assert not Deployment.objects.exists()  # planning creates nothing

    console.submit("button#deploy-from-plan")
    run_pk = console.wait_for_path(RUN_PAGE).group("pk")
    run = Run.objects.get(pk=run_pk)
    assert run.kind == "deployment.deploy"
    mark_page(console)
    assert run_status(console) in {"pending", "running"}

    assert wait_for_run_status(console, {"running"}, timeout=30) == "running"
    assert wait_for_run_status(console, {"succeeded"}, timeout=60) == "succeeded", Run.objects.get(
        pk=run_pk
    ).error
    assert page_not_reloaded(console), "the run page was reloaded instead of refreshing its fragment"
    deployment = Deployment.objects.get(cluster=cluster, name="from-plan")
    assert deployment.status == "running"
