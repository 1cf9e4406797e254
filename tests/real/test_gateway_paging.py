"""The cluster gateway reads big lists in pages, on a real API server with 1,000 KWOK nodes.

What a user notices: the inventory of a large cluster is complete (every node, none twice), it arrives as a few
bounded answers instead of one huge one, and a continue token that expires mid-list (410 Gone, which a real API
server answers once etcd compacted the snapshot the token points to) costs one restart, not a failed step.

The expiry is produced the way a real cluster produces it: the API server's own compactor writes the compacted
revision under etcd's `compact_rev_key` and compacts etcd (every 5 minutes by default); the test does the same two
etcd calls at once, on the harness's loopback etcd, and waits until the API server's watch cache has dropped the
snapshot (it polls the compacted revision every 15 s).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import httpx
import pytest
from kubernetes import client

from clusters import services as cluster_services
from clusters.models import Cluster
from core.gateway import DEFAULT_PAGE_SIZE, ClusterGateway, Expired, GatewayError
from devcluster.real.controlplane import ControlPlane
from devcluster.real.testing import real_cluster_fixture
from hardware.models import Node
from hardware.services import refresh_inventory
from tests.worker import wait_for

NODE_COUNT = 1000
NAMES = [f"kwok-{i:04d}" for i in range(NODE_COUNT)]
# Light nodes: a small CPU box each, no accelerators (the harness adds KWOK's annotation, address, pod CIDR).
NODES = [
    {
        "metadata": {"name": name, "labels": {"budcluster.io/test": "paging"}},
        "status": {"capacity": {"cpu": "2", "memory": "4Gi", "pods": "20"}},
    }
    for name in NAMES
]
NODES_PATH = "/api/v1/nodes"
# Every test of the module is a database test (only the last one writes): pytest-django runs database and
# non-database tests in separate groups, which would otherwise start the 1,000-node control plane twice.
pytestmark = pytest.mark.django_db

big_fixture = real_cluster_fixture(name="big_raw", nodes=NODES, scope="module")


@pytest.fixture(scope="module")
def big(big_raw: ControlPlane) -> ControlPlane:
    print(f"\n[paging] real control plane with {NODE_COUNT} KWOK nodes ready in {big_raw.started_in:.1f} s")
    return big_raw


@dataclass
class Call:
    method: str
    path: str
    params: dict
    items: int | None = None
    continue_token: str = ""
    error: GatewayError | None = None


@dataclass
class Recorder:
    """Every request the gateway sends, with what came back; `after_page` may act between two pages."""

    calls: list[Call] = field(default_factory=list)
    after_page: object = None

    def pages(self, path: str = NODES_PATH) -> list[Call]:
        return [c for c in self.calls if c.method == "GET" and c.path == path]


def record(gw: ClusterGateway) -> Recorder:
    rec = Recorder()
    send = gw.request

    def request(method: str, path: str, **kwargs):
        call = Call(method, path, dict(kwargs.get("params") or {}))
        rec.calls.append(call)
        try:
            body = send(method, path, **kwargs)
        except GatewayError as exc:
            call.error = exc
            raise
        if isinstance(body, dict) and "items" in body:
            call.items = len(body["items"])
            call.continue_token = (body.get("metadata") or {}).get("continue") or ""
            if rec.after_page is not None:
                rec.after_page(call)
        return body

    gw.request = request  # the instance attribute shadows the method: list() pages through it
    return rec


def gateway(cp: ControlPlane, **kwargs) -> ClusterGateway:
    return ClusterGateway(cp.kubeconfig("admin"), allow_loopback=True, timeout=30, **kwargs)


def expire(cp: ControlPlane, token: str) -> None:
    """Make `token` expire as etcd compaction does on a real cluster, and wait until the API server says so."""
    api = cp.client()
    try:
        core = client.CoreV1Api(api)
        # A write after the token's snapshot, so there is a newer revision to compact to.
        bump = core.create_namespaced_config_map("default", {"metadata": {"generateName": "compact-"}})
        revision = bump.metadata.resource_version
        b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
        put = httpx.post(
            f"{cp.etcd_url}/v3/kv/put",
            json={"key": b64("compact_rev_key"), "value": b64(revision)},
            timeout=10,
        )
        assert put.status_code == 200, put.text
        compact = httpx.post(f"{cp.etcd_url}/v3/kv/compaction", json={"revision": revision}, timeout=10)
        assert compact.status_code == 200, compact.text

        def gone() -> bool:
            try:
                core.list_node(limit=1, _continue=token)
            except client.ApiException as exc:
                if exc.status == 410:
                    return True
                raise
            return False

        wait_for(gone, timeout=60, interval=0.5, what="the API server to expire the compacted continue token")
    finally:
        api.close()


def test_inventory_of_1000_nodes_is_read_in_pages_of_500(big):
    with gateway(big) as gw:
        assert gw.page_size == DEFAULT_PAGE_SIZE == 500
        rec = record(gw)
        nodes = gw.list("v1", "Node")
    names = [n["metadata"]["name"] for n in nodes]
    assert len(names) == NODE_COUNT and set(names) == set(NAMES)  # all of them, none twice
    pages = rec.pages()
    print(
        f"[paging] {NODE_COUNT} nodes in {len(pages)} requests: {[p.items for p in pages]} objects per page"
    )
    assert [p.items for p in pages] == [500, 500]
    assert [p.params["limit"] for p in pages] == ["500", "500"]
    assert "continue" not in pages[0].params
    assert pages[1].params["continue"] == pages[0].continue_token != ""
    assert pages[1].continue_token == ""  # the server said the list is complete


def test_page_size_and_selectors_reach_the_api_server(big):
    with gateway(big, page_size=150) as gw:
        rec = record(gw)
        nodes = gw.list("v1", "Node", label_selector="budcluster.io/test=paging")
        few = gw.list("v1", "Node", field_selector="metadata.name=kwok-0042", page_size=7)
    assert sorted(n["metadata"]["name"] for n in nodes) == NAMES
    pages = rec.pages()
    assert [p.items for p in pages[:-1]] == [150] * 6 + [100]
    assert all(p.params["labelSelector"] == "budcluster.io/test=paging" for p in pages[:-1])
    assert [n["metadata"]["name"] for n in few] == ["kwok-0042"]
    assert pages[-1].params == {"fieldSelector": "metadata.name=kwok-0042", "limit": "7"}


def test_an_expired_continue_token_restarts_the_list_once(big):
    with gateway(big, page_size=400) as gw:
        rec = record(gw)

        def expire_once(call: Call) -> None:
            if len(rec.pages()) == 1:  # between the first and the second page of the first attempt
                expire(big, call.continue_token)

        rec.after_page = expire_once
        nodes = gw.list("v1", "Node")
    names = [n["metadata"]["name"] for n in nodes]
    assert len(names) == NODE_COUNT and set(names) == set(NAMES)
    pages = rec.pages()
    assert [("continue" in p.params, p.items) for p in pages] == [
        (False, 400),  # first attempt, page 1
        (True, None),  # page 2: 410 Gone
        (False, 400),  # the list starts again
        (True, 400),
        (True, 200),
    ]
    assert isinstance(pages[1].error, Expired) and pages[1].error.status == 410


def test_a_token_that_expires_again_fails_with_a_clear_error(big):
    with gateway(big, page_size=400) as gw:
        rec = record(gw)
        rec.after_page = lambda call: "continue" not in call.params and expire(big, call.continue_token)
        with pytest.raises(Expired) as err:
            gw.list("v1", "Node")
    message = str(err.value)
    assert "Node" in message and "expired twice while paging" in message and "410 Gone" in message
    assert err.value.status == 410
    starts = [p for p in rec.pages() if "continue" not in p.params]
    assert len(starts) == 2  # restarted once, not forever


def test_refresh_inventory_stores_all_1000_nodes_read_in_pages(big, settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    checked = cluster_services.validate(big.kubeconfig_yaml().encode())
    cluster = Cluster.objects.create(
        name="kwok-1000", server_url=checked.server, kubeconfig=checked.normalized_yaml(), status="available"
    )
    with cluster_services.gateway_for(cluster, timeout=60, reuse=False) as gw:
        rec = record(gw)
        result = refresh_inventory(cluster, gw)
    assert [p.items for p in rec.pages()] == [500, 500]
    assert rec.pages("/api/v1/pods") and all(p.params["limit"] == "500" for p in rec.pages("/api/v1/pods"))
    stored = Node.objects.filter(cluster=cluster)
    assert stored.count() == NODE_COUNT
    assert stored.filter(ready=True).count() == NODE_COUNT
    assert set(stored.values_list("name", flat=True)) == set(NAMES)
    assert result["removed"] == 0
