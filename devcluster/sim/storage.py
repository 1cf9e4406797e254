"""Storage: a default StorageClass and a provisioner that binds claims immediately.

`attach()` creates StorageClass `standard` (default-class annotation, Immediate binding, Delete reclaim).
A claim naming no class gets the default (what the DefaultStorageClass admission plugin does); a claim of an
existing class gets a PersistentVolume `pvc-<claim uid>` sized to its request and both are Bound, with the
annotations the real PV controller writes.  A claim of a missing class stays Pending with a
ProvisioningFailed event.  Deleting a claim deletes its volume (reclaimPolicy Delete).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devcluster.sim.objects import now_iso

if TYPE_CHECKING:
    from devcluster.sim.core import Simulation

DEFAULT_CLASS = "standard"
PROVISIONER = "devcluster.local/hostpath"


def default_storage_class() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }


class Storage:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cluster = sim.cluster

    def ensure_default_class(self) -> None:
        if self.cluster.peek("storageclasses.storage.k8s.io", None, DEFAULT_CLASS) is None:
            self.sim.create("storageclasses.storage.k8s.io", default_storage_class())

    def _default_class_name(self) -> str | None:
        for sc in self.cluster.iter_objects("storageclasses.storage.k8s.io"):
            if (sc["metadata"].get("annotations") or {}).get(
                "storageclass.kubernetes.io/is-default-class"
            ) == "true":
                return sc["metadata"]["name"]
        return None

    def reconcile_pvc(self, ns: str, name: str) -> None:
        pvc = self.cluster.get("persistentvolumeclaims", ns, name)
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return
        if (pvc.get("status") or {}).get("phase") == "Bound":
            return
        spec = pvc.setdefault("spec", {})
        if spec.get("volumeName"):
            return  # pre-bound to a volume someone else manages
        class_name = spec.get("storageClassName")
        if class_name is None:
            class_name = self._default_class_name()
            if class_name is None:
                self._pending(
                    pvc,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                return
            spec["storageClassName"] = class_name
        sc = self.cluster.get("storageclasses.storage.k8s.io", None, class_name)
        if sc is None:
            self._pending(pvc, "ProvisioningFailed", f'storageclass.storage.k8s.io "{class_name}" not found')
            return
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        access = spec.get("accessModes") or ["ReadWriteOnce"]
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        if self.cluster.peek("persistentvolumes", None, pv_name) is None:
            self.sim.create(
                "persistentvolumes",
                {
                    "metadata": {
                        "name": pv_name,
                        "annotations": {
                            "pv.kubernetes.io/provisioned-by": sc.get("provisioner", PROVISIONER)
                        },
                    },
                    "spec": {
                        "capacity": {"storage": size},
                        "accessModes": access,
                        "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                        "storageClassName": class_name,
                        "volumeMode": spec.get("volumeMode", "Filesystem"),
                        "hostPath": {
                            "path": f"/var/lib/devcluster/volumes/{pv_name}",
                            "type": "DirectoryOrCreate",
                        },
                        "claimRef": {
                            "apiVersion": "v1",
                            "kind": "PersistentVolumeClaim",
                            "namespace": ns,
                            "name": name,
                            "uid": pvc["metadata"]["uid"],
                        },
                    },
                },
            )
            self.sim.event(
                pvc,
                "ProvisioningSucceeded",
                f"Successfully provisioned volume {pv_name}",
                source=sc.get("provisioner", ""),
            )
        pv = self.cluster.get("persistentvolumes", None, pv_name)
        if pv is not None and (pv.get("status") or {}).get("phase") != "Bound":
            pv["status"] = {"phase": "Bound", "lastPhaseTransitionTime": now_iso()}
            self.sim.write_status("persistentvolumes", pv)
        annotations = pvc["metadata"].setdefault("annotations", {})
        annotations.update(
            {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.beta.kubernetes.io/storage-provisioner": sc.get("provisioner", PROVISIONER),
                "volume.kubernetes.io/storage-provisioner": sc.get("provisioner", PROVISIONER),
            }
        )
        # No pvc-protection finalizer: nothing here would remove it, and a claim stuck Terminating helps no one.
        spec["volumeName"] = pv_name
        spec.setdefault("volumeMode", "Filesystem")
        pvc["metadata"].pop("resourceVersion", None)
        written = self.sim.write("persistentvolumeclaims", pvc)
        if written is None:
            return
        written["status"] = {"phase": "Bound", "accessModes": access, "capacity": {"storage": size}}
        self.sim.write_status("persistentvolumeclaims", written)

    def _pending(self, pvc: dict, reason: str, message: str) -> None:
        if (pvc.get("status") or {}).get("phase") != "Pending":
            pvc["status"] = {"phase": "Pending"}
            pvc["metadata"].pop("resourceVersion", None)
            self.sim.write_status("persistentvolumeclaims", pvc)
            self.sim.event(pvc, reason, message, "Warning", source="persistentvolume-controller")

    def released(self, pvc: dict) -> None:
        """A claim is gone: its dynamically provisioned volume goes too (reclaimPolicy Delete)."""
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name:
            return
        pv = self.cluster.get("persistentvolumes", None, pv_name)
        if pv is None or (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy", "Delete") != "Delete":
            return

        def remove() -> None:
            current = self.cluster.get("persistentvolumes", None, pv_name)
            if current is None:
                return
            if current["metadata"].get("finalizers"):
                current["metadata"]["finalizers"] = []
                current["metadata"].pop("resourceVersion", None)
                self.sim.write("persistentvolumes", current)
            self.sim.delete("persistentvolumes", None, pv_name)

        self.sim.loop.call_soon(remove)

    def unbound_claims(self, pod: dict) -> list[str]:
        """Claims a pod mounts that are missing or not Bound (the scheduler waits for them)."""
        ns = pod["metadata"]["namespace"]
        out = []
        for vol in (pod.get("spec") or {}).get("volumes") or ():
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            pvc = self.cluster.peek("persistentvolumeclaims", ns, claim)
            if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
                out.append(claim)
        return out
