"""API views of the clusters app."""
