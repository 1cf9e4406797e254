"""Status and type choices of the deployments app."""
