"""API serializers of the clusters app."""
