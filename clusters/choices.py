"""Status and type choices of the clusters app."""
