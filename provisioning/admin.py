"""Admin of the provisioning app."""
