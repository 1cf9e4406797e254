"""The cluster lifecycle workflows, composed from the steps of the apps that take part in them.

This is the one place that imports clusters, provisioning and hardware together (as ``urls.py`` composes their
APIs); each app declares its own steps and knows nothing of the apps above it:

``cluster.register``
    clusters: verify connection and permissions → identify platform →
    provisioning: prepare the cluster (Ansible: namespaces, RBAC) →
    clusters: store encrypted credentials → mark available →
    hardware: roll out collectors → wait for them on every node → read nodes and store the inventory.
    Cleanup (on failure or cancel): clusters records why (status ERROR with the reason).

``cluster.delete``
    clusters: uninstall every release BudCluster recorded →
    provisioning: teardown playbook (RBAC, BudCluster's namespace) → Terraform destroy (provisioned clusters) →
    clusters: delete the record.
    Cleanup: clusters records why deletion failed.

Services start them by kind (``core.workflow.get_workflow("cluster.register")``), so no app imports this module.
"""

from __future__ import annotations

from clusters import workflows as clusters
from core.workflow import Workflow
from hardware import workflows as hardware
from provisioning import workflows as provisioning

REGISTER = Workflow(
    kind="cluster.register",
    title="Register cluster",
    steps=[
        *clusters.CONNECT_STEPS,
        *provisioning.SETUP_STEPS,
        *clusters.ACCEPT_STEPS,
        *hardware.COLLECT_STEPS,
    ],
    cleanup=clusters.REGISTER_CLEANUP,
)

DELETE = Workflow(
    kind="cluster.delete",
    title="Delete cluster",
    steps=[
        *clusters.TEARDOWN_STEPS,
        *provisioning.TEARDOWN_STEPS,
        *provisioning.DESTROY_STEPS,
        *clusters.FORGET_STEPS,
    ],
    cleanup=clusters.DELETE_CLEANUP,
)
