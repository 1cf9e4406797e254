"""``GET /metrics``: the Prometheus text exposition of ``FleetCollector``, for authorised scrapers only.

Who may scrape (settings ``METRICS_TOKEN``, ``METRICS_ALLOWED_NETWORKS``; README "Metrics"):

* neither set: the endpoint is off and answers 404, as a path that does not exist (nothing is revealed, and an
  operator who never configured it exposes nothing);
* ``METRICS_ALLOWED_NETWORKS``: a client address (``core.throttling.client_ip``) outside every listed network is
  answered 403 ``metrics_forbidden``;
* ``METRICS_TOKEN``: a request without ``Authorization: Bearer <token>``, or with another token, is answered 401
  ``not_authenticated`` with ``WWW-Authenticate: Bearer``; the token is compared in constant time and never
  logged or echoed.

When both are set, both must pass. The API's tokens and sessions do not open /metrics: a scraper holds only the
metrics token, which grants nothing else.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.gzip import gzip_page
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.api.errors import error_response, not_found
from core.throttling import client_ip

from .collector import FleetCollector


@functools.cache
def registry() -> CollectorRegistry:
    """The registry /metrics serves: the fleet collector only. The default registry's process and Python
    figures would describe whichever gunicorn worker answered, which says nothing about the fleet."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector())
    return reg


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in getattr(settings, "METRICS_ALLOWED_NETWORKS", [])]


def _address_allowed(request: HttpRequest, networks) -> bool:
    try:
        address = ipaddress.ip_address(client_ip(request).split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _token_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


@csrf_exempt  # changes nothing; a POST gets the 404 or 405 below, not a CSRF refusal naming the endpoint
# Prometheus asks with Accept-Encoding: gzip; a 2,000-cluster fleet's exposition (~2 MB of text) travels as ~5 %.
@gzip_page
def metrics(request: HttpRequest) -> HttpResponse:
    token = getattr(settings, "METRICS_TOKEN", "") or ""
    networks = _networks()
    if not token and not networks:
        return not_found(request)  # the same answer as any unknown path, whatever the method
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, f'Method "{request.method}" not allowed.', "method_not_allowed")
        response["Allow"] = "GET, HEAD"
        return response
    if networks and not _address_allowed(request, networks):
        return error_response(
            403, "This address may not read the metrics (METRICS_ALLOWED_NETWORKS).", "metrics_forbidden"
        )
    if token and not _token_matches(request, token):
        response = error_response(
            401,
            "A metrics bearer token is required (Authorization: Bearer <METRICS_TOKEN>).",
            "not_authenticated",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
