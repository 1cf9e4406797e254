"""Domain functions of the provisioning app: the only place its business rules live."""
