"""The bootstrap tokens a provisioned cluster's credential is minted with (provisioning/cloud_auth.py).

Cloud APIs cannot be reached here, so:

* the EKS token is checked offline, which is how it is made anyway (botocore signs locally): its format, the
  presigned STS URL it wraps, and its SigV4 signature recomputed here independently of botocore from the
  fake secret key, which proves the cluster-name header is signed in (the EKS authenticator relies on it);
* the AKS token request goes to a small local HTTPS stand-in for Entra ID (OpenID discovery and the v2.0 token
  endpoint), reached through ``PROVISIONING_AZURE_AUTHORITY_HOST``, the setting that selects the sovereign
  clouds in production.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit

import pytest

from devcluster.tls import generate
from provisioning.cloud_auth import (
    AKS_SCOPE,
    CredentialRefused,
    NotReady,
    aks_token,
    eks_token,
)

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _decode(token: str) -> str:
    assert token.startswith("k8s-aws-v1.")
    body = token.removeprefix("k8s-aws-v1.")
    assert "=" not in body, "the token is unpadded base64url, as aws-iam-authenticator expects"
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def _sigv4_signature(url: str, cluster_name: str, secret_key: str) -> str:
    """SigV4 query signature of the presigned GET, computed from the AWS documentation, not from botocore."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    canonical_headers = f"host:{parts.hostname}\nx-k8s-aws-id:{cluster_name}\n"
    canonical_request = "\n".join(
        ["GET", parts.path or "/", canonical_query, canonical_headers, "host;x-k8s-aws-id", EMPTY_SHA256]
    )
    query = dict(params)
    amz_date = query["X-Amz-Date"]
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    date, region, service, _ = scope.split("/")
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_eks_token_is_a_presigned_sts_call_for_this_cluster_only():
    token = eks_token(
        "gpu-prod",
        "eu-west-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        session_token=SESSION_TOKEN,
    )
    url = _decode(token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.path) == ("https", "sts.eu-west-1.amazonaws.com", "/")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["Action"] == "GetCallerIdentity" and query["Version"] == "2011-06-15"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    # 60 s is what aws eks get-token asks for; the EKS authenticator accepts the token for 15 minutes.
    assert query["X-Amz-Expires"] == "60"
    assert query["X-Amz-SignedHeaders"] == "host;x-k8s-aws-id"
    assert query["X-Amz-Security-Token"] == SESSION_TOKEN
    signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - signed_at).total_seconds()) < 120
    assert query["X-Amz-Credential"] == f"{ACCESS_KEY}/{signed_at:%Y%m%d}/eu-west-1/sts/aws4_request"
    assert query["X-Amz-Signature"] == _sigv4_signature(url, "gpu-prod", SECRET_KEY)
    # The cluster name is part of what is signed: the same URL presented for another cluster does not verify.
    assert query["X-Amz-Signature"] != _sigv4_signature(url, "other-cluster", SECRET_KEY)
    assert SECRET_KEY not in url and quote(SECRET_KEY, safe="") not in url


def test_eks_token_uses_the_partition_of_the_region_and_no_session_token_when_none():
    url = _decode(
        eks_token("cn-cluster", "cn-north-1", access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    )
    parts = urlsplit(url)
    assert parts.hostname == "sts.cn-north-1.amazonaws.com.cn"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert "X-Amz-Security-Token" not in query
    assert query["X-Amz-Signature"] == _sigv4_signature(url, "cn-cluster", SECRET_KEY)


def test_eks_token_needs_both_keys():
    with pytest.raises(CredentialRefused, match="no access key id or secret access key"):
        eks_token("c", "us-east-1", access_key_id=ACCESS_KEY, secret_access_key="")


# --- AKS: a local stand-in for Entra ID ------------------------------------------------------------------------

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
CLIENT_SECRET = "Qz8~client.secret-EXAMPLE_value"
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiI2ZGFlNDJmOCJ9.fake-aks-access-token"


class _EntraStandIn:
    """OpenID discovery and the v2.0 token endpoint of one tenant, over HTTPS with a throwaway CA."""

    def __init__(self, tmp_path) -> None:
        pki = generate()
        self.ca_file = tmp_path / "entra-ca.pem"
        self.ca_file.write_bytes(pki.ca_pem)
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                tenant = self.path.strip("/").split("/")[0]
                if tenant != TENANT:
                    self._answer(400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant"})
                    return
                base = f"{stand_in.url}/{TENANT}"
                self._answer(
                    200,
                    {
                        "issuer": f"{base}/v2.0",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                stand_in.requests.append({"path": self.path, "form": form})
                if form.get("client_secret") != CLIENT_SECRET:
                    self._answer(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the "
                            "secret being sent in the request is the client secret value.\r\nTrace ID: 1",
                        },
                    )
                    return
                self._answer(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": ACCESS_TOKEN})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = pki.server_context().wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def entra(tmp_path, settings) -> Iterator[_EntraStandIn]:
    stand_in = _EntraStandIn(tmp_path)
    settings.PROVISIONING_AZURE_AUTHORITY_HOST = stand_in.url
    yield stand_in
    stand_in.stop()


def test_aks_token_is_a_client_credentials_token_for_the_aks_server_application(entra):
    token = aks_token(
        tenant_id=TENANT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, verify=str(entra.ca_file)
    )
    assert token == ACCESS_TOKEN
    (request,) = entra.requests
    assert request["path"] == f"/{TENANT}/oauth2/v2.0/token"
    form = request["form"]
    assert form["grant_type"] == "client_credentials"
    assert form["client_id"] == CLIENT_ID
    assert form["scope"].split() == [AKS_SCOPE]
    assert AKS_SCOPE == "6dae42f8-4368-4678-94ff-3960e28e3630/.default"


def test_aks_refusal_is_clear_and_carries_no_secret(entra):
    wrong = "Wr0ng~secret-value-EXAMPLE"
    with pytest.raises(CredentialRefused) as refused:
        aks_token(tenant_id=TENANT, client_id=CLIENT_ID, client_secret=wrong, verify=str(entra.ca_file))
    message = str(refused.value)
    assert "Entra ID refused the service principal" in message and "AADSTS7000215" in message
    assert wrong not in message and CLIENT_SECRET not in message
    assert "Trace ID" not in message  # one line of the description, not the whole answer

    with pytest.raises(CredentialRefused, match="does not know tenant 'no-such-tenant'"):
        aks_token(
            tenant_id="no-such-tenant", client_id=CLIENT_ID, client_secret=wrong, verify=str(entra.ca_file)
        )


def test_aks_endpoint_unreachable_is_retried_not_final(entra, settings):
    entra.stop()
    with pytest.raises(NotReady, match="cannot reach Entra ID"):
        aks_token(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            verify=str(entra.ca_file),
            timeout=5,
        )


def test_aks_token_needs_the_whole_credential():
    with pytest.raises(CredentialRefused, match="tenant id, a client id and a client secret"):
        aks_token(tenant_id="", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
