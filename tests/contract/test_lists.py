"""Lists filter, order and page strictly: a value or field they cannot use is a 400 naming it, never the whole list
as if nothing was asked; clusters are named in filters as in deploy and plan; growing sub-lists are paginated."""

from __future__ import annotations

import pytest

from clusters.choices import ClusterStatus
from core.choices import RunStatus
from core.models import Run
from deployments.models import Benchmark, Deployment
from tests.contract.conftest import gpu_node, running_deployment, unreachable_cluster

pytestmark = pytest.mark.django_db


def _names(answer) -> list[str]:
    return sorted(row["name"] for row in answer.json()["results"])


def _refused(response, field: str) -> str:
    assert response.status_code == 400, response.content
    answer = response.json()
    assert field in answer["errors"], answer
    return answer["errors"][field][0]


def test_boolean_filters_take_true_or_false_and_refuse_anything_else(api, loopback):
    cluster = unreachable_cluster("c1")
    gpu_node(cluster, "up")
    gpu_node(cluster, "down", ready=False)
    base = f"/clusters/{cluster.pk}/nodes"
    assert "not a boolean" in _refused(api.get(f"{base}?ready=maybe"), "ready")
    for word, expected in (("true", ["up"]), ("FALSE", ["down"]), ("1", ["up"]), ("no", ["down"])):
        assert _names(api.get(f"{base}?ready={word}")) == expected, word
    assert _names(api.get(f"{base}?ready=")) == ["down", "up"]  # empty: no filter
    # Automatic filter sets (benchmarks' partial / passed) are as strict.
    assert "not a boolean" in _refused(api.get("/benchmarks?partial=perhaps"), "partial")


def test_an_ordering_by_an_unknown_field_is_refused_with_the_choices(api, loopback):
    unreachable_cluster("b")
    unreachable_cluster("a")
    message = _refused(api.get("/clusters?ordering=-nmae"), "ordering")
    assert "-nmae" in message and "name" in message and "created_at" in message
    assert _names(api.get("/clusters?ordering=-name")) == ["a", "b"]
    assert [c["name"] for c in api.get("/clusters?ordering=-name").json()["results"]] == ["b", "a"]
    assert [c["name"] for c in api.get("/clusters?ordering=name,-created_at").json()["results"]] == ["a", "b"]


def test_parameters_a_list_does_not_have_are_unknown(api):
    # Benchmarks have no search: the schema does not offer it and the list refuses it.
    response = api.get("/benchmarks?search=fast")
    assert response.status_code == 400 and response.json()["code"] == "unknown_parameter"
    schema = api.get("/schema?format=json").json()
    names = {p["name"] for p in schema["paths"]["/benchmarks"]["get"]["parameters"]}
    assert "search" not in names and {"deployment", "partial", "passed", "ordering", "limit"} <= names
    assert api.get("/clusters?search=c").status_code == 200


def test_runs_filter_by_subject_type_as_the_answer_spells_it(api, loopback):
    cluster = unreachable_cluster("c1")
    deployment = running_deployment(cluster)
    for subject, kind in ((cluster, "cluster.register"), (deployment, "deployment.deploy")):
        Run.objects.create(kind=kind, subject=subject, status=RunStatus.SUCCEEDED)
    listed = api.get("/runs?subject_type=deployments.deployment").json()["results"]
    assert [(r["kind"], r["subject_type"]) for r in listed] == [
        ("deployment.deploy", "deployments.deployment")
    ]
    both = api.get(f"/runs?subject_type=clusters.cluster&subject_id={cluster.pk}").json()["results"]
    assert [r["kind"] for r in both] == ["cluster.register"]
    message = _refused(api.get("/runs?subject_type=clusters"), "subject_type")
    assert "clusters.cluster" in message and "deployments.deployment" in message


def test_deployments_filter_by_cluster_id_or_name(api, loopback):
    one, two = unreachable_cluster("one"), unreachable_cluster("two")
    running_deployment(one, "a")
    running_deployment(two, "b")
    assert _names(api.get("/deployments?cluster=one")) == ["a"]
    assert _names(api.get(f"/deployments?cluster={two.pk}")) == ["b"]
    assert "no cluster 'nope'" in _refused(api.get("/deployments?cluster=nope"), "cluster")
    schema = api.get("/schema?format=json").json()
    [cluster_param] = [
        p for p in schema["paths"]["/deployments"]["get"]["parameters"] if p["name"] == "cluster"
    ]
    assert cluster_param["schema"]["type"] == "string"


def test_a_query_parameter_with_a_bad_value_is_a_400(api, loopback):
    cluster = unreachable_cluster("c1", status=ClusterStatus.ERROR)
    assert "valid boolean" in _refused(api.delete(f"/clusters/{cluster.pk}?force=maybe"), "force")
    deployment = running_deployment(cluster)
    worker = deployment.workers.create(name="w0")
    logs = f"/deployments/{deployment.pk}/workers/{worker.pk}/logs"
    assert "5000" in _refused(api.get(f"{logs}?tail=999999"), "tail")
    assert _refused(api.get(f"{logs}?tail=ten"), "tail")
    assert not Run.objects.exists()


def test_workers_and_events_are_pages_without_the_parent_list_filters(api, loopback):
    cluster = unreachable_cluster("c1")
    deployment = running_deployment(cluster)
    for i in range(3):
        deployment.workers.create(name=f"w{i}")
        cluster.events.create(kind="status", new_status="available", message=f"event {i}")
    page = api.get(f"/deployments/{deployment.pk}/workers?limit=2").json()
    assert page["count"] == 3 and [w["name"] for w in page["results"]] == ["w0", "w1"] and page["next"]
    assert [w["name"] for w in api.get(page["next"]).json()["results"]] == ["w2"]
    events = api.get(f"/clusters/{cluster.pk}/events?limit=2&offset=0").json()
    assert events["count"] == 3 and [e["message"] for e in events["results"]] == ["event 2", "event 1"]
    # The parent list's filters are not parameters of these pages.
    assert api.get(f"/deployments/{deployment.pk}/workers?status=running").status_code == 400
    assert api.get(f"/clusters/{cluster.pk}/events?status=available").status_code == 400


def test_benchmarks_filter_by_deployment_and_the_partial_flag(api, loopback):
    deployment = running_deployment(unreachable_cluster("c1"))
    Benchmark.objects.create(deployment=deployment, partial=True)
    Benchmark.objects.create(deployment=deployment, partial=False)
    listed = api.get(f"/benchmarks?deployment={deployment.pk}&partial=true").json()
    assert [b["partial"] for b in listed["results"]] == [True]
    assert Deployment.objects.count() == 1
