"""The audit log (issue 17, item 4): who did what from the API, the admin and management commands.

Entries are written once a change has committed, so these tests commit (``transaction=True``) as the service does.
What they check is what an operator reading ``GET /audit`` or the admin's "Audit entries" would rely on: the right
actor, action, object, before/after values, address and request id; secrets never shown; nothing recorded for a
refused request, a rolled-back change or a worker's own transitions.
"""

from __future__ import annotations

import getpass
import json
from datetime import timedelta

import pytest
from celery import shared_task
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from knox.models import AuthToken

from audit import services
from audit.choices import Source
from audit.context import AuditContext, activated
from audit.models import AuditEntry
from clusters.models import Cluster
from core import workflow
from core.choices import RunStatus
from provisioning.models import CloudCredential
from tests.commands.conftest import command_env, manage
from tests.kubeconfig.test_validate import TOKEN, with_server
from tests.worker import run_finished

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT = {"REMOTE_ADDR": "203.0.113.7", "HTTP_X_REQUEST_ID": "audit-test-0001"}


def _only_entry(**filters) -> AuditEntry:
    entries = list(AuditEntry.objects.filter(**filters))
    assert len(entries) == 1, [(e.action, e.object_type, e.object_id, e.changes) for e in entries]
    return entries[0]


def _row_text(entry: AuditEntry) -> str:
    """Everything the database holds for the entry, as text."""
    return json.dumps(AuditEntry.objects.filter(pk=entry.pk).values().get(), default=str)


def _cluster(name: str = "prod-1", **fields) -> Cluster:
    return Cluster.objects.create(
        name=name, status="available", server_url=f"https://{name}.example:6443", **fields
    )


# --- the API ----------------------------------------------------------------------------------------------------


def test_a_registration_records_who_registered_which_cluster_from_where_with_the_kubeconfig_masked(
    api, admin_user
):
    response = api.post(
        "/clusters/register",
        {"name": "prod-1", "kubeconfig": with_server("https://10.20.30.40:6443"), "labels": {"team": "ml"}},
        format="json",
        **CLIENT,
    )
    assert response.status_code == 202, response.json()
    cluster = Cluster.objects.get(name="prod-1")

    entry = _only_entry()
    assert (entry.actor_name, entry.actor_id, entry.source) == ("admin", admin_user.pk, Source.API)
    assert entry.action == "cluster.register"
    assert (entry.object_type, entry.object_id, entry.object_repr) == (
        "clusters.cluster",
        str(cluster.pk),
        "prod-1",
    )
    assert str(entry.run_id) == response.json()["run_id"]
    assert entry.changes["name"] == [None, "prod-1"]
    assert entry.changes["labels"] == [None, {"team": "ml"}]
    assert entry.changes["server_url"] == [None, "https://10.20.30.40:6443"]
    assert entry.changes["kubeconfig"] == [None, "***"]
    assert "updated_at" not in entry.changes  # bookkeeping, not a person's change
    assert (entry.source_ip, entry.request_id) == ("203.0.113.7", "audit-test-0001")
    assert entry.request == "POST /clusters/register"
    assert TOKEN not in _row_text(entry)
    answer = api.get(f"/audit/{entry.pk}")
    assert answer.status_code == 200
    assert answer.json()["changes"]["kubeconfig"] == [None, "***"] and TOKEN not in answer.content.decode()


def test_an_update_records_each_changed_field_before_and_after(api):
    cluster = _cluster(labels={"team": "ml"})
    response = api.patch(
        f"/clusters/{cluster.pk}", {"labels": {"team": "infra"}, "name": "prod-2"}, format="json", **CLIENT
    )
    assert response.status_code == 200, response.json()

    entry = _only_entry()
    assert entry.action == "cluster.update" and entry.object_id == str(cluster.pk)
    assert entry.changes == {"labels": [{"team": "ml"}, {"team": "infra"}], "name": ["prod-1", "prod-2"]}
    assert entry.object_repr == "prod-2" and entry.run_id is None


def test_a_delete_that_only_starts_a_run_records_who_asked_for_it_with_the_run(api, admin_user):
    cluster = _cluster()
    response = api.delete(f"/clusters/{cluster.pk}?force=true", **CLIENT)
    assert response.status_code == 202, response.json()
    assert Cluster.objects.filter(pk=cluster.pk).exists()  # a worker deletes the row later

    entry = _only_entry()
    assert entry.action == "cluster.delete" and entry.actor_name == "admin"
    assert (entry.object_type, entry.object_id, entry.object_repr) == (
        "clusters.cluster",
        str(cluster.pk),
        "prod-1",
    )
    assert str(entry.run_id) == response.json()["run_id"]
    assert entry.details["params"] == {"cluster_id": cluster.pk, "force": True}
    assert entry.request == f"DELETE /clusters/{cluster.pk}"


def test_a_worker_carrying_out_the_run_adds_nothing_to_the_log(api, worker):
    cluster = _cluster()
    response = api.delete(f"/clusters/{cluster.pk}")
    assert response.status_code == 202, response.json()
    assert run_finished(response.json()["run_id"], 120).status == RunStatus.SUCCEEDED
    assert not Cluster.objects.filter(pk=cluster.pk).exists()  # the worker deleted the row (no context there)
    assert [(e.action, e.actor_name) for e in AuditEntry.objects.all()] == [("cluster.delete", "admin")]


@shared_task(name="tests.audit.note_on_cluster")
def note_on_cluster(pk: int) -> None:
    cluster = Cluster.objects.get(pk=pk)
    cluster.reason = "noted by a task"
    cluster.save()


def test_a_task_run_eagerly_within_a_request_is_not_the_persons_act():
    cluster = _cluster()
    ctx = AuditContext(source=Source.API, actor_name="someone")
    with activated(ctx):
        note_on_cluster.apply(args=[cluster.pk])
        cluster.refresh_from_db()
        assert cluster.reason == "noted by a task"  # the task did change the cluster...
        cluster.labels = {"set": "by the person"}
        cluster.save()  # ...and the person's own change right after it is still theirs
    [entry] = ctx.entries(succeeded=True)
    assert entry.changes == {"labels": [{}, {"set": "by the person"}]}


def test_refused_requests_write_nothing(api):
    cluster = _cluster()
    invalid = api.patch(f"/clusters/{cluster.pk}", {"labels": "not a map"}, format="json")
    assert invalid.status_code == 400, invalid.json()
    bad = api.post("/clusters/register", {"name": "x", "kubeconfig": "not: [a kubeconfig"}, format="json")
    assert bad.status_code == 400, bad.json()
    taken = api.post(
        "/clusters/register",
        {"name": "prod-1", "kubeconfig": with_server("https://10.9.9.9:6443")},
        format="json",
    )
    assert taken.status_code == 409, taken.json()
    assert AuditEntry.objects.count() == 0


def test_a_retried_start_with_the_same_idempotency_key_is_recorded_once(api):
    body = {"name": "prod-1", "kubeconfig": with_server("https://10.20.30.40:6443")}
    first = api.post("/clusters/register", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post("/clusters/register", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert _only_entry().run_id is not None


def test_a_rolled_back_change_is_never_claimed():
    cluster = _cluster()
    ctx = AuditContext(source=Source.COMMAND, actor_name="ops")
    with activated(ctx):
        with pytest.raises(RuntimeError), transaction.atomic():
            cluster.labels = {"rolled": "back"}
            cluster.save()
            raise RuntimeError("refused after the save")
        with transaction.atomic():
            with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint rolled back
                Cluster.objects.get(pk=cluster.pk).delete()
                raise RuntimeError("refused after the delete")
            cluster.refresh_from_db()
            cluster.reason = "kept"
            cluster.save()
    assert ctx.flush(succeeded=True) == 1
    entry = _only_entry()
    assert entry.action == "cluster.update" and entry.changes == {"reason": ["", "kept"]}


def test_a_cancel_made_without_a_model_save_is_recorded_from_the_view(api):
    run = workflow.get_workflow("demo.chain").launch(params={})
    response = api.post(f"/runs/{run.pk}/cancel", {"reason": "wrong cluster"}, format="json", **CLIENT)
    assert response.status_code == 202, response.json()
    entry = _only_entry()
    assert (entry.action, entry.object_type, entry.object_id) == ("run.cancel", "core.run", str(run.pk))
    assert (entry.actor_name, entry.source_ip) == ("admin", "203.0.113.7")


@pytest.mark.parametrize(
    ("proxies", "expected"), [(0, "203.0.113.7"), (1, "198.51.100.9")], ids=["no-proxy", "one-trusted-proxy"]
)
def test_the_source_address_follows_the_trusted_proxy_setting(api, settings, proxies, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    cluster = _cluster()
    response = api.patch(
        f"/clusters/{cluster.pk}",
        {"labels": {"a": "b"}},
        format="json",
        HTTP_X_FORWARDED_FOR="198.51.100.9",
        **CLIENT,
    )
    assert response.status_code == 200
    assert _only_entry().source_ip == expected


# --- the admin ----------------------------------------------------------------------------------------------------


def test_an_admin_change_is_recorded_with_source_admin_and_its_permissions(client, admin_user):
    login = client.post(
        "/admin/login/?next=/admin/", {"username": "admin", "password": "a-long-test-password"}, **CLIENT
    )
    assert login.status_code == 302
    assert AuditEntry.objects.count() == 0  # signing in changes nothing anyone asked for
    permission = Permission.objects.get(content_type__app_label="audit", codename="view_auditentry")
    added = client.post(
        "/admin/auth/group/add/", {"name": "auditors", "permissions": [permission.pk]}, **CLIENT
    )
    assert added.status_code == 302, added.content.decode()[:2000]

    group = Group.objects.get(name="auditors")
    entry = _only_entry()
    assert (entry.source, entry.actor_name, entry.action) == (Source.ADMIN, "admin", "group.create")
    assert (entry.object_type, entry.object_id, entry.object_repr) == (
        "auth.group",
        str(group.pk),
        "auditors",
    )
    assert entry.changes == {"name": [None, "auditors"], "permissions": [[], ["audit.view_auditentry"]]}
    assert (entry.source_ip, entry.request_id) == ("203.0.113.7", "audit-test-0001")


def test_a_secret_rotated_in_the_admin_is_masked_in_the_row_the_api_and_the_admin(client, admin_user, api):
    credential = CloudCredential.objects.create(
        name="aws-1", provider="aws", region="eu-west-1",
        secret={"access_key_id": "AKIAOLDOLDOLD", "secret_access_key": "old-secret-value-1234"},
    )  # fmt: skip
    client.force_login(admin_user)
    new_secret = "brand-new-secret-value-5678"
    response = client.post(
        f"/admin/provisioning/cloudcredential/{credential.pk}/change/",
        {
            "name": "aws-1", "provider": "aws", "region": "eu-west-1", "description": "rotated",
            "access_key_id": "", "secret_access_key": new_secret, "session_token": "",
            "tenant_id": "", "subscription_id": "", "client_id": "", "client_secret": "",
        },
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    assert CloudCredential.objects.get(pk=credential.pk).secret["secret_access_key"] == new_secret

    entry = _only_entry()
    assert (entry.source, entry.action) == (Source.ADMIN, "cloudcredential.update")
    assert entry.changes == {"description": ["", "rotated"], "secret": ["***", "***"]}
    for secret in (new_secret, "old-secret-value-1234", "AKIAOLDOLDOLD"):
        assert secret not in _row_text(entry)
        assert secret not in api.get(f"/audit/{entry.pk}").content.decode()
        page = client.get(f"/admin/audit/auditentry/{entry.pk}/change/")
        assert page.status_code == 200 and secret not in page.content.decode()
    assert "***" in page.content.decode() and "rotated" in page.content.decode()


def test_the_admin_shows_the_log_read_only(client, admin_user):
    entry = AuditEntry.objects.create(source=Source.API, action="cluster.update", actor_name="alice")
    client.force_login(admin_user)
    listing = client.get("/admin/audit/auditentry/?source__exact=api")
    assert listing.status_code == 200 and "alice" in listing.content.decode()
    found = client.get("/admin/audit/auditentry/", {"q": "alice"})
    assert found.status_code == 200 and "alice" in found.content.decode()
    assert "/admin/audit/auditentry/add/" not in listing.content.decode()
    assert client.get("/admin/audit/auditentry/add/").status_code == 403
    assert client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    page = client.get(f"/admin/audit/auditentry/{entry.pk}/change/").content.decode()
    assert 'name="_save"' not in page and "alice" in page
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


# --- management commands ------------------------------------------------------------------------------------------


def test_a_management_command_is_recorded_as_the_os_users_act(admin_user):
    result = manage("create_token", "admin", "--quiet", env=command_env())
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    token = AuthToken.objects.get(user=admin_user)

    entry = _only_entry()
    assert (entry.source, entry.actor_name, entry.actor_id) == (Source.COMMAND, getpass.getuser(), None)
    assert (entry.action, entry.object_type, entry.request) == (
        "authtoken.create", "knox.authtoken", "manage.py create_token"
    )  # fmt: skip
    assert entry.changes["user"] == [None, admin_user.pk]
    assert entry.changes["token_key"] == [None, "***"] and "digest" not in entry.changes
    assert entry.object_id == "" and entry.object_repr == "*** : admin"  # knox names a token by its digest
    text = _row_text(entry)
    assert key not in text and token.digest not in text and token.token_key not in text


# --- GET /audit -----------------------------------------------------------------------------------------------------


@pytest.fixture
def entries():
    now = timezone.now()
    rows = [
        AuditEntry(time=now - timedelta(days=3), actor_name="alice", source=Source.API, action="cluster.delete",
                   object_type="clusters.cluster", object_id="5"),
        AuditEntry(time=now - timedelta(days=2), actor_name="bob", source=Source.ADMIN, action="user.update",
                   object_type="auth.user", object_id="7"),
        AuditEntry(time=now - timedelta(days=1), actor_name="root", source=Source.COMMAND, action="authtoken.create",
                   object_type="knox.authtoken"),
    ]  # fmt: skip
    return AuditEntry.objects.bulk_create(rows)


def _actors(answer) -> list[str]:
    assert answer.status_code == 200, answer.json()
    return [row["actor"] for row in answer.json()["results"]]


def test_the_list_filters_by_actor_action_object_source_and_time(api, entries):
    assert _actors(api.get("/audit")) == ["root", "bob", "alice"]  # newest first
    assert api.get("/audit").json()["count"] == 3
    assert _actors(api.get("/audit?actor=alice")) == ["alice"]
    assert _actors(api.get("/audit?action=user.update")) == ["bob"]
    assert _actors(api.get("/audit?object_type=clusters.cluster&object_id=5")) == ["alice"]
    assert _actors(api.get("/audit?source=command")) == ["root"]
    since = (timezone.now() - timedelta(days=2, hours=12)).isoformat()
    until = (timezone.now() - timedelta(hours=12)).isoformat()
    assert _actors(api.get("/audit", {"since": since, "until": until})) == ["root", "bob"]
    assert _actors(api.get("/audit?limit=1&offset=1")) == ["bob"]
    assert api.get("/audit?since=yesterday").status_code == 400
    # Offsets PostgreSQL would refuse are compared in UTC; times that leave years 1-9999 are refused.
    assert _actors(api.get("/audit", {"since": "1778-03-03T15:07:10-20:32"})) == ["root", "bob", "alice"]
    out_of_range = api.get("/audit", {"until": "0001-01-01T00:00:00+05:00"})
    assert out_of_range.status_code == 400 and "until" in out_of_range.json()["errors"], out_of_range.json()
    assert api.get("/audit?source=browser").status_code == 400
    assert api.get("/audit?who=alice").status_code == 400
    detail = api.get(f"/audit/{entries[0].pk}").json()
    assert detail["action"] == "cluster.delete" and detail["object_id"] == "5"


def test_reading_the_log_needs_the_audit_view_permission(api, api_noperm, entries, django_user_model):
    assert api_noperm.get("/audit").status_code == 403
    assert api_noperm.get(f"/audit/{entries[0].pk}").status_code == 403
    user = django_user_model.objects.get(username="viewer")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="audit", codename="view_auditentry")
    )
    assert _actors(api_noperm.get("/audit")) == ["root", "bob", "alice"]
    for method in ("delete", "patch", "put"):  # nobody changes or removes an entry, superusers included
        assert getattr(api, method)(f"/audit/{entries[0].pk}", {}, format="json").status_code == 405
    assert api.post("/audit", {}, format="json").status_code == 405
    assert AuditEntry.objects.count() == 3


def test_the_schema_documents_the_audit_endpoints(api):
    schema = api.get("/schema?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    parameters = {p["name"] for p in paths["/audit"]["get"]["parameters"]}
    assert {"actor", "action", "object_type", "object_id", "source", "since", "until", "limit"} <= parameters
    assert "/audit/{id}" in paths


# --- retention ----------------------------------------------------------------------------------------------------


def test_retention_deletes_only_entries_older_than_the_setting(settings):
    now = timezone.now()
    ages = [400, 366, 364, 10, 0]
    AuditEntry.objects.bulk_create(
        AuditEntry(time=now - timedelta(days=d), source=Source.API, action=f"age.{d}") for d in ages
    )
    settings.AUDIT_RETENTION_DAYS = 0
    assert services.purge_expired() == 0 and AuditEntry.objects.count() == 5  # 0: kept forever
    settings.AUDIT_RETENTION_DAYS = 365
    assert services.purge_expired(batch_size=1) == 2  # several batches
    assert sorted(AuditEntry.objects.values_list("action", flat=True)) == ["age.0", "age.10", "age.364"]


def test_the_retention_task_is_scheduled_daily_and_known_to_the_worker():
    import importlib

    from django.apps import apps

    from budcluster_site.celery import app

    migration = importlib.import_module("audit.migrations.0002_retention_schedule")
    PeriodicTask.objects.filter(name=migration.NAME).delete()
    migration.forwards(apps, None)
    task = PeriodicTask.objects.get(name=migration.NAME)
    assert task.enabled and task.task == "audit.purge_expired"
    assert (task.interval.every, task.interval.period) == (86400, "seconds")
    app.loader.import_default_modules()  # what a worker does at start: every installed app's tasks module
    assert "audit.purge_expired" in app.tasks
