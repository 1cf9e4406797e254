"""Status and type choices of the hardware app."""
