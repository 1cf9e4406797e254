"""Node inventory URLs, under a cluster: ``{id}`` is the cluster's id, as in every ``/clusters/{id}/...`` path."""

from django.urls import path

from .views import ClusterDeviceInfo, ClusterNodeList, CollectNodeInfo

urlpatterns = [
    path("clusters/<int:pk>/nodes", ClusterNodeList.as_view(), name="cluster-nodes"),
    path("clusters/<int:pk>/device-info", ClusterDeviceInfo.as_view(), name="cluster-device-info"),
    path(
        "clusters/<int:pk>/collect-node-info",
        CollectNodeInfo.as_view(),
        name="cluster-collect-node-info",
    ),
]
