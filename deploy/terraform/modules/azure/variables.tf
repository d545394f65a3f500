variable "tenant_id" {
  description = "The Entra directory (tenant) id: every mapping's azure.tenant_id."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.tenant_id))
    error_message = "A GUID in lower case, as the Azure portal shows it."
  }
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER: where Entra reads its discovery document and JWKS (https)."
  type        = string

  validation {
    condition     = can(regex("^https://[^?#]+[^/]$", var.broker_issuer))
    error_message = "An https URL without a trailing slash, query or fragment."
  }
}

variable "mappings" {
  description = <<-EOT
    The role mappings, one app registration each (its service principal gets the roles).
    name, account, project, deployment and environment_type are the mapping's
    (docs/reference.md section 4); scopes its azure.scopes (left out: the service's default,
    Azure Resource Manager). application_name defaults to zuplo-sts-<name>. roles: the role
    assignments of the app, each a role_definition_name (built-in or custom) on a scope
    (e.g. a resource group id, /subscriptions/<id>/resourceGroups/<name>).
  EOT
  type = list(object({
    name             = string
    account          = string
    project          = string
    deployment       = optional(string, "*")
    environment_type = optional(string, "*")
    application_name = optional(string)
    scopes           = optional(list(string))
    roles = optional(list(object({
      scope                = string
      role_definition_name = string
    })), [])
  }))

  validation {
    condition     = alltrue([for m in var.mappings : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", m.name))])
    error_message = "A mapping name: [a-z0-9][a-z0-9-]{0,62}."
  }

  validation {
    condition     = length(distinct([for m in var.mappings : m.name])) == length(var.mappings)
    error_message = "Mapping names are unique."
  }

  validation {
    condition     = alltrue([for m in var.mappings : contains(["production", "preview", "development", "*"], m.environment_type)])
    error_message = "environment_type is production, preview, development or \"*\"."
  }

  validation {
    condition = alltrue([
      for m in var.mappings : m.scopes == null || alltrue([for s in coalesce(m.scopes, []) : endswith(s, "/.default")])
    ])
    error_message = "Each scope is one resource's identifier followed by /.default."
  }
}
