"""Store and patch semantics without HTTP: the contract the simulation codes against."""

from __future__ import annotations

import pytest

from devcluster import patch
from devcluster.store import ApiError, VirtualCluster


@pytest.fixture
def vc() -> VirtualCluster:
    return VirtualCluster("unit", "token")


def _pod(name: str, ns: str = "default", **labels: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


def test_create_fills_metadata_and_rejects_duplicates(vc: VirtualCluster) -> None:
    pod = vc.create("pods", _pod("a"))
    meta = pod["metadata"]
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"] and meta["generation"] == 1
    with pytest.raises(ApiError) as exc:
        vc.create("pods", _pod("a"))
    assert exc.value.code == 409 and exc.value.reason == "AlreadyExists"
    generated = vc.create("configmaps", {"metadata": {"generateName": "cm-", "namespace": "default"}})
    assert generated["metadata"]["name"].startswith("cm-") and len(generated["metadata"]["name"]) == 8


def test_reads_are_copies(vc: VirtualCluster) -> None:
    vc.create("configmaps", {"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}})
    got = vc.get("configmaps", "default", "c")
    got["data"]["a"] = "mutated"
    assert vc.get("configmaps", "default", "c")["data"] == {"a": "1"}


def test_replace_conflict_noop_and_generation(vc: VirtualCluster) -> None:
    d = vc.create(
        "deployments.apps", {"metadata": {"name": "d", "namespace": "default"}, "spec": {"replicas": 1}}
    )
    same = vc.replace("deployments.apps", d)
    assert same["metadata"]["resourceVersion"] == d["metadata"]["resourceVersion"]
    d2 = dict(d, spec={"replicas": 2})
    updated = vc.replace("deployments.apps", d2)
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as exc:
        vc.replace("deployments.apps", d2)  # stale resourceVersion
    assert exc.value.code == 409 and exc.value.reason == "Conflict"
    status = vc.update_status(
        "deployments.apps",
        {
            "metadata": {"name": "d", "namespace": "default"},
            "status": {"replicas": 2},
            "spec": {"replicas": 7},
        },
    )
    assert status["status"] == {"replicas": 2} and status["spec"] == {"replicas": 2}
    assert status["metadata"]["generation"] == 2


def test_subscribers_see_committed_changes_in_order(vc: VirtualCluster) -> None:
    seen: list[tuple[str, str, str]] = []
    vc.subscribe(lambda t, key, obj: seen.append((t, key, obj["metadata"]["name"])))
    vc.create("pods", _pod("p"))
    vc.delete("pods", "default", "p")
    assert seen == [("ADDED", "pods", "p"), ("DELETED", "pods", "p")]


def test_selectors(vc: VirtualCluster) -> None:
    vc.create("pods", _pod("a", app="web", tier="front"))
    vc.create("pods", _pod("b", app="web"))
    vc.create("pods", _pod("c", app="db"))
    names = lambda items: [i["metadata"]["name"] for i in items]  # noqa: E731
    assert names(vc.list("pods", label_selector="app=web,tier")) == ["a"]
    assert names(vc.list("pods", label_selector="app notin (web)")) == ["c"]
    assert names(vc.list("pods", label_selector="app!=db,!tier")) == ["b"]
    assert names(vc.list("pods", field_selector="metadata.name=b,metadata.namespace=default")) == ["b"]
    with pytest.raises(ApiError):
        vc.list("pods", label_selector="app in (x")


def test_finalizers_delay_deletion(vc: VirtualCluster) -> None:
    vc.create("configmaps", {"metadata": {"name": "f", "namespace": "default", "finalizers": ["x/y"]}})
    held = vc.delete("configmaps", "default", "f")
    assert held["metadata"]["deletionTimestamp"]
    assert vc.get("configmaps", "default", "f") is not None
    obj = vc.get("configmaps", "default", "f")
    obj["metadata"]["finalizers"] = []
    vc.replace("configmaps", obj)
    assert vc.get("configmaps", "default", "f") is None


def test_record_event_aggregates(vc: VirtualCluster) -> None:
    pod = vc.create("pods", _pod("p"))
    vc.record_event(pod, "FailedScheduling", "0/3 nodes are available", "Warning")
    vc.record_event(pod, "FailedScheduling", "0/3 nodes are available", "Warning")
    events = vc.list("events", "default", field_selector="involvedObject.name=p")
    assert len(events) == 1 and events[0]["count"] == 2 and events[0]["type"] == "Warning"


def test_strategic_merge_directives() -> None:
    original = {
        "spec": {
            "containers": [{"name": "a", "image": "1", "args": ["x"]}, {"name": "b"}],
            "finalizers": ["one"],
        }
    }
    result = patch.strategic_merge(
        original,
        {
            "spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "args": ["y"]}],
                "finalizers": ["two"],
            }
        },
    )
    assert [c["name"] for c in result["spec"]["containers"]] == ["b", "a"]
    assert result["spec"]["containers"][1] == {"name": "a", "image": "1", "args": ["y"]}  # args replaced
    assert result["spec"]["finalizers"] == ["one", "two"]
    replaced = patch.strategic_merge(
        original, {"spec": {"containers": [{"$patch": "replace"}, {"name": "z"}]}}
    )
    assert replaced["spec"]["containers"] == [{"name": "z"}]
    services = patch.strategic_merge(
        {"spec": {"ports": [{"port": 80, "name": "http"}]}},
        {"spec": {"ports": [{"port": 443, "name": "https"}]}},
    )
    assert [p["port"] for p in services["spec"]["ports"]] == [80, 443]
