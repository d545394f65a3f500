output "client_ids" {
  description = "Each mapping's azure.client_id."
  value       = module.zuplo_sts.client_ids
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply`."
  value       = module.zuplo_sts.mappings_document
}
