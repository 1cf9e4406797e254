"""A virtual environment holding exactly what ``requirements.txt`` installs, built from the test venv in seconds.

The honest check of "everything the service imports is in requirements.txt" is a fresh venv with
``pip install -r requirements.txt`` and nothing else. Measured here: 3 min 55 s and 4 min 4 s for two cold
installs in a row (every wheel downloaded again: the index answers are not cacheable, so pip's HTTP cache stays
empty). That is too slow for every ``make test``, so the environment is assembled instead of downloaded:

1. the requirement closure of ``requirements.txt`` is computed from the installed distributions' metadata
   (``Requires-Dist``, environment markers and extras evaluated as pip does), each pin checked against the
   installed version — a pin the test venv does not honour fails;
2. a new venv (``python -m venv --without-pip``) gets symlinks to those distributions' files only, taken from
   their ``RECORD``s. A directory shared with a distribution outside the closure (a namespace package) is
   entered and its members linked one by one, so no dev-only module leaks in; files a wheel installs outside
   site-packages (scripts, the null provider's data file) are linked at the same place under the new prefix.

What remains unchecked is pip's resolution of ``requirements.txt`` alone (``make test`` resolves it together
with ``requirements-dev.txt``, which includes it); the image build (``pip install -r requirements.txt``) does that.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"


def requirement_lines(path: Path = REQUIREMENTS) -> list[Requirement]:
    """The requirements of a pip requirements file (comments and option lines left out)."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        out.append(Requirement(line))
    return out


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in (extras or {""}) | {""})


def closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """Distributions (by canonical name) that installing ``requirements`` brings, resolved against what is
    installed in this interpreter. Raises AssertionError for a pin the installed version does not satisfy."""
    found: dict[str, md.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    queue = [(req, set()) for req in requirements if _applies(req, set())]
    while queue:
        req, _ = queue.pop()
        name = canonicalize_name(req.name)
        dist = md.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{req} is pinned but {dist.version} is installed: run `make test` (it reinstalls the requirements)"
        )
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if name in found and not new_extras:
            continue
        found[name] = dist
        extras_seen.setdefault(name, set()).update(req.extras)
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if _applies(sub, extras_seen[name]):
                queue.append((sub, set()))
    return found


def _site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def build(target: Path, requirements: list[Requirement] | None = None) -> Path:
    """Create a venv at ``target`` holding only the closure of ``requirements`` (default: requirements.txt);
    returns its python."""
    dists = closure(requirements if requirements is not None else requirement_lines())
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(target)],
        check=True,
        timeout=60,
    )
    src_site = _site_packages(Path(sys.prefix))
    dst_site = _site_packages(target)
    src_prefix = Path(sys.prefix).resolve()

    # Every directory (relative to site-packages) that holds a file of a distribution outside the closure.
    chosen = set(dists)
    foreign_dirs: set[tuple[str, ...]] = set()
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in chosen or not dist.files:
            continue
        for f in dist.files:
            parts = f.parts
            if parts and parts[0] != "..":
                foreign_dirs.update(parts[:i] for i in range(1, len(parts)))

    linked: set[tuple[str, ...]] = set()
    for dist in dists.values():
        for f in dist.files or []:
            parts = f.parts
            if not parts or "__pycache__" in parts:
                continue
            if parts[0] == "..":
                source = (src_site / f).resolve()
                try:
                    rel = source.relative_to(src_prefix)
                except ValueError:
                    continue  # outside the venv (absolute data paths): not part of what a venv install lays out
                dest = target / rel
                if not dest.exists() and source.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.symlink_to(source)
                continue
            # The shortest prefix no foreign distribution shares is linked whole.
            for i in range(1, len(parts) + 1):
                prefix = parts[:i]
                if prefix in linked:
                    break
                if prefix not in foreign_dirs:
                    dest = dst_site.joinpath(*prefix)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if not dest.exists():
                        dest.symlink_to(src_site.joinpath(*prefix))
                    linked.add(prefix)
                    break
    return target / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    """An environment with nothing of the test session in it (no PYTHONPATH, no DJANGO_*/CELERY_* of pytest)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(extra)
    return env
