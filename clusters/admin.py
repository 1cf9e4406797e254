"""Admin of the clusters app."""
