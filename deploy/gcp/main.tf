# zuplo-sts trust in GCP: a workload identity pool, an OIDC provider for the Zuplo issuer, and a
# service account that one Zuplo project may impersonate.
#
# Unlike AWS IAM, Google maps the Zuplo claims to attributes, so the provider itself can refuse
# tokens of other accounts (attribute_condition) and IAM bindings can name a project
# (principalSet .../attribute.project/NAME). zuplo-sts's mappings still decide which deployment
# gets which mapping; these checks hold even if a mapping is too broad.

terraform {
  required_version = ">= 1.5"
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

resource "google_iam_workload_identity_pool" "zuplo" {
  workload_identity_pool_id = var.pool_id
  display_name              = "Zuplo gateways"
  description               = "Zuplo ID tokens exchanged by zuplo-sts"
}

resource "google_iam_workload_identity_pool_provider" "zuplo" {
  workload_identity_pool_id          = google_iam_workload_identity_pool.zuplo.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = "Zuplo issuer"

  oidc {
    issuer_uri        = var.issuer_uri
    allowed_audiences = var.audiences
  }

  # google.subject is the deployment's OAuth client id (`sub`, at most 127 bytes); the Zuplo
  # claims become attributes that IAM bindings and conditions can name.
  attribute_mapping = {
    "google.subject"             = "assertion.sub"
    "attribute.account"          = "assertion.account"
    "attribute.project"          = "assertion.project"
    "attribute.deployment"       = "assertion.deployment"
    "attribute.environment_type" = "assertion.environment_type"
  }

  # Tokens of any other Zuplo account are refused by Google's STS before any binding is looked at.
  attribute_condition = "assertion.account == '${var.zuplo_account}'"
}

resource "google_service_account" "reader" {
  account_id   = var.service_account_id
  display_name = "Impersonated by Zuplo deployments through zuplo-sts"
}

# Every deployment of one Zuplo project may impersonate the service account (a mapping with
# gcp.service_account). Narrow to production with attribute.environment_type, or to one
# deployment with attribute.deployment, by binding that principalSet instead.
resource "google_service_account_iam_member" "zuplo_project" {
  service_account_id = google_service_account.reader.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo.name}/attribute.project/${var.zuplo_project}"
}
