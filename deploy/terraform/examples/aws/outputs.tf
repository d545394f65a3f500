output "role_arns" {
  description = "Each mapping's aws.role_arn."
  value       = module.zuplo_sts.role_arns
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply`."
  value       = module.zuplo_sts.mappings_document
}
