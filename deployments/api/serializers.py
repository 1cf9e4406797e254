"""API serializers of the deployments app."""
