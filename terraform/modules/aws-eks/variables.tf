variable "cluster_name" {
  description = "Name of the EKS cluster (also used to name and tag the VPC, subnets and IAM roles)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,99}$", var.cluster_name))
    error_message = "cluster_name must start with a letter and contain only letters, digits and hyphens (max 100)."
  }
}

variable "region" {
  description = "AWS region to create the cluster in, e.g. us-east-1."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and node groups, e.g. \"1.31\"."
  type        = string
  default     = "1.31"
}

variable "vpc_cidr" {
  description = "CIDR block of the new VPC. Public /24 subnets and private /20 subnets are carved from it."
  type        = string
  default     = "10.0.0.0/16"
}

variable "availability_zone_count" {
  description = "Number of availability zones to spread subnets and nodes over (2 to 6)."
  type        = number
  default     = 3

  validation {
    condition     = var.availability_zone_count >= 2 && var.availability_zone_count <= 6
    error_message = "availability_zone_count must be between 2 and 6 (EKS needs subnets in at least two zones)."
  }
}

variable "endpoint_public_access" {
  description = "Whether the Kubernetes API endpoint is reachable from the internet (BudCluster must reach it)."
  type        = bool
  default     = true
}

variable "public_access_cidrs" {
  description = "CIDR blocks allowed to reach the public API endpoint; restrict to BudCluster's egress addresses."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "system_node_pool" {
  description = "The system node group that runs cluster add-ons and BudCluster's own components."
  type = object({
    instance_type = optional(string, "m6i.large")
    ami_type      = optional(string, "AL2023_x86_64_STANDARD")
    min_size      = optional(number, 2)
    max_size      = optional(number, 4)
    desired_size  = optional(number, 2)
    disk_size_gb  = optional(number, 50)
  })
  default = {}

  validation {
    condition = (
      var.system_node_pool.min_size <= var.system_node_pool.desired_size &&
      var.system_node_pool.desired_size <= var.system_node_pool.max_size
    )
    error_message = "system_node_pool must satisfy min_size <= desired_size <= max_size."
  }
}

variable "gpu_node_pools" {
  description = <<-EOT
    Optional GPU node groups. Each: name, instance_type (e.g. g5.xlarge, p4d.24xlarge), min/max/desired
    size, ami_type (AL2023_x86_64_NVIDIA ships the NVIDIA driver and container toolkit; BOTTLEROCKET_x86_64_NVIDIA
    also works), disk size, capacity_type (ON_DEMAND or SPOT), extra node labels, and taints (effect
    NoSchedule, PreferNoSchedule or NoExecute). By default GPU nodes carry the taint
    nvidia.com/gpu=present:NoSchedule so only workloads that ask for GPUs land there.
  EOT
  type = list(object({
    name          = string
    instance_type = string
    ami_type      = optional(string, "AL2023_x86_64_NVIDIA")
    min_size      = optional(number, 0)
    max_size      = optional(number, 1)
    desired_size  = optional(number, 1)
    disk_size_gb  = optional(number, 200)
    capacity_type = optional(string, "ON_DEMAND")
    labels        = optional(map(string), {})
    taints = optional(list(object({
      key    = string
      value  = optional(string)
      effect = string
    })), [{ key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }])
  }))
  default = []

  validation {
    condition     = length(distinct([for pool in var.gpu_node_pools : pool.name])) == length(var.gpu_node_pools)
    error_message = "gpu_node_pools names must be unique."
  }

  validation {
    condition     = alltrue([for pool in var.gpu_node_pools : pool.min_size <= pool.desired_size && pool.desired_size <= pool.max_size])
    error_message = "Every GPU node pool must satisfy min_size <= desired_size <= max_size."
  }

  validation {
    condition = alltrue(flatten([
      for pool in var.gpu_node_pools : [for taint in pool.taints : contains(["NoSchedule", "PreferNoSchedule", "NoExecute"], taint.effect)]
    ]))
    error_message = "Taint effect must be NoSchedule, PreferNoSchedule or NoExecute."
  }
}

variable "tags" {
  description = "Extra AWS tags for every resource."
  type        = map(string)
  default     = {}
}
