"""Domain functions of the clusters app: the only place its business rules live."""
