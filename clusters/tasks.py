"""Celery tasks of the clusters app: thin wrappers (ids in, call a service, record the outcome)."""
