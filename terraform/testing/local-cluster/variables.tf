variable "cluster_name" {
  description = "Name of the (pretend) cluster; ends up in the kubeconfig context and resource triggers."
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
  default     = 2
}

variable "resource_delay_seconds" {
  description = "Seconds each resource takes to create (a sleep in a local-exec provisioner); lets tests cancel an apply midway."
  type        = number
  default     = 0
}

variable "api_server" {
  description = "API server URL written into the kubeconfig output (e.g. the devcluster's HTTPS address)."
  type        = string
  default     = "https://127.0.0.1:6443"
}

variable "ca_data" {
  description = "Base64 PEM CA bundle for the API server; empty means the kubeconfig carries no CA data."
  type        = string
  default     = ""
}

variable "token" {
  description = "Bearer token of the cluster; pass it as a secret variable (TF_VAR_token). Not used by any resource or output, so it never reaches the state: BudCluster adds it to the kubeconfig after apply."
  type        = string
  default     = ""
  sensitive   = true
}

variable "echo_env_var" {
  description = "Name of an environment variable whose value the network resource prints while it is created; stands in for a provider that echoes a credential, so tests can prove redaction."
  type        = string
  default     = ""
}
