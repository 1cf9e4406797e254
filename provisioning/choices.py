"""Status and type choices of the provisioning app."""
