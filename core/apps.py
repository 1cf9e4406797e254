from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared machinery: the workflow engine (runs, steps, events), crypto, the cluster gateway."""

    name = "core"
    verbose_name = "Runs"

    def ready(self) -> None:
        # Workflows register themselves on import; import every app's workflows module so that web, worker and
        # beat processes all know the same declarations.
        from . import checks, workflow  # noqa: F401 - checks registers itself on import

        workflow.autodiscover()
