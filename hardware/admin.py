"""Admin of the hardware app."""
