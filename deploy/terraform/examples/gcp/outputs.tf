output "workload_identity_provider" {
  description = "Every mapping's gcp.workload_identity_provider."
  value       = module.zuplo_sts.workload_identity_provider
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply`."
  value       = module.zuplo_sts.mappings_document
}
