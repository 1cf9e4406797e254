"""Celery tasks of the provisioning app: thin wrappers (ids in, call a service, record the outcome)."""
