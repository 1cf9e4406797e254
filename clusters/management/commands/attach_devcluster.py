"""Register the local devcluster as a cluster, or give the existing record the devcluster's new kubeconfig.

The devcluster keeps its state in memory and makes a new CA and token every time it starts, so the kubeconfig
stored at the previous ``make run`` no longer opens it; this command (called by ``scripts/run.sh``) registers
the cluster the first time and replaces the stored kubeconfig (re-verifying it) afterwards. It does not wait.

``--provisioning-target NAME`` also hands a spare virtual cluster of the same devcluster to local provisioning:
its API server, CA and token (from ``<kubeconfig>.d/NAME.yaml``, which ``devcluster serve --names`` writes) go
to ``PROVISIONING_MODULE_VARIABLES_FILE`` (0600, replaced atomically) as the variables of the stand-in module
``terraform/testing/local-cluster``, so a provisioning under ``make run`` "creates" that virtual cluster. The
token is never printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from clusters import services
from clusters.models import Cluster


def module_variables(kubeconfig: Path) -> dict[str, str]:
    """api_server, ca_data and token of a devcluster kubeconfig (one cluster, one token user)."""
    try:
        doc = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
        cluster = doc["clusters"][0]["cluster"]
        variables = {
            "api_server": cluster["server"],
            "ca_data": cluster.get("certificate-authority-data", ""),
            "token": doc["users"][0]["user"]["token"],
        }
    except FileNotFoundError:
        raise CommandError(f"{kubeconfig}: no such file (is the devcluster serving that name?)") from None
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        raise CommandError(f"{kubeconfig}: not a devcluster kubeconfig with a server and a token") from None
    return variables


def write_private_json(path: Path, values: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(values, fh)
    os.replace(tmp, path)


class Command(BaseCommand):
    help = "Register the devcluster kubeconfig as cluster NAME (or refresh its kubeconfig); does not wait."

    def add_arguments(self, parser) -> None:
        parser.add_argument("kubeconfig", help="kubeconfig written by `python -m devcluster serve`")
        parser.add_argument("--name", default="devcluster")
        parser.add_argument(
            "--provisioning-target",
            metavar="VCLUSTER",
            help="also write this virtual cluster's API server, CA and token to "
            "PROVISIONING_MODULE_VARIABLES_FILE (the local provisioning module's variables)",
        )

    def handle(self, *args, kubeconfig: str, name: str, provisioning_target: str | None, **options) -> None:
        path = Path(kubeconfig)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        cluster = Cluster.objects.filter(name=name).first()
        if cluster is None:
            call_command("register_cluster", name, str(path), "--no-wait", stdout=self.stdout)
        else:
            try:
                run = services.replace_kubeconfig(cluster, path.read_bytes())
            except services.RegistrationRefused as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(
                f"cluster {name} (id {cluster.pk}): kubeconfig refreshed; verification run {run.pk}"
            )
        if provisioning_target:
            self._write_module_variables(path, provisioning_target)

    def _write_module_variables(self, kubeconfig: Path, target: str) -> None:
        out = getattr(settings, "PROVISIONING_MODULE_VARIABLES_FILE", "") or ""
        if not out:
            raise CommandError("--provisioning-target needs PROVISIONING_MODULE_VARIABLES_FILE")
        variables = module_variables(kubeconfig.with_name(f"{kubeconfig.stem}.d") / f"{target}.yaml")
        out_path = Path(out) if Path(out).is_absolute() else Path(settings.BASE_DIR) / out
        write_private_json(out_path, variables)
        self.stdout.write(
            f"virtual cluster {target} ({variables['api_server']}) is what local provisioning creates; "
            f"its variables are in {out_path}"
        )
