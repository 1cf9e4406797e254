locals {
  # EKS spells taint effects differently from Kubernetes.
  eks_taint_effect = {
    NoSchedule       = "NO_SCHEDULE"
    PreferNoSchedule = "PREFER_NO_SCHEDULE"
    NoExecute        = "NO_EXECUTE"
  }
  gpu_node_pools = { for pool in var.gpu_node_pools : pool.name => pool }
}

resource "aws_eks_cluster" "this" {
  name     = var.cluster_name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids              = concat(aws_subnet.private[*].id, aws_subnet.public[*].id)
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.public_access_cidrs
  }

  # Access entries (the EKS API, not the aws-auth ConfigMap) decide who may use the cluster. The IAM identity
  # that runs this apply gets a cluster-admin access entry at creation: BudCluster, holding that identity's
  # credential, signs a short-lived token with it after apply and mints its own service-account token with
  # it (provisioning/cloud_auth.py). The ConfigMap stays readable for tools that still write it.
  access_config {
    authentication_mode                         = "API_AND_CONFIG_MAP"
    bootstrap_cluster_creator_admin_permissions = true
  }

  depends_on = [aws_iam_role_policy_attachment.cluster]
}

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  version         = var.kubernetes_version
  ami_type        = var.system_node_pool.ami_type
  instance_types  = [var.system_node_pool.instance_type]
  disk_size       = var.system_node_pool.disk_size_gb

  scaling_config {
    min_size     = var.system_node_pool.min_size
    max_size     = var.system_node_pool.max_size
    desired_size = var.system_node_pool.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = { "budcluster.io/pool" = "system" }

  # The cluster autoscaler owns desired_size once the cluster runs.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_eks_node_group" "gpu" {
  for_each = local.gpu_node_pools

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = each.key
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  version         = var.kubernetes_version
  ami_type        = each.value.ami_type
  instance_types  = [each.value.instance_type]
  disk_size       = each.value.disk_size_gb
  capacity_type   = each.value.capacity_type

  scaling_config {
    min_size     = each.value.min_size
    max_size     = each.value.max_size
    desired_size = each.value.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = merge(
    {
      "budcluster.io/pool"        = each.key
      "budcluster.io/accelerator" = "nvidia-gpu"
    },
    each.value.labels,
  )

  dynamic "taint" {
    for_each = each.value.taints

    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = local.eks_taint_effect[taint.value.effect]
    }
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}
