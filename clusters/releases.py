"""Chart releases on clusters: install/upgrade (a new revision), rollback, uninstall.

Each install or upgrade renders the chart with the Helm engine, applies the objects with server-side apply
(field manager ``budcluster``), deletes objects of the previous revision that the new one no longer has, and
records the revision (values, rendered manifest, object list). Applying is idempotent, so a step that dies halfway
and runs again converges to the same objects without duplicates.
"""

from __future__ import annotations

import yaml
from django.db import transaction

from core import helm
from core.gateway import ClusterGateway, object_ref

from .choices import ReleaseStatus
from .models import Cluster, Release, Revision

MANAGED_LABEL = "app.kubernetes.io/managed-by"


def _label(objects: list[dict], release: str) -> list[dict]:
    for obj in objects:
        labels = obj.setdefault("metadata", {}).setdefault("labels", {}) or {}
        labels.setdefault("budcluster.io/release", release)
        obj["metadata"]["labels"] = labels
    return objects


def _apply_objects(gateway: ClusterGateway, namespace: str, objects: list[dict]) -> list[dict]:
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if obj.get("kind") not in ("Namespace",) and "namespace" not in meta:
            info = gateway.resource(obj["apiVersion"], obj["kind"])
            if info.namespaced:
                meta["namespace"] = namespace
    gateway.apply_all(objects)
    return [object_ref(o) for o in objects]


def install_or_upgrade(
    gateway: ClusterGateway,
    cluster: Cluster,
    *,
    chart: str,
    release: str,
    namespace: str,
    values: dict,
    description: str = "",
    reuse_if_same: bool = True,
) -> Revision:
    """Render and apply; returns the new revision (or the current one when nothing changed)."""
    manifest, objects = helm.render(chart, values, release=release, namespace=namespace)
    objects = _label(objects, release)
    rel, _ = Release.objects.get_or_create(
        cluster=cluster, namespace=namespace, name=release, defaults={"chart": chart}
    )
    current = rel.revisions.filter(number=rel.current_revision).first()
    refs = _apply_objects(gateway, namespace, objects)
    if current is not None:
        keep = {(r["kind"], r.get("namespace"), r["name"]) for r in refs}
        for old in current.applied:
            if (old["kind"], old.get("namespace"), old["name"]) not in keep:
                gateway.delete(old["apiVersion"], old["kind"], old["name"], old.get("namespace"))
        if reuse_if_same and current.manifest == manifest and rel.status == ReleaseStatus.DEPLOYED:
            return current
    with transaction.atomic():
        rel = Release.objects.select_for_update().get(pk=rel.pk)
        number = rel.current_revision + 1
        revision = Revision.objects.create(
            release=rel,
            number=number,
            values=values,
            manifest=manifest,
            applied=refs,
            description=description,
        )
        rel.current_revision = number
        rel.chart = chart
        rel.status = ReleaseStatus.DEPLOYED
        rel.save(update_fields=["current_revision", "chart", "status", "updated_at"])
    return revision


def rollback(gateway: ClusterGateway, rel: Release, to_number: int) -> Revision:
    """Re-apply a stored revision as a new revision (as ``helm rollback`` does)."""
    target = rel.revisions.get(number=to_number)
    return install_or_upgrade(
        gateway,
        rel.cluster,
        chart=rel.chart,
        release=rel.name,
        namespace=rel.namespace,
        values=target.values,
        description=f"rollback to {to_number}",
        reuse_if_same=False,
    )


KEEP_ANNOTATION = "helm.sh/resource-policy"


def kept_objects(manifest: str) -> set[tuple[str, str, str | None]]:
    """(kind, name, namespace) of the objects a chart marks ``helm.sh/resource-policy: keep``: as with Helm,
    uninstalling the release leaves them in place (the collectors chart keeps BudCluster's own namespace,
    which holds the credentials the rest of the teardown runs with)."""
    kept = set()
    for doc in yaml.safe_load_all(manifest or ""):
        if not isinstance(doc, dict):
            continue
        meta = doc.get("metadata") or {}
        if (meta.get("annotations") or {}).get(KEEP_ANNOTATION) == "keep":
            kept.add((doc.get("kind", ""), meta.get("name", ""), meta.get("namespace")))
    return kept


def uninstall(gateway: ClusterGateway, rel: Release) -> int:
    """Delete every object of the current revision (reverse order) but those the chart keeps; returns how
    many were deleted."""
    current = rel.revisions.filter(number=rel.current_revision).first()
    kept = kept_objects(current.manifest) if current else set()
    deleted = 0
    for ref in reversed(current.applied if current else []):
        if (ref["kind"], ref["name"], ref.get("namespace")) in kept:
            continue
        if gateway.delete(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace")):
            deleted += 1
    rel.status = ReleaseStatus.UNINSTALLED
    rel.save(update_fields=["status", "updated_at"])
    return deleted
