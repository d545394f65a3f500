output "workload_identity_provider" {
  description = "The mapping's gcp.workload_identity_provider."
  value       = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.zuplo.name}"
}

output "service_account_email" {
  description = "The mapping's gcp.service_account."
  value       = google_service_account.reader.email
}

output "mapping_snippet" {
  description = "A mapping for deploy/kubernetes/mappings-configmap.yaml."
  value = yamlencode({
    name    = "analytics-gcp"
    account = var.zuplo_account
    project = var.zuplo_project
    gcp = {
      workload_identity_provider = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.zuplo.name}"
      service_account            = google_service_account.reader.email
      scopes                     = ["https://www.googleapis.com/auth/cloud-platform"]
      # null (no ID tokens) is read as absent by `sts mappings apply`.
      id_token_audiences = var.cloud_run_service == "" ? null : [data.google_cloud_run_v2_service.invoked[0].uri]
    }
  })
}
