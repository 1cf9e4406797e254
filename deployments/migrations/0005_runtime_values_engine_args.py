"""Stored runtime revisions get the new shape of the runtime chart's engine values.

Before, the chart built ``--model`` … ``--port`` itself and ``engine.extraArgs`` held the service's generated flags
(``--dtype``, ``--quantization=fp8``, ``--task=embed``) followed by the user's own, so a rollback had to slice the
generated ones off. Now ``engine.args`` holds the complete generated list and ``engine.extraArgs`` only the user's
flags. This rewrites the values of every deployment's runtime revisions accordingly: the generated list is read
from the revision's own rendered manifest (what the pods ran), so re-rendering the rewritten values gives the same
container arguments. A revision whose manifest does not show those arguments is left as it was.
"""

from __future__ import annotations

import yaml
from django.db import migrations

# The flags the chart rendered itself before engine.args existed: --model, --served-model-name,
# --tensor-parallel-size, --max-model-len, --gpu-memory-utilization, --max-num-seqs, --port.
LEGACY_CHART_FLAGS = 7


def _generated_count(runtime: dict) -> int:
    """How many flags the service put before the user's in extraArgs (--dtype, then fp8 and embed when they
    applied), from the deployment's placement as it was then."""
    count = 1
    if runtime.get("quantization") == "fp8":
        count += 1
    if runtime.get("model_kind") and runtime["model_kind"] != "generation":
        count += 1
    return count


def _container_args(manifest: str) -> list[str] | None:
    for doc in yaml.safe_load_all(manifest or ""):
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            for container in ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get(
                "containers"
            ) or []:
                if container.get("name") == "vllm":
                    return [str(a) for a in container.get("args") or []]
    return None


def split_legacy_engine(values: dict, manifest: str, runtime: dict) -> dict | None:
    """The revision's values in the new shape, or None when they are new already or cannot be split safely."""
    engine = values.get("engine")
    if not isinstance(engine, dict) or "args" in engine:
        return None
    extra = [str(a) for a in engine.get("extraArgs") or []]
    generated = _generated_count(runtime)
    rendered = _container_args(manifest)
    if rendered is None or len(extra) < generated or len(rendered) != LEGACY_CHART_FLAGS + len(extra):
        return None
    if rendered[LEGACY_CHART_FLAGS:] != extra:
        return None
    user = extra[generated:]
    args = rendered[: len(rendered) - len(user)]
    return {**values, "engine": {**engine, "args": args, "extraArgs": user}}


def join_engine(values: dict) -> dict | None:
    """The reverse: the generated flags back in front of the user's in extraArgs, no engine.args."""
    engine = values.get("engine")
    if not isinstance(engine, dict) or "args" not in engine:
        return None
    engine = dict(engine)
    args = list(engine.pop("args") or [])
    engine["extraArgs"] = args[LEGACY_CHART_FLAGS:] + list(engine.get("extraArgs") or [])
    return {**values, "engine": engine}


def _runtime_revisions(apps):
    Deployment = apps.get_model("deployments", "Deployment")
    Revision = apps.get_model("clusters", "Revision")
    for deployment in Deployment.objects.exclude(release=None).only("id", "release_id", "placement"):
        runtime = (deployment.placement or {}).get("runtime") or {}
        for revision in Revision.objects.filter(release_id=deployment.release_id):
            yield revision, runtime


def forwards(apps, schema_editor) -> None:
    for revision, runtime in _runtime_revisions(apps):
        values = split_legacy_engine(revision.values or {}, revision.manifest, runtime)
        if values is not None:
            revision.values = values
            revision.save(update_fields=["values"])


def backwards(apps, schema_editor) -> None:
    for revision, _ in _runtime_revisions(apps):
        values = join_engine(revision.values or {})
        if values is not None:
            revision.values = values
            revision.save(update_fields=["values"])


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0004_deploymentevent_kind_length"),
        ("clusters", "0002_health_schedule"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
