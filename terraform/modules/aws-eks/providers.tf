# Credentials come from the environment of the Terraform process only (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); nothing secret is configured here.
# State backend: none in source. BudCluster's runner adds a `pg` backend at run time; standalone users
# pass their own with `terraform init -backend-config=...` (see ../../README.md).
provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "managed-by"         = "budcluster"
      "budcluster/cluster" = var.cluster_name
    })
  }
}

# A short-lived (15 minute) token for this apply only: it lets the kubernetes provider create the
# BudCluster service account below. It is never part of the kubeconfig output because it expires long
# before BudCluster stops using the cluster.
data "aws_eks_cluster_auth" "this" {
  name = aws_eks_cluster.this.name
}

provider "kubernetes" {
  host                   = aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}
