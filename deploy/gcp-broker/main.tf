# zuplo-sts broker mode in GCP: a workload identity pool whose OIDC provider trusts zuplo-sts's
# own issuer (STS_BROKER_ISSUER), and a service account that exactly one mapping may impersonate.
#
# zuplo-sts signs a token per upstream call after its mapping decided (docs/reference.md
# section 8): sub is mapping:<name>, aud is "https:" + this provider's name (Google's default
# allowed audience, so allowed_audiences stays empty), and the verified Zuplo claims travel as
# account, project, deployment, environment_type and zuplo_sub. Google cannot be reached by a
# Zuplo token directly: only tokens zuplo-sts signed verify against its JWKS.

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

resource "google_iam_workload_identity_pool" "zuplo_sts" {
  workload_identity_pool_id = var.pool_id
  display_name              = "zuplo-sts"
  description               = "Tokens signed by zuplo-sts for its role mappings"
}

resource "google_iam_workload_identity_pool_provider" "zuplo_sts" {
  workload_identity_pool_id          = google_iam_workload_identity_pool.zuplo_sts.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = "zuplo-sts broker"

  # No allowed_audiences: Google then accepts exactly
  # https://iam.googleapis.com/<this provider's resource name>, the broker token's aud.
  oidc {
    issuer_uri = var.broker_issuer
  }

  # google.subject is mapping:<name> (well under Google's 127-byte limit: names are at most 63
  # characters); the Zuplo claims become attributes that bindings and conditions can name.
  attribute_mapping = {
    "google.subject"             = "assertion.sub"
    "attribute.account"          = "assertion.account"
    "attribute.project"          = "assertion.project"
    "attribute.deployment"       = "assertion.deployment"
    "attribute.environment_type" = "assertion.environment_type"
    "attribute.zuplo_sub"        = "assertion.zuplo_sub"
  }

  # Only mapping tokens of one Zuplo account are accepted at all.
  attribute_condition = "assertion.sub.startsWith('mapping:') && assertion.account == '${var.zuplo_account}'"
}

resource "google_service_account" "reader" {
  account_id   = var.service_account_id
  display_name = "Impersonated through one zuplo-sts mapping"
}

# One mapping, and only it, may impersonate the service account: the binding names the
# subject mapping:<name>. To share one service account by project instead, bind
# principalSet://iam.googleapis.com/<pool>/attribute.project/<project>.
resource "google_service_account_iam_member" "one_mapping" {
  service_account_id = google_service_account.reader.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo_sts.name}/subject/mapping:${var.mapping_name}"
}

# ID tokens for a Cloud Run service (docs/reference.md, "GCP ID tokens": the mapping's
# gcp.id_token_audiences names its URL, the `mapping_snippet` output below). Only with
# cloud_run_service set. zuplo-sts asks IAM Credentials' generateIdToken with the mapping's
# federated token: the same one principal needs iam.serviceAccounts.getOpenIdToken on the
# service account, and the service account needs roles/run.invoker on the service.
resource "google_service_account_iam_member" "one_mapping_id_tokens" {
  count              = var.cloud_run_service == "" ? 0 : 1
  service_account_id = google_service_account.reader.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo_sts.name}/subject/mapping:${var.mapping_name}"
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
