"""Chart rendering with the Helm v4 engine (helm-python-sdk), no helm binary and no in-cluster release storage.

BudCluster renders a chart to objects here, applies them with server-side apply through the gateway, and keeps
each revision in its own database (``clusters.Release``/``Revision``) — so rollback re-applies a stored revision
and uninstall deletes exactly the recorded objects.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

# libyaml's safe loader when available: rendered manifests are parsed on every install and upgrade.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CHARTS_DIR = Path(__file__).resolve().parent.parent / "charts"


class ChartError(Exception):
    """The chart could not be rendered with these values; the message names the value or template."""


@functools.lru_cache(maxsize=16)
def _load(chart: str):
    import helm_python as helm

    path = Path(chart)
    if not path.is_absolute():
        path = CHARTS_DIR / chart
    return helm.Chart.load(str(path))


def render(chart: str, values: dict, *, release: str, namespace: str) -> tuple[str, list[dict]]:
    """Render ``chart`` (a name under charts/ or a path) → (manifest text, objects in document order)."""
    import helm_python as helm

    try:
        manifests = _load(chart).render(values, name=release, namespace=namespace, is_install=True)
    except (helm.HelmValuesError, helm.HelmRenderError, helm.HelmChartInvalidError) as exc:
        raise ChartError(f"chart {chart}: {exc}") from None
    documents = []
    objects: list[dict] = []
    for template in sorted(manifests):
        if template.endswith("NOTES.txt"):
            continue
        text = manifests[template]
        for doc in yaml.load_all(text, Loader=_YAML_LOADER):
            if doc:
                objects.append(doc)
        if text.strip():
            documents.append(f"# Source: {template}\n{text.strip()}")
    return "\n---\n".join(documents) + "\n", objects
