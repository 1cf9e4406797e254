locals {
  resource_group_name = coalesce(var.resource_group_name, "${var.cluster_name}-rg")
  dns_prefix          = coalesce(var.dns_prefix, var.cluster_name)
  tags = merge(var.tags, {
    "managed-by"         = "budcluster"
    "budcluster-cluster" = var.cluster_name
  })
  gpu_node_pools = { for pool in var.gpu_node_pools : pool.name => pool }
}

resource "azurerm_resource_group" "this" {
  name     = local.resource_group_name
  location = var.location
  tags     = local.tags
}

resource "azurerm_virtual_network" "this" {
  name                = "${var.cluster_name}-vnet"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  address_space       = [var.vnet_cidr]
  tags                = local.tags
}

resource "azurerm_subnet" "nodes" {
  name                 = "nodes"
  resource_group_name  = azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this.name
  address_prefixes     = [cidrsubnet(var.vnet_cidr, 4, 0)]
}

# A user-assigned identity for the control plane, so its network permission can be granted before the
# cluster exists (a system-assigned identity would only appear after creation).
resource "azurerm_user_assigned_identity" "control_plane" {
  name                = "${var.cluster_name}-control-plane"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags
}

resource "azurerm_role_assignment" "control_plane_network" {
  scope                = azurerm_virtual_network.this.id
  role_definition_name = "Network Contributor"
  principal_id         = azurerm_user_assigned_identity.control_plane.principal_id
}

resource "azurerm_kubernetes_cluster" "this" {
  # The requested name, as is: the cluster BudCluster registers is the one the user asked for.
  name                = var.cluster_name
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  dns_prefix          = local.dns_prefix
  kubernetes_version  = var.kubernetes_version

  # No local accounts: the cluster has no static admin certificate, so neither kube_config nor
  # kube_admin_config (attributes Terraform keeps in its state) holds a secret. Entra ID identities are
  # authorized by Azure RBAC (the role assignment below); service accounts, such as the one BudCluster mints
  # its long-lived token for after apply (provisioning/cloud_auth.py), by Kubernetes RBAC.
  local_account_disabled            = true
  role_based_access_control_enabled = true

  azure_active_directory_role_based_access_control {
    tenant_id              = data.azurerm_client_config.current.tenant_id
    azure_rbac_enabled     = true
    admin_group_object_ids = var.admin_group_object_ids
  }

  default_node_pool {
    name                         = "system"
    vm_size                      = var.system_node_pool.vm_size
    os_sku                       = var.system_node_pool.os_sku
    auto_scaling_enabled         = true
    min_count                    = var.system_node_pool.min_count
    max_count                    = var.system_node_pool.max_count
    node_count                   = var.system_node_pool.node_count
    os_disk_size_gb              = var.system_node_pool.os_disk_size_gb
    vnet_subnet_id               = azurerm_subnet.nodes.id
    orchestrator_version         = var.kubernetes_version
    only_critical_addons_enabled = true
    temporary_name_for_rotation  = "systemtmp"
    node_labels                  = { "budcluster.io/pool" = "system" }

    upgrade_settings {
      max_surge = "10%"
    }
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.control_plane.id]
  }

  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    pod_cidr            = var.pod_cidr
    load_balancer_sku   = "standard"
  }

  tags = local.tags

  # The cluster autoscaler owns the node count once the cluster runs.
  lifecycle {
    ignore_changes = [default_node_pool[0].node_count]
  }

  depends_on = [azurerm_role_assignment.control_plane_network]
}

# The principal running this apply (BudCluster's service principal) is cluster admin through Azure RBAC:
# after apply BudCluster asks Entra ID for a short-lived token of that principal for the AKS server
# application and creates its own service account and token with it. Azure role assignments take a few
# minutes to reach the cluster; BudCluster retries until they have.
resource "azurerm_role_assignment" "cluster_admin" {
  scope                = azurerm_kubernetes_cluster.this.id
  role_definition_name = "Azure Kubernetes Service RBAC Cluster Admin"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_kubernetes_cluster_node_pool" "gpu" {
  for_each = local.gpu_node_pools

  name                  = each.key
  kubernetes_cluster_id = azurerm_kubernetes_cluster.this.id
  mode                  = "User"
  vm_size               = each.value.vm_size
  os_sku                = each.value.os_sku
  auto_scaling_enabled  = true
  min_count             = each.value.min_count
  max_count             = each.value.max_count
  node_count            = each.value.node_count
  os_disk_size_gb       = each.value.os_disk_size_gb
  vnet_subnet_id        = azurerm_subnet.nodes.id
  orchestrator_version  = var.kubernetes_version

  node_labels = merge(
    {
      "budcluster.io/pool"        = each.key
      "budcluster.io/accelerator" = "nvidia-gpu"
    },
    each.value.labels,
  )
  node_taints = [for taint in each.value.taints : "${taint.key}=${taint.value}:${taint.effect}"]

  tags = local.tags

  lifecycle {
    ignore_changes = [node_count]
  }
}
