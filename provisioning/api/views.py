"""API views of the provisioning app."""
