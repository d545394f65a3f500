variable "tenant_id" {
  description = "The Entra directory (tenant) id: the mapping's azure.tenant_id."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.tenant_id))
    error_message = "A GUID in lower case, as the Azure portal shows it."
  }
}

variable "subscription_id" {
  description = "The subscription that holds role_scope."
  type        = string
}

variable "application_name" {
  description = "Display name of the app registration zuplo-sts obtains tokens for."
  type        = string
  default     = "zuplo-sts-billing"
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER: where Entra reads its discovery document and JWKS (https)."
  type        = string

  validation {
    condition     = can(regex("^https://[^?#]+[^/]$", var.broker_issuer))
    error_message = "An https URL without a trailing slash, query or fragment."
  }
}

variable "mapping_name" {
  description = "The one zuplo-sts mapping whose broker tokens the credential accepts (subject mapping:<name>)."
  type        = string
  default     = "billing-azure"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,62}$", var.mapping_name))
    error_message = "A mapping name: [a-z0-9][a-z0-9-]{0,62}."
  }
}

variable "role_scope" {
  description = "The Azure scope the app gets its role on, e.g. a resource group id (/subscriptions/<id>/resourceGroups/<name>)."
  type        = string
}

variable "role_definition_name" {
  description = "The built-in or custom role the app gets on role_scope."
  type        = string
  default     = "Reader"
}
