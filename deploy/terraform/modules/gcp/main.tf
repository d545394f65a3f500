# zuplo-sts trust in GCP for a list of role mappings: one workload identity pool and OIDC
# provider for one issuer (created once), and one service account per mapping with the binding
# that lets exactly that mapping impersonate it.
#
# Google maps the token's claims to attributes, so the provider itself refuses tokens of other
# Zuplo accounts (attribute_condition) and bindings can name a subject or an attribute.
#
# token = "broker": zuplo-sts signs a token per upstream call after its mapping decided
# (docs/reference.md section 8): sub mapping:<name>, aud "https:" + this provider's name
# (Google's default allowed audience, so no allowed_audiences), and the verified Zuplo claims as
# account, project, deployment, environment_type and zuplo_sub. Each service account is bound to
# principal://.../subject/mapping:<name>: one mapping, and only it.
#
# token = "zuplo" (pass-through): Google receives the Zuplo token (aud: your audience). Bindings
# name the mapping's Zuplo project (principalSet://.../attribute.project/<project>), or the whole
# pool for project "*"; zuplo-sts's mappings still decide which deployment gets which mapping.

terraform {
  required_version = ">= 1.9"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

locals {
  mappings = { for m in var.mappings : m.name => m }
  accounts = distinct([for m in var.mappings : m.account])

  pool              = google_iam_workload_identity_pool.issuer.name
  provider_resource = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.issuer.name}"

  # Who may act as each mapping's service account.
  members = {
    for name, m in local.mappings : name => (
      var.token == "broker" ? "principal://iam.googleapis.com/${local.pool}/subject/mapping:${name}"
      : m.project == "*" ? "principalSet://iam.googleapis.com/${local.pool}/*"
      : "principalSet://iam.googleapis.com/${local.pool}/attribute.project/${m.project}"
    )
  }

  # Mappings that issue ID tokens for a Cloud Run service (docs/reference.md section 14).
  cloud_run = { for name, m in local.mappings : name => m if m.cloud_run_service != null }

  # The mappings as `sts mappings apply` takes them (docs/reference.md section 4).
  mapping_entries = [
    for name, m in local.mappings : {
      name             = name
      account          = m.account
      project          = m.project
      deployment       = m.deployment
      environment_type = m.environment_type
      gcp = merge(
        {
          workload_identity_provider = local.provider_resource
          service_account            = google_service_account.mapping[name].email
          token                      = var.token
        },
        m.scopes == null ? null : { scopes = m.scopes },
        m.lifetime_seconds == null ? null : { lifetime_seconds = m.lifetime_seconds },
        m.cloud_run_service == null ? null : {
          id_token_audiences = [data.google_cloud_run_v2_service.invoked[name].uri]
        },
      )
    }
  ]
}

resource "google_iam_workload_identity_pool" "issuer" {
  project                   = var.project_id
  workload_identity_pool_id = var.pool_id
  display_name              = "zuplo-sts"
  description               = "Tokens presented by zuplo-sts for its role mappings"
}

resource "google_iam_workload_identity_pool_provider" "issuer" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.issuer.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = var.token == "broker" ? "zuplo-sts broker" : "Zuplo issuer"

  # Broker: no allowed_audiences, so Google accepts exactly
  # https://iam.googleapis.com/<this provider's resource name>, the broker token's aud.
  oidc {
    issuer_uri        = var.issuer
    allowed_audiences = var.token == "broker" ? null : var.audiences
  }

  # google.subject is mapping:<name> (broker; names are at most 63 characters) or the
  # deployment's OAuth client id (pass-through), under Google's 127-byte limit either way.
  attribute_mapping = merge(
    {
      "google.subject"             = "assertion.sub"
      "attribute.account"          = "assertion.account"
      "attribute.project"          = "assertion.project"
      "attribute.deployment"       = "assertion.deployment"
      "attribute.environment_type" = "assertion.environment_type"
    },
    var.token == "broker" ? { "attribute.zuplo_sub" = "assertion.zuplo_sub" } : {},
  )

  # Tokens of any Zuplo account the mappings do not name are refused by Google's STS before any
  # binding is looked at; broker: and only mapping tokens.
  attribute_condition = (
    var.token == "broker"
    ? "assertion.sub.startsWith('mapping:') && assertion.account in ${jsonencode(local.accounts)}"
    : "assertion.account in ${jsonencode(local.accounts)}"
  )
}

resource "google_service_account" "mapping" {
  for_each     = local.mappings
  project      = var.project_id
  account_id   = coalesce(each.value.service_account_id, "zuplo-${each.key}")
  display_name = "zuplo-sts mapping ${each.key}"
}

resource "google_service_account_iam_member" "workload_identity_user" {
  for_each           = local.mappings
  service_account_id = google_service_account.mapping[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = local.members[each.key]
}

# ID tokens for a Cloud Run service. zuplo-sts asks IAM Credentials' generateIdToken with the
# mapping's federated token: the principal that may impersonate the service account needs
# iam.serviceAccounts.getOpenIdToken on it, and the service account needs roles/run.invoker on
# the service.
resource "google_service_account_iam_member" "id_token_creator" {
  for_each           = local.cloud_run
  service_account_id = google_service_account.mapping[each.key].name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = local.members[each.key]
}

data "google_cloud_run_v2_service" "invoked" {
  for_each = local.cloud_run
  project  = var.project_id
  name     = each.value.cloud_run_service
  location = each.value.cloud_run_location
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.cloud_run
  project  = var.project_id
  name     = data.google_cloud_run_v2_service.invoked[each.key].name
  location = data.google_cloud_run_v2_service.invoked[each.key].location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.mapping[each.key].email}"
}
