"""Domain functions of the hardware app: the only place its business rules live."""
