output "workload_identity_provider" {
  description = "Every mapping's gcp.workload_identity_provider."
  value       = local.provider_resource
}

output "service_accounts" {
  description = "Each mapping's gcp.service_account, by mapping name."
  value       = { for name, account in google_service_account.mapping : name => account.email }
}

output "mappings" {
  description = "The mappings as entries of a mappings file: concatenate with other modules' before yamlencode."
  value       = local.mapping_entries
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply` (or deploy/kubernetes/mappings-configmap.yaml)."
  value       = yamlencode({ mappings = local.mapping_entries })
}
