"""Models of the hardware app."""
