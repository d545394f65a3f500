# Two zuplo-sts mappings in GCP, broker mode: one workload identity pool and provider for
# STS_BROKER_ISSUER, and one service account per mapping (../../modules/gcp); the second mapping
# also gets ID tokens for a Cloud Run service. Copy terraform.tfvars.example to terraform.tfvars,
# edit it, then terraform init && terraform apply; `terraform output -raw mappings_document` is a
# file for `sts mappings apply`.

terraform {
  required_version = ">= 1.9"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project_id
}

module "zuplo_sts" {
  source     = "../../modules/gcp"
  project_id = var.project_id
  issuer     = var.broker_issuer
  mappings   = var.mappings
}
