"""Fixtures for tests on the real control plane: one gpu-mixed control plane for the session."""

from devcluster.real.testing import real_cluster  # noqa: F401  (re-exported session fixture)
