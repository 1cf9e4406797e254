"""Domain functions of the deployments app: the only place its business rules live."""
