"""API views of the hardware app."""
