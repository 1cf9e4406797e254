"""`manage.py check_clusters` from a second terminal while `make run` runs.

The command must judge clusters with the settings the service runs with (`make run` allows the loopback devcluster
for its own processes and writes that down in ``var/make-run.env``, which settings read), and a refusal by
BudCluster's own outbound-address guard is a configuration error to report, never a health result: the cluster's
status, reason and events stay as they were.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster, ClusterEvent
from devcluster.testing import devcluster_fixture

from .conftest import ROOT, command_env, manage

dc_cmd = devcluster_fixture(name="dc_cmd", nodes="cpu-small", clusters=2, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)

GUARD = "BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"


def _store(
    settings, dc, name: str, vc: str, status: str = ClusterStatus.AVAILABLE, reason: str = ""
) -> Cluster:
    """A registered devcluster cluster (loopback allowed while its kubeconfig is checked, as `make run` does)."""
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    checked = services.validate(dc.kubeconfig_yaml(vc).encode())
    return Cluster.objects.create(
        name=name,
        server_url=checked.server,
        kubeconfig=checked.normalized_yaml(),
        status=status,
        reason=reason,
    )


def _health_events(cluster: Cluster) -> list[tuple[str, str, str]]:
    return list(ClusterEvent.objects.filter(cluster=cluster).values_list("kind", "old_status", "new_status"))


def test_a_guard_refusal_leaves_status_reason_and_events_as_they_were(settings, dc_cmd):
    up = _store(settings, dc_cmd, "dc-up", dc_cmd.names[0])
    down = _store(
        settings, dc_cmd, "dc-down", dc_cmd.names[1], ClusterStatus.NOT_AVAILABLE, "connection refused"
    )
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = (
        False  # a process without the setting `make run` gives its own
    )

    report = services.sweep(timeout=5.0, cluster_ids=[up.pk, down.pk])

    assert report.transitions == []
    refused = dict(report.refused)
    assert set(refused) == {"dc-up", "dc-down"}
    assert GUARD in refused["dc-up"] and "loopback" in refused["dc-up"]
    for cluster, status, reason in ((up, "available", ""), (down, "not_available", "connection refused")):
        cluster.refresh_from_db()
        assert (cluster.status, cluster.reason) == (status, reason)
        assert _health_events(cluster) == []
    assert report.as_dict()["refused"] == {name: refused[name] for name in ("dc-down", "dc-up")}


def test_the_command_reports_the_refusal_as_a_configuration_error(settings, dc_cmd):
    cluster = _store(settings, dc_cmd, "devcluster", dc_cmd.names[0])
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = False
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError, match="configuration") as caught:
        call_command("check_clusters", stdout=out, stderr=err)

    assert "not checked" in err.getvalue() and "devcluster" in err.getvalue() and GUARD in err.getvalue()
    assert "1 cluster(s) not checked" in str(caught.value)
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE and _health_events(cluster) == []


def test_a_second_terminal_sees_the_settings_make_run_wrote(settings, dc_cmd, tmp_path):
    cluster = _store(settings, dc_cmd, "devcluster", dc_cmd.names[0])
    var = tmp_path / "var"
    var.mkdir(mode=0o700)
    # What `make run` (scripts/run.sh) does at start, with the settings it gives its own processes.
    written = subprocess.run(
        [sys.executable, "-m", "budcluster_site.env", "write", str(var / "make-run.env"), GUARD, "UNSET_ONE"],
        cwd=ROOT, env={**command_env(), GUARD: "1"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert (var / "make-run.env").stat().st_mode & 0o077 == 0
    env = command_env(BUDCLUSTER_VAR_DIR=str(var))

    done = manage("check_clusters", env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 1 cluster(s)" in done.stdout and "no status changed" in done.stdout
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE and _health_events(cluster) == []

    # The environment still wins over the file: a terminal that turns the setting off gets the refusal, reported
    # as a configuration error (exit status 1), and the cluster is left alone.
    refused = manage("check_clusters", env={**env, GUARD: "0"})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "devcluster" in refused.stderr and GUARD in refused.stderr
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE and _health_events(cluster) == []
