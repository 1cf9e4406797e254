"""Models of the clusters app."""
