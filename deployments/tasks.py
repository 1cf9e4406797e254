"""Celery tasks of the deployments app: thin wrappers (ids in, call a service, record the outcome)."""
