"""Typed readers for environment variables.

Every knob of the service is an environment variable documented in README.md and `.env.sample`; these helpers
keep the parsing (booleans, lists, durations) in one place so a typo fails loudly at start-up instead of being
silently read as the default. The settings `make run` gives its own processes are also written to
``var/make-run.env`` (see below), which settings.py reads, so commands run in another terminal see them too.
"""

from __future__ import annotations

import os
import re

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(RuntimeError):
    """An environment variable holds a value the service cannot use."""


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- the settings `make run` gives its processes -----------------------------------------------------------------
# `make run` (scripts/run.sh) sets a few variables for the processes it starts (BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS,
# so that the loopback devcluster may be reached). A command typed in a second terminal (manage.py check_clusters,
# demo, benchmark) does not inherit them, and would judge the same clusters by other rules. So run.sh writes them
# to var/make-run.env at start and settings.py reads that file: the process environment still wins, the file only
# fills in what the environment does not say.

RUN_SETTINGS_FILE = "make-run.env"
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``NAME=value`` lines of ``path`` (``#`` comments and blank lines skipped); {} when there is no file."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return {}
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f"{path}, line {number}: expected NAME=value")
        values[name] = value
    return values


def apply_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Put the file's variables into the environment where it has none of its own; returns those applied."""
    applied = {name: value for name, value in read_env_file(path).items() if name not in os.environ}
    os.environ.update(applied)
    return applied


def write_env_file(path: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Write the named variables that are set in this environment to ``path`` (0600, replaced atomically), so a
    restart that no longer sets one also forgets it. Returns what was written."""
    values = {name: os.environ[name] for name in names if name in os.environ}
    for name, value in values.items():
        if not _NAME.fullmatch(name) or "\n" in value or "\r" in value:
            raise ConfigError(f"{name} cannot be written to {path}")
    text = "# Written by `make run` at start: the settings it gives its own processes (budcluster_site/env.py).\n"
    text += "".join(f"{name}={value}\n" for name, value in values.items())
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return values


if __name__ == "__main__":  # python -m budcluster_site.env write PATH NAME... (scripts/run.sh)
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "write":
        sys.exit("usage: python -m budcluster_site.env write PATH NAME...")
    write_env_file(sys.argv[2], sys.argv[3:])
