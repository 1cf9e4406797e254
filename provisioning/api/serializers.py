"""API serializers of the provisioning app."""
