output "client_id" {
  description = "The mapping's azure.client_id."
  value       = azuread_application.zuplo_sts.client_id
}

output "mapping_snippet" {
  description = "The mapping the credential names, for deploy/kubernetes/mappings-configmap.yaml."
  value = yamlencode({
    name    = var.mapping_name
    account = "my-account"
    project = "my-project"
    azure = {
      tenant_id = var.tenant_id
      client_id = azuread_application.zuplo_sts.client_id
      scopes    = ["https://management.azure.com/.default"]
      token     = "broker"
    }
  })
}
