"""Secret canaries: a whole lifecycle run with known secrets, then a search for them everywhere they must not be.

Through the API, against a devcluster, with the real Celery worker: a cloud credential, a provisioning with the
local Terraform module (local state backend), the registration of a cluster whose kubeconfig carries a token and
a client certificate key, a deployment with a Hugging Face token and S3 keys, then the deletion of all of it.
Every API response, admin page (changelist and change page of every registered model), log line (this process
and the worker's log), run event and step output, database column outside the encrypted ones, Terraform file
and broker entry is searched for each secret in the forms it would leak in (as is, JSON-escaped, URL-encoded,
hex, base64, each line of a PEM key). The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.urls import NoReverseMatch, reverse

from core.choices import RunStatus
from core.models import Run, RunEvent, RunStep
from tests.worker import run_finished

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
HF_TOKEN = "hf_CanaryHfTok3n7Qx2Lm9Pz4Wd"
S3_ACCESS_KEY = "AKIACANARYS3KEY1A2B3"
S3_SECRET = "canary-s3-secret-Vb8Nq3Wz5Rt1Yh6"
CLOUD_ACCESS_KEY = "AKIACANARYCLOUD9Z8Y7"
CLOUD_SECRET = "canary-cloud-secret-Hj4Kp7Ls2Xd9Qe"
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "bytea")


def _client_certificate() -> tuple[str, str]:
    """A self-signed client certificate and its key (PEM): the devcluster ignores it, the service stores it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canary")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


class Canaries:
    """The secrets and every form of them a leak could take; counts what was searched."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.needles: list[tuple[str, str, str]] = []  # (secret name, form, text)
        for name, value in secrets.items():
            forms = {
                "raw": value,
                "json": json.dumps(value)[1:-1],
                "url": quote(value, safe=""),
                "hex": value.encode().hex(),
                "base64": base64.b64encode(value.encode()).decode(),
            }
            for index, line in enumerate(value.splitlines()):
                if len(line.strip()) >= 16 and "-----" not in line:
                    forms[f"line{index}"] = line.strip()
            self.needles += [(name, form, text) for form, text in forms.items()]
        self.scanned: Counter[str] = Counter()
        self.hits: list[str] = []

    def scan(self, source: str, where: str, text: str | bytes | None) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.scanned[source] += 1
        if not text:
            return
        for name, form, needle in self.needles:
            if needle in text:
                self.hits.append(f"{source} {where}: {name} ({form})")


def _api_calls(api, canaries: Canaries):
    """``call(method, url, data)``: every response is searched before the test looks at it."""

    def call(method: str, url: str, data=None):
        response = (
            getattr(api, method)(url, data, format="json") if data is not None else getattr(api, method)(url)
        )
        canaries.scan("api", f"{method.upper()} {url} {response.status_code}", response.content)
        assert response.status_code < 500, (url, response.status_code)
        return response

    return call


def _every_get(call, ids: dict[str, list]) -> None:
    """Every GET operation of the OpenAPI schema, for every object of its resource."""
    schema = call("get", "/schema?format=json").json()
    for template, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        resource = template.strip("/").split("/")[0]
        params = re.findall(r"{(\w+)}", template)
        if not params:
            call("get", template)
            continue
        if "kind" in params or "fmt" in params:
            continue  # benchmark plot images
        for pk in ids.get(resource, []):
            url = template.replace(f"{{{params[0]}}}", str(pk))
            if "worker_id" in params:
                workers = call("get", f"/deployments/{pk}/workers").json().get("results", [])
                for worker in workers:  # none once deleted
                    call("get", url.replace("{worker_id}", str(worker["id"])) + "?tail=50")
                continue
            call("get", url)


def _admin_pages(client: Client, canaries: Canaries) -> None:
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        try:
            changelist = reverse("admin:{}_{}_changelist".format(*info))
        except NoReverseMatch:
            continue
        response = client.get(changelist)
        canaries.scan("admin", changelist, response.content)
        assert response.status_code < 500, changelist
        for pk in model_admin.get_queryset(_request(client)).values_list("pk", flat=True)[:50]:
            url = reverse("admin:{}_{}_change".format(*info), args=[pk])
            response = client.get(url)
            canaries.scan("admin", url, response.content)
            assert response.status_code < 500, url


def _request(client: Client):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = client.session_user
    return request


def _encrypted_columns() -> set[tuple[str, str]]:
    from core import fields

    encrypted = tuple(
        getattr(fields, name)
        for name in dir(fields)
        if name.startswith("Encrypted") and isinstance(getattr(fields, name), type)
    )
    return {
        (model._meta.db_table, field.column)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, encrypted)
    }


def _database(canaries: Canaries, label: str) -> None:
    skip = _encrypted_columns()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND data_type = ANY(%s)",
            [list(TEXT_TYPES)],
        )
        columns = cursor.fetchall()
        for schema, table, column in columns:
            if schema == "public" and (table, column) in skip:
                canaries.scanned["encrypted columns skipped"] += 1
                continue
            cursor.execute(
                f'SELECT "{column}"::text FROM "{schema}"."{table}" WHERE "{column}" IS NOT NULL'  # noqa: S608
            )
            canaries.scanned["database columns"] += 1
            for (value,) in cursor.fetchall():
                canaries.scan("database cells", f"{label} {schema}.{table}.{column}", value)


def _files(canaries: Canaries, source: str, roots: list[Path]) -> None:
    for root in roots:
        if root.is_file():
            canaries.scan(source, str(root), root.read_bytes())
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_file():
                canaries.scan(source, str(path), path.read_bytes())


def _broker(canaries: Canaries, label: str) -> None:
    import redis

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in broker.scan_iter():
        kind = broker.type(key).decode()
        if kind == "string":
            value = broker.get(key) or b""
        elif kind == "list":
            value = b"\n".join(broker.lrange(key, 0, -1))
        elif kind == "hash":
            value = b"\n".join(k + b"=" + v for k, v in broker.hgetall(key).items())
        elif kind == "set":
            value = b"\n".join(broker.smembers(key))
        elif kind == "zset":
            value = b"\n".join(broker.zrange(key, 0, -1))
        else:
            value = b""
        canaries.scan("broker entries", f"{label} {key!r}", value)
    # The embedded profile's filesystem broker (messages, exchange bindings), whatever this run used.
    _files(canaries, "broker files", [ROOT / "var" / "broker", ROOT / "control"])


def _terraform_files(canaries: Canaries, var_dir: Path) -> None:
    leftovers = list(Path(tempfile.gettempdir()).glob("budcluster-tf-*"))
    _files(canaries, "terraform files", [var_dir / "terraform", *leftovers])


def test_no_canary_secret_leaves_its_encrypted_home(
    api, admin_user, worker, canary_dc, settings, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    worker_log_start = worker.log_path.stat().st_size if worker.log_path.exists() else 0
    registered_name, provisioned_name = canary_dc.names[0], canary_dc.names[1]
    cert_pem, key_pem = _client_certificate()
    canaries = Canaries(
        {
            "kubeconfig token": canary_dc.token(registered_name),
            "provisioned cluster token": canary_dc.token(provisioned_name),
            "client key": key_pem,
            "HF token": HF_TOKEN,
            "S3 access key": S3_ACCESS_KEY,
            "S3 secret key": S3_SECRET,
            "cloud access key": CLOUD_ACCESS_KEY,
            "cloud secret": CLOUD_SECRET,
        }
    )
    call = _api_calls(api, canaries)
    var_dir = tmp_path / "var"
    settings.VAR_DIR = var_dir
    settings.PROVISIONING_STATE_BACKEND = "local"
    settings.PROVISIONING_MODULE_OVERRIDE = "terraform/testing/local-cluster"
    settings.PROVISIONING_MODULE_VARIABLES = {
        "api_server": canary_dc.cluster_url(provisioned_name),
        "ca_data": base64.b64encode(canary_dc.ca_pem).decode(),
        "token": canary_dc.token(provisioned_name),
        # The network resource prints the cloud secret from its environment: a provider echoing a credential.
        "echo_env_var": "AWS_SECRET_ACCESS_KEY",
    }

    # A cloud credential, then a provisioning (plan, apply, outputs, registration of the new cluster).
    credential = call(
        "post",
        "/credentials",
        {
            "name": "canary-aws",
            "provider": "aws",
            "region": "us-east-1",
            "access_key_id": CLOUD_ACCESS_KEY,
            "secret_access_key": CLOUD_SECRET,
        },
    ).json()
    provision = call(
        "post",
        "/clusters/provision",
        {
            "name": "canary-provisioned",
            "provider": "aws",
            "region": "us-east-1",
            "node_pools": [{"name": "system", "instance_type": "m6i.large", "desired_size": 1}],
            "credential_id": credential["id"],
            "auto_approve": True,
        },
    )
    assert provision.status_code == 202, provision.json()
    provisioned = provision.json()["cluster_id"]

    # A cluster registered with a token and a client certificate key.
    kubeconfig = canary_dc.kubeconfig(registered_name)
    kubeconfig["users"][0]["user"].update(
        {
            "client-certificate-data": base64.b64encode(cert_pem.encode()).decode(),
            "client-key-data": base64.b64encode(key_pem.encode()).decode(),
        }
    )
    register = call(
        "post", "/clusters/register", {"name": "canary-registered", "kubeconfig": yaml.safe_dump(kubeconfig)}
    )
    assert register.status_code == 202, register.json()
    registered = register.json()["cluster_id"]
    for run_id in (provision.json()["run_id"], register.json()["run_id"]):
        assert run_finished(run_id, 240).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run_id).error

    # A deployment whose weights come from S3, with a Hugging Face token.
    deploy = call(
        "post",
        "/deployments/deploy",
        {
            "cluster": registered,
            "name": "canary-model",
            "model": "llama-3.1-8b-instruct",
            "context_len": 4096,
            "concurrency": 8,
            "hf_token": HF_TOKEN,
            "source": "s3",
            "s3": {
                "bucket": "canary-weights",
                "prefix": "llama",
                "access_key_id": S3_ACCESS_KEY,
                "secret_access_key": S3_SECRET,
            },
        },
    )
    assert deploy.status_code == 202, deploy.json()
    deployment = deploy.json()["deployment_id"]
    deployed = run_finished(deploy.json()["run_id"], 180)
    assert deployed.status == RunStatus.SUCCEEDED, deployed.error

    # Everything there is to read while it all exists.
    ids = {
        "clusters": [provisioned, registered],
        "deployments": [deployment],
        "credentials": [credential["id"]],
        "runs": [str(pk) for pk in Run.objects.values_list("pk", flat=True)],
        "benchmarks": list(apps.get_model("deployments", "Benchmark").objects.values_list("pk", flat=True)),
    }
    _every_get(call, ids)
    browser = Client()
    browser.force_login(admin_user)
    browser.session_user = admin_user
    _admin_pages(browser, canaries)
    _database(canaries, "deployed")
    _terraform_files(canaries, var_dir)
    _broker(canaries, "deployed")

    # Delete the deployment, then both clusters (the provisioned one through terraform destroy).
    runs = [call("delete", f"/deployments/{deployment}").json()["run_id"]]
    assert run_finished(runs[0], 120).status == RunStatus.SUCCEEDED
    for cluster_id in (registered, provisioned):
        response = call("delete", f"/clusters/{cluster_id}")
        assert response.status_code == 202, response.json()
        runs.append(response.json()["run_id"])
    for run_id in runs:
        assert run_finished(run_id, 180).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run_id).error

    ids["runs"] = [str(pk) for pk in Run.objects.values_list("pk", flat=True)]
    _every_get(call, ids)
    _admin_pages(browser, canaries)
    _database(canaries, "deleted")
    _terraform_files(canaries, var_dir)
    _broker(canaries, "deleted")
    for event in RunEvent.objects.all():
        canaries.scan("run events", str(event.run_id), f"{event.message} {json.dumps(event.data)}")
    for step in RunStep.objects.all():
        canaries.scan(
            "step outputs", f"{step.run_id}/{step.name}", f"{step.message} {json.dumps(step.output)}"
        )
    for record in caplog.records:
        canaries.scan("log lines (web process)", record.name, record.getMessage())
    with worker.log_path.open("rb") as log:
        log.seek(worker_log_start)
        for line in log:
            canaries.scan("log lines (worker)", str(worker.log_path.name), line)

    figures = dict(sorted(canaries.scanned.items()))
    print(
        "\nsecret canaries:",
        len(canaries.needles),
        "needles;",
        json.dumps(figures),
        f"; hits: {len(canaries.hits)}",
    )
    assert canaries.scanned["terraform files"] > 0 and canaries.scanned["log lines (worker)"] > 0
    assert canaries.hits == [], "\n".join(canaries.hits[:50])
