from django.urls import path

from .views import ClusterDeviceInfo, ClusterNodeList, CollectNodeInfo

urlpatterns = [
    path("clusters/<int:cluster_pk>/nodes", ClusterNodeList.as_view(), name="cluster-nodes"),
    path("clusters/<int:cluster_pk>/device-info", ClusterDeviceInfo.as_view(), name="cluster-device-info"),
    path(
        "clusters/<int:cluster_pk>/collect-node-info",
        CollectNodeInfo.as_view(),
        name="cluster-collect-node-info",
    ),
]
