"""Fixtures for the devcluster tests: one emulated API server for the whole session."""

from devcluster.testing import devcluster  # noqa: F401  (re-exported session fixture)
