output "oidc_provider_arn" {
  description = "The IAM OIDC provider the roles trust (pass it as oidc_provider_arn to another instance for the same issuer)."
  value       = local.provider_arn
}

output "role_arns" {
  description = "Each mapping's aws.role_arn, by mapping name."
  value       = { for name, role in aws_iam_role.mapping : name => role.arn }
}

output "mappings" {
  description = "The mappings as entries of a mappings file: concatenate with other modules' before yamlencode."
  value       = local.mapping_entries
}

output "mappings_document" {
  description = "A mappings file for `sts mappings apply` (or deploy/kubernetes/mappings-configmap.yaml)."
  value       = yamlencode({ mappings = local.mapping_entries })
}
