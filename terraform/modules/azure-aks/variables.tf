variable "cluster_name" {
  description = "Name of the AKS cluster, used exactly as given (also the default DNS prefix and resource name prefix)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,61}[a-zA-Z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 2-63 characters of letters, digits, '-' and '_', starting and ending with a letter or digit."
  }
}

variable "location" {
  description = "Azure region to create the cluster in, e.g. eastus."
  type        = string
}

variable "subscription_id" {
  description = "Azure subscription ID. Leave null to take it from ARM_SUBSCRIPTION_ID in the environment."
  type        = string
  default     = null
}

variable "resource_group_name" {
  description = "Resource group to create for the cluster; null means \"<cluster_name>-rg\"."
  type        = string
  default     = null
}

variable "dns_prefix" {
  description = "DNS prefix of the API server FQDN; null means the cluster name."
  type        = string
  default     = null
}

variable "kubernetes_version" {
  description = "Kubernetes version of the control plane and node pools, e.g. \"1.31\"."
  type        = string
  default     = "1.31"
}

variable "vnet_cidr" {
  description = "Address space of the new virtual network; the node subnet is its first /20."
  type        = string
  default     = "10.42.0.0/16"
}

variable "pod_cidr" {
  description = "Pod CIDR of the Azure CNI overlay network (must not overlap the VNet)."
  type        = string
  default     = "192.168.0.0/16"
}

variable "system_node_pool" {
  description = "The default (system) node pool; it runs only critical add-ons and BudCluster's own components."
  type = object({
    vm_size         = optional(string, "Standard_D4s_v5")
    os_sku          = optional(string, "Ubuntu")
    min_count       = optional(number, 2)
    max_count       = optional(number, 4)
    node_count      = optional(number, 2)
    os_disk_size_gb = optional(number, 64)
  })
  default = {}

  validation {
    condition = (
      var.system_node_pool.min_count <= var.system_node_pool.node_count &&
      var.system_node_pool.node_count <= var.system_node_pool.max_count
    )
    error_message = "system_node_pool must satisfy min_count <= node_count <= max_count."
  }
}

variable "gpu_node_pools" {
  description = <<-EOT
    Optional GPU node pools. Each: name (1-12 lowercase letters/digits, an AKS rule), vm_size (e.g.
    Standard_NC24ads_A100_v4, Standard_NC4as_T4_v3), min/max/initial node count, os_sku (node image:
    Ubuntu or AzureLinux; AKS installs the NVIDIA driver on GPU sizes), disk size, extra node labels and
    taints (effect NoSchedule, PreferNoSchedule or NoExecute). By default GPU nodes carry the taint
    nvidia.com/gpu=present:NoSchedule so only workloads that ask for GPUs land there.
  EOT
  type = list(object({
    name            = string
    vm_size         = string
    os_sku          = optional(string, "Ubuntu")
    min_count       = optional(number, 0)
    max_count       = optional(number, 1)
    node_count      = optional(number, 1)
    os_disk_size_gb = optional(number, 200)
    labels          = optional(map(string), {})
    taints = optional(list(object({
      key    = string
      value  = optional(string, "")
      effect = string
    })), [{ key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }])
  }))
  default = []

  validation {
    condition     = alltrue([for pool in var.gpu_node_pools : can(regex("^[a-z][a-z0-9]{0,11}$", pool.name))])
    error_message = "GPU node pool names must be 1-12 lowercase letters or digits, starting with a letter."
  }

  validation {
    condition     = length(distinct([for pool in var.gpu_node_pools : pool.name])) == length(var.gpu_node_pools)
    error_message = "gpu_node_pools names must be unique."
  }

  validation {
    condition     = alltrue([for pool in var.gpu_node_pools : pool.min_count <= pool.node_count && pool.node_count <= pool.max_count])
    error_message = "Every GPU node pool must satisfy min_count <= node_count <= max_count."
  }

  validation {
    condition = alltrue(flatten([
      for pool in var.gpu_node_pools : [for taint in pool.taints : contains(["NoSchedule", "PreferNoSchedule", "NoExecute"], taint.effect)]
    ]))
    error_message = "Taint effect must be NoSchedule, PreferNoSchedule or NoExecute."
  }
}

variable "admin_group_object_ids" {
  description = "Entra ID groups whose members are cluster admins (kubectl through kubelogin). BudCluster needs none: the principal running Terraform is made cluster admin."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Extra Azure tags for every resource."
  type        = map(string)
  default     = {}
}
