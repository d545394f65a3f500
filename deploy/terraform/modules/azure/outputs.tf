output "client_ids" {
  description = "Each mapping's azure.client_id, by mapping name."
  value       = { for name, app in azuread_application.mapping : name => app.client_id }
}

output "mappings" {
  description = "The mappings as entries of a mappings file: concatenate with other modules' before yamlencode."
  value       = local.mapping_entries
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply` (or deploy/kubernetes/mappings-configmap.yaml)."
  value       = yamlencode({ mappings = local.mapping_entries })
}
