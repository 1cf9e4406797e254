"""Signals of the workflow engine.

``run_finished(sender=Run, run=run)`` is sent once when a run reaches a terminal status, after its final event is
written; apps use it to move their subject's status (e.g. a cluster becomes AVAILABLE when registration succeeds).
"""

from django.dispatch import Signal

run_finished = Signal()

# ``events_committed(sender=Event)`` is sent once after a transaction that wrote outbox events commits
# (``core.events``); the webhooks app wakes its dispatcher on it.
events_committed = Signal()
