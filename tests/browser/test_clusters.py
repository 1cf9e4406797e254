"""A cluster's life in chromium, against a small devcluster of its own and the real worker.

- Registering goes through the "add cluster" form (a kubeconfig file uploaded as an operator would); the
  browser lands on the registration run's page, whose `#run-status` reaches `succeeded` by the page's own
  refresh (a marker set on the window before waiting survives: no reload).
- Deleting that cluster goes through its Delete link and the confirmation page, which names what will be
  removed; the run finishes and the devcluster holds the namespaces it had before registration, and no
  BudCluster ClusterRole.

One test for both: the deletion needs a registered cluster, and registering (its setup playbook) is the slowest
step of the browser tests; doing it once keeps them quick.

The module has its own devcluster (not the gpu-mixed one of the other module): deleting a cluster removes the
collectors the GPU tests' baseline relies on.
"""

from __future__ import annotations

import pytest

from clusters.models import Cluster
from core.choices import RunStatus
from core.gateway import ClusterGateway
from core.models import Run
from devcluster.testing import devcluster_fixture, write_kubeconfig
from tests.conftest import settle_runs
from tests.worker import run_finished, wait_for

from .conftest import RUN_PAGE, mark_page, page_not_reloaded, run_status, wait_for_run_status

dc = devcluster_fixture(name="dc", nodes="cpu-small", scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


def _namespaces(dc) -> set[str]:
    with ClusterGateway(dc.kubeconfig(), allow_loopback=True) as gw:
        return {n["metadata"]["name"] for n in gw.list("v1", "Namespace")}


def _budcluster_role(dc):
    with ClusterGateway(dc.kubeconfig(), allow_loopback=True) as gw:
        return gw.get_or_none("rbac.authorization.k8s.io/v1", "ClusterRole", "budcluster")


@pytest.fixture(scope="module")
def dc_namespaces(dc) -> frozenset[str]:
    """The namespaces of the devcluster as it started, before anything was registered on it."""
    return frozenset(_namespaces(dc))


@pytest.fixture
def clean_dc(dc, dc_namespaces, worker):
    """The devcluster with nothing of BudCluster's on it. Afterwards the runs settle and what a registration put
    there (namespaces, the ClusterRole and its binding) is deleted straight away: quicker than a deletion run,
    and it does not depend on the deletion under test working."""
    assert _namespaces(dc) == dc_namespaces and _budcluster_role(dc) is None
    yield dc
    settle_runs()
    rbac = "rbac.authorization.k8s.io/v1"
    with ClusterGateway(dc.kubeconfig(), allow_loopback=True) as gw:
        left = {n["metadata"]["name"] for n in gw.list("v1", "Namespace")} - dc_namespaces
        for namespace in left:
            gw.delete("v1", "Namespace", namespace)
        for kind in ("ClusterRoleBinding", "ClusterRole"):
            if gw.get_or_none(rbac, kind, "budcluster") is not None:
                gw.delete(rbac, kind, "budcluster")
    wait_for(
        lambda: _namespaces(dc) == dc_namespaces and _budcluster_role(dc) is None,
        timeout=30,
        interval=0.2,
        what=f"namespaces {sorted(left)} and the budcluster ClusterRole gone",
    )


def test_a_cluster_registered_through_the_form_and_deleted_leaves_nothing(
    console, clean_dc, dc_namespaces, tmp_path
):
    # Register: the form, a kubeconfig file uploaded, the run page.
    kubeconfig = write_kubeconfig(clean_dc, tmp_path / "kubeconfig")
    console.open("/admin/clusters/cluster/add/")
    console.find("#id_name").send_keys("from-form")
    console.find("#id_kubeconfig").send_keys(str(kubeconfig))
    console.submit("input[type=submit][name=_save]")

    run_pk = console.wait_for_path(RUN_PAGE).group("pk")
    assert Run.objects.get(pk=run_pk).kind == "cluster.register"
    mark_page(console)
    first = run_status(console)
    assert first in {"pending", "running"}, first  # the setup playbook alone takes seconds

    status = wait_for_run_status(console, {"succeeded"}, timeout=60)
    assert status == "succeeded", Run.objects.get(pk=run_pk).error
    assert page_not_reloaded(console), "the run page was reloaded instead of refreshing its fragment"
    cluster = Cluster.objects.get(name="from-form")
    assert cluster.status == "available"
    added = _namespaces(clean_dc) - dc_namespaces
    assert added and _budcluster_role(clean_dc) is not None  # what deleting must take away again

    # Delete: the cluster's Delete link, the confirmation page, the deletion run.
    console.open(f"/admin/clusters/cluster/{cluster.pk}/change/")
    console.submit("a.deletelink")
    assert console.path == f"/admin/clusters/cluster/{cluster.pk}/delete/"
    removes = console.find(".deletion-removes").text
    unnamed = sorted(namespace for namespace in added if namespace not in removes)  # checked at the end
    assert Cluster.objects.get(pk=cluster.pk).status == "available"  # the page alone starts nothing

    console.submit('input[type=submit][value="Yes, start the deletion"]')
    run_pk = console.wait_for_path(RUN_PAGE).group("pk")
    assert Run.objects.get(pk=run_pk).kind == "cluster.delete"
    assert run_finished(run_pk, 60).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run_pk).error

    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert _namespaces(clean_dc) == dc_namespaces
    assert _budcluster_role(clean_dc) is None
    # What the run removed, the confirmation page said it would remove.
    assert not unnamed, f"namespaces deleted without the confirmation page naming them: {unnamed}"
