"""Celery tasks of the provisioning app.

There are none of its own: provisioning, destroy and the cluster setup/teardown playbooks run as workflow
steps (``provisioning.workflows``) executed by the engine's ``core.execute_step`` task.
"""
