"""API views of the deployments app."""
