"""URL map: the REST API at the root (paths as in the original service), admin, OpenAPI docs, health and
metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from core.api import health
from metrics.views import metrics

from . import dashboard

admin.site.site_header = "BudCluster"
admin.site.site_title = "BudCluster admin"
admin.site.index_title = "Clusters, deployments and runs"
# "View site": the service has no front page (its root is the REST API, which answers JSON), so the admin's
# link leads to the API documentation, which a signed-in operator may read.
admin.site.site_url = "/docs"
# The admin index is the fleet dashboard (budcluster_site/dashboard.py), with the apps' list below it.
admin.site.index_template = "admin/fleet/index.html"

urlpatterns = [
    path("health", health.health, name="health"),
    path("health/db", health.health_db, name="health-db"),
    path("health/broker", health.health_broker, name="health-broker"),
    # Prometheus text format, for the scrapers METRICS_TOKEN and METRICS_ALLOWED_NETWORKS admit (metrics/).
    path("metrics", metrics, name="metrics"),
    # Before admin.site.urls, so these win over the admin's own index and catch-all.
    path("admin/", admin.site.admin_view(dashboard.index), name="fleet-index"),
    path("admin/fleet/runs/", admin.site.admin_view(dashboard.runs_fragment), name="fleet-runs"),
    path("admin/", admin.site.urls),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script from /docs?script: no inline script, so the
    # Content-Security-Policy (script-src 'self') holds on this page too.
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("", include("core.api.urls")),
    # Before clusters: its fixed paths (clusters/provision, clusters/{id}/nodes) must win over clusters/{id}.
    path("", include("provisioning.api.urls")),
    path("", include("hardware.api.urls")),
    path("", include("clusters.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("webhooks.api.urls")),
]

handler400 = "core.api.errors.bad_request"
handler403 = "core.api.errors.permission_denied"
handler404 = "core.api.errors.not_found"
handler500 = "core.api.errors.server_error"
