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

# ID tokens for a Cloud Run service (docs/reference.md, "GCP ID tokens": a mapping's
# gcp.id_token_audiences names its URL, the `mapping_snippet` output below). Only with
# cloud_run_service set. zuplo-sts asks IAM Credentials' generateIdToken with the deployment's
# federated token: the same principal set needs iam.serviceAccounts.getOpenIdToken on the
# service account, and the service account needs roles/run.invoker on the service.
resource "google_service_account_iam_member" "zuplo_project_id_tokens" {
  count              = var.cloud_run_service == "" ? 0 : 1
  service_account_id = google_service_account.reader.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo.name}/attribute.project/${var.zuplo_project}"
}

data "google_cloud_run_v2_service" "invoked" {
  count    = var.cloud_run_service == "" ? 0 : 1
  name     = var.cloud_run_service
  location = var.cloud_run_location
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  count    = var.cloud_run_service == "" ? 0 : 1
  name     = data.google_cloud_run_v2_service.invoked[0].name
  location = data.google_cloud_run_v2_service.invoked[0].location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.reader.email}"
}
