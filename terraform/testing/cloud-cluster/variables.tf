variable "cluster_name" {
  description = "Name of the (pretend) cluster."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes version reported in the outputs, mirroring the cloud modules."
  type        = string
  default     = "1.31"
}

variable "node_count" {
  description = "Number of pretend node resources created after the control plane."
  type        = number
  default     = 1
}

variable "api_server" {
  description = "API server URL of the existing cluster that plays the provisioned one (e.g. a test control plane)."
  type        = string
}

variable "ca_data" {
  description = "Base64 PEM CA certificate of that API server."
  type        = string
}

variable "bootstrap_token" {
  description = "Short-lived admin token of the cluster, standing in for the cloud identity's token (EKS, Entra ID); BudCluster mints the long-lived credential with it. Pass it as a secret variable (TF_VAR_bootstrap_token): no resource or output uses it, so it never reaches the state."
  type        = string
  default     = ""
  sensitive   = true
}
