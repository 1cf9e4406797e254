"""API serializers of the hardware app."""
