"""Celery tasks of the hardware app: thin wrappers (ids in, call a service, record the outcome)."""
