"""Deploying from the plan preview, and what the deployments list and page say about runs (issue "The operators'
console and the API contract", items 11 and 12).

After a plan that found a placement, the preview offers a Deploy button to who may deploy (the API's
``deployments.add_deployment``); it posts the planned fields again, and the deploy starts exactly as
``POST /deployments/deploy`` starts it (the stored configuration and the run's parameters are the API's for the
same request) and opens the run's page, where the run goes to the end on a real worker and the devcluster. A
refusal (name taken, fits nowhere, invalid name, no permission) shows why and creates nothing.

The deployments list shows each deployment's reason, node(s) and GPUs; a deployment's page links to its current
run and gives its last failure's cause; both cost the same number of queries however many rows or runs there are.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client
from django.test.html import Element, parse_html
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run, RunStep
from deployments.models import Deployment, Worker
from tests.console.html import attr as _attr
from tests.console.html import find as _find
from tests.console.html import one as _one
from tests.console.html import text as _text
from tests.deployments.conftest import (  # noqa: F401 - fixtures, registered by importing them
    _loopback,
    cluster,
    gpu,
    gpu_baseline,
    gpu_reset,
)
from tests.worker import run_finished

PLAN = "/admin/deployments/deployment/plan/"
DEPLOYMENTS = "/admin/deployments/deployment/"
DEPLOYER = ("deployments.view_deployment", "deployments.add_deployment", "core.view_run")
LLAMA_8B = {
    "model": "llama-3.1-8b-instruct", "device_type": "cuda", "replicas": 1, "context_len": 4096,
    "concurrency": 8, "dtype": "auto", "quantization": "",
}  # fmt: skip


# --- reading pages ---------------------------------------------------------------------------------------------


def _deploy_form(response) -> tuple[Element, dict[str, str]]:
    """The Deploy button's form on a plan page and the fields it would post (its button's name and value too)."""
    assert response.status_code == 200, response.content[:500]
    page = parse_html(response.content.decode())
    button = _one(page, tag="button", id="deploy-from-plan")
    form = next(f for f in _find(page, tag="form") if button in _find(f, tag="button"))
    fields = {_attr(i, "name"): _attr(i, "value") or "" for i in _find(form, tag="input") if _attr(i, "name")}
    fields[_attr(button, "name")] = _attr(button, "value")
    return form, fields


@pytest.fixture
def gpu_cluster(cluster):  # noqa: F811 - the imported fixture
    """The gpu-mixed devcluster as an available cluster with its inventory (tests/deployments/conftest.py)."""
    return cluster


def _plan(client, target: Cluster, name: str, **overrides):
    return client.post(PLAN, {"cluster": target.pk, "name": name, **LLAMA_8B, **overrides})


def _nothing_created(runs_before: int) -> None:
    assert not Deployment.objects.exists()
    assert Run.objects.filter(kind__startswith="deployment.").count() == runs_before


# --- deploy from the plan (a real worker and the devcluster) ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_deploy_from_the_plan_starts_the_apis_run_and_opens_its_page(gpu_cluster, api, make_user):
    user = make_user("deployer", *DEPLOYER)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    token = browser.get(PLAN).cookies["csrftoken"].value

    planned = _plan(browser, gpu_cluster, "from-plan", csrfmiddlewaretoken=token)
    form, fields = _deploy_form(planned)
    assert _attr(form, "method") == "post" and not Deployment.objects.exists()  # planning created nothing
    assert (
        fields["_deploy"] == "1"
        and fields["name"] == "from-plan"
        and fields["cluster"] == str(gpu_cluster.pk)
    )
    assert {k: fields[k] for k in LLAMA_8B} == {k: str(v) for k, v in LLAMA_8B.items()}

    response = browser.post(PLAN, fields)
    deployment = Deployment.objects.get(name="from-plan")
    run = Run.objects.get(kind="deployment.deploy", subject_id=str(deployment.pk))
    assert response.status_code == 302 and response["Location"] == f"/admin/core/run/{run.pk}/change/"
    assert run.created_by == user and deployment.created_by == user

    # The same request through the API stores the same configuration and launches the same run.
    twin = api.post(
        "/deployments/deploy",
        {"cluster": gpu_cluster.pk, "name": "from-api", **{k: v for k, v in LLAMA_8B.items() if v != ""}},
        format="json",
    )
    assert twin.status_code == 202, twin.json()
    twin_deployment = Deployment.objects.get(pk=twin.json()["deployment_id"])
    twin_run = Run.objects.get(pk=twin.json()["run_id"])
    assert deployment.config == twin_deployment.config
    assert (deployment.model_name, deployment.replicas, deployment.device_type) == (
        twin_deployment.model_name, twin_deployment.replicas, twin_deployment.device_type,
    )  # fmt: skip
    strip = {"deployment_id"}
    assert {k: v for k, v in run.params.items() if k not in strip} == {
        k: v for k, v in twin_run.params.items() if k not in strip
    }

    # The run's page follows it to the end; the deployment's page and the list then say where it runs.
    page = parse_html(browser.get(response["Location"]).content.decode())
    assert _attr(_one(page, id="run-live"), "data-refresh-url") == f"/admin/core/run/{run.pk}/live/"
    assert run_finished(run.pk, 90).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run.pk).error
    assert run_finished(twin_run.pk, 90).status == RunStatus.SUCCEEDED
    live = parse_html(browser.get(f"/admin/core/run/{run.pk}/live/").content.decode())
    assert _text(_one(live, id="run-status")) == "succeeded"

    deployment.refresh_from_db()
    assert deployment.status == "running"
    detail = browser.get(f"{DEPLOYMENTS}{deployment.pk}/change/").content.decode()
    assert f'href="/admin/core/run/{run.pk}/change/"' in detail
    rows = _list_rows(browser)
    nodes = sorted({w.node for w in Worker.objects.filter(deployment=deployment)})
    assert _cell(rows["from-plan"], "nodes") == ", ".join(nodes)
    candidate = deployment.placement["candidate"]
    assert (
        _cell(rows["from-plan"], "gpus") == f"{candidate['total_devices']}x {candidate['accelerator_model']}"
    )


@pytest.mark.django_db(transaction=True)
def test_a_refused_deploy_shows_why_and_creates_nothing(gpu_cluster, client, make_user):
    client.force_login(make_user("deployer", *DEPLOYER))
    runs = Run.objects.filter(kind__startswith="deployment.").count()

    # Fits nowhere (checked again at deploy time: the inventory may have changed since the plan).
    _form, fields = _deploy_form(_plan(client, gpu_cluster, "too-many"))
    refused = client.post(PLAN, {**fields, "replicas": 200})
    assert refused.status_code == 422
    assert "Not deployed:" in _text(_one(parse_html(refused.content.decode()), id="plan-error"))
    _nothing_created(runs)

    # A name the API refuses (the form's slug allows it): the API's words.
    _form, fields = _deploy_form(_plan(client, gpu_cluster, "ok"))
    refused = client.post(PLAN, {**fields, "name": "-leading-dash"})
    assert refused.status_code == 400
    assert "name:" in _text(_one(parse_html(refused.content.decode()), id="plan-error"))
    _nothing_created(runs)

    # The cluster is no longer available: the form no longer offers it.
    Cluster.objects.filter(pk=gpu_cluster.pk).update(status="not_available")
    refused = client.post(PLAN, fields)
    assert refused.status_code == 400 and b"Select a valid choice" in refused.content
    _nothing_created(runs)
    Cluster.objects.filter(pk=gpu_cluster.pk).update(status="available")

    # The name is taken on this cluster: 409, as the API answers.
    Deployment.objects.create(name="ok", cluster=gpu_cluster, namespace="bud-ok-0a1b2c3d", model_name="x")
    refused = client.post(PLAN, fields)
    assert refused.status_code == 409
    assert "already has a deployment named 'ok'" in _text(
        _one(parse_html(refused.content.decode()), id="plan-error")
    )
    assert Deployment.objects.count() == 1
    assert Run.objects.filter(kind__startswith="deployment.").count() == runs


@pytest.mark.django_db(transaction=True)
def test_deploying_needs_the_apis_deploy_permission(gpu_cluster, client, make_user):
    client.force_login(make_user("planner", "deployments.view_deployment", "core.view_run"))
    planned = _plan(client, gpu_cluster, "no-right")
    assert planned.status_code == 200 and b"kind: Deployment" in planned.content  # the plan itself is shown
    assert b'id="deploy-from-plan"' not in planned.content
    fields = {"cluster": gpu_cluster.pk, "name": "no-right", **LLAMA_8B, "_deploy": "1"}
    assert client.post(PLAN, fields).status_code == 403
    _nothing_created(0)


# --- the deployments list and page -----------------------------------------------------------------------------


def _list_rows(client) -> dict[str, Element]:
    page = parse_html(client.get(DEPLOYMENTS).content.decode())
    table = _one(page, id="result_list")
    rows = [r for r in _find(table, tag="tr") if _find(r, tag="th", **{"class": "field-name"})]
    return {_text(_one(r, tag="th", **{"class": "field-name"})): r for r in rows}


def _cell(row: Element, column: str) -> str:
    return _text(_one(row, tag="td", **{"class": f"field-{column}"}))


def _candidate(
    nodes: list[str], count: int, model: str = "NVIDIA-H100-80GB-HBM3", device: str = "cuda"
) -> dict:
    return {
        "candidate": {
            "device_type": device, "accelerator_model": model, "nodes": nodes, "total_devices": count,
            "summary": f"{count}x {model}",
        },
        "result": {"refusals": [f"node-{n}: too small" for n in range(50)]},
    }  # fmt: skip


def _fleet(suffix: str = "") -> dict:
    row = Cluster.objects.create(name=f"prod{suffix}", status="available", server_url=f"https://k{suffix}")

    def deployment(name, status, placement, reason=""):
        return Deployment.objects.create(
            name=name, cluster=row, namespace=f"bud-{name}-0a1b2c3d", model_name="llama", status=status,
            reason=reason, placement=placement,
        )  # fmt: skip

    running = deployment("llama", "running", _candidate(["gpu-1", "gpu-2"], 4))
    Worker.objects.create(deployment=running, name="llama-a", node="gpu-2", device="2x nvidia.com/gpu H100")
    Worker.objects.create(deployment=running, name="llama-b", node="gpu-1", device="2x nvidia.com/gpu H100")
    pending = deployment("qwen", "deploying", _candidate(["gpu-3"], 1, "AMD-Instinct-MI300X", "rocm"))
    failed = deployment(
        "phi", "failed", _candidate(["cpu-1"], 0, "", "cpu"), "image pull failed: " + "x" * 200
    )
    deployment("old", "deleted", _candidate(["gpu-9"], 8))
    return {"cluster": row, "running": running, "pending": pending, "failed": failed}


def _run_of(deployment: Deployment, status: str, *, ago: int, **fields) -> Run:
    return Run.objects.create(
        kind="deployment.deploy", title=f"Deploy {deployment.name}", status=status,
        subject_type=ContentType.objects.get_for_model(Deployment), subject_id=str(deployment.pk),
        created_at=timezone.now() - timedelta(minutes=ago), **fields,
    )  # fmt: skip


@pytest.mark.django_db
def test_the_list_shows_reason_node_and_gpus(client, make_user):
    _fleet()
    client.force_login(make_user("viewer", "deployments.view_deployment"))
    rows = _list_rows(client)
    assert _cell(rows["llama"], "nodes") == "gpu-1, gpu-2"  # where its pods run
    assert _cell(rows["llama"], "gpus") == "4x NVIDIA-H100-80GB-HBM3"
    assert _cell(rows["qwen"], "nodes") == "gpu-3 (planned)"  # no pod yet: where placement put it
    assert _cell(rows["qwen"], "gpus") == "1x AMD-Instinct-MI300X"
    assert _cell(rows["phi"], "gpus") == "CPU"
    reason = _one(rows["phi"], tag="td", **{"class": "field-short_reason"})
    assert _text(reason).startswith("image pull failed: xxx") and len(_text(reason)) <= 80
    assert _attr(_one(reason, tag="span"), "title") == "image pull failed: " + "x" * 200  # the whole reason
    assert (_cell(rows["old"], "nodes"), _cell(rows["old"], "gpus")) == ("-", "-")  # deleted: holds nothing


@pytest.mark.django_db
def test_a_deployment_links_to_its_current_run_and_its_last_failure(client, make_user):
    fleet = _fleet()
    client.force_login(make_user("viewer", "deployments.view_deployment", "core.view_run"))
    deployment = fleet["running"]
    url = f"{DEPLOYMENTS}{deployment.pk}/change/"

    def field(name: str) -> Element:
        page = parse_html(client.get(url).content.decode())
        return _one(
            _one(page, tag="div", **{"class": f"form-row field-{name}"}), tag="div", **{"class": "readonly"}
        )

    assert _text(field("current_run")) == "- (none recorded)" and _text(field("last_failure")) == "none"

    failed = _run_of(
        deployment, RunStatus.FAILED, ago=30, finished_at=timezone.now() - timedelta(minutes=29),
        error="wait_ready: timed out after 600 s waiting for 1 ready replica: 0 of 1 ready (ImagePullBackOff)",
    )  # fmt: skip
    RunStep.objects.create(
        run=failed, order=0, name="wait_ready", title="Wait for the runtime", status="failed"
    )
    done = _run_of(deployment, RunStatus.SUCCEEDED, ago=20)
    assert _attr(_one(field("current_run"), tag="a"), "href") == f"/admin/core/run/{done.pk}/change/"
    assert _text(field("current_run")).startswith("last:")
    failure = field("last_failure")
    assert _text(_one(failure, tag="span", **{"class": "failure-cause"})).endswith("(ImagePullBackOff)")
    assert "at step Wait for the runtime" in _text(failure)
    assert _attr(_one(failure, tag="a"), "href") == f"/admin/core/run/{failed.pk}/change/"

    # An update in progress is the current run, though an older one: it is what is happening now.
    active = _run_of(deployment, RunStatus.RUNNING, ago=25, progress=40.0)
    RunStep.objects.create(run=active, order=0, name="apply", title="Roll out", status="running")
    current = field("current_run")
    assert _attr(_one(current, tag="a"), "href") == f"/admin/core/run/{active.pk}/change/"
    assert "40%" in _text(current) and not _text(current).startswith("last:")


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["list", "change"])
def test_the_query_count_does_not_grow(client, make_user, django_assert_max_num_queries, page):
    client.force_login(make_user("viewer", "deployments.view_deployment", "core.view_run"))
    fleet = _fleet()
    url = DEPLOYMENTS if page == "list" else f"{DEPLOYMENTS}{fleet['running'].pk}/change/"
    _run_of(fleet["running"], RunStatus.FAILED, ago=5, error="boom")
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    for n in range(10):
        _fleet(f"-{n}")
        _run_of(fleet["running"], RunStatus.FAILED, ago=10 + n, error="boom")
        _run_of(fleet["running"], RunStatus.SUCCEEDED, ago=10 + n)
    with django_assert_max_num_queries(len(small)):
        assert client.get(url).status_code == 200
