variable "project_id" {
  description = "The GCP project that holds the workload identity pool, the service accounts and the Cloud Run services named in mappings."
  type        = string
}

variable "issuer" {
  description = "The issuer Google trusts: zuplo-sts's STS_BROKER_ISSUER (token = \"broker\"), or the Zuplo issuer (token = \"zuplo\"). https, no trailing slash."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s?#]+[^/]$", var.issuer))
    error_message = "An https URL without a trailing slash, query or fragment."
  }
}

variable "token" {
  description = "What Google receives, the mappings' gcp.token: \"broker\" (a token zuplo-sts signs, sub mapping:<name>) or \"zuplo\" (the Zuplo token passed through)."
  type        = string
  default     = "broker"

  validation {
    condition     = contains(["broker", "zuplo"], var.token)
    error_message = "token is \"broker\" or \"zuplo\"."
  }
}

variable "audiences" {
  description = "token = \"zuplo\" only, and required there: the audiences the gateways ask Zuplo for (STS_AUDIENCE). Broker tokens carry https: + the provider's name, Google's default audience."
  type        = list(string)
  default     = []

  validation {
    condition     = (var.token == "zuplo") == (length(var.audiences) > 0)
    error_message = "Name the audiences exactly when token is \"zuplo\"."
  }
}

variable "pool_id" {
  description = "Workload identity pool id (4..32 of a-z, 0-9, -)."
  type        = string
  default     = "zuplo-sts"
}

variable "provider_id" {
  description = "Workload identity pool provider id (4..32 of a-z, 0-9, -)."
  type        = string
  default     = "zuplo-sts"
}

variable "mappings" {
  description = <<-EOT
    The role mappings, one service account each. name, account, project, deployment and
    environment_type are the mapping's (docs/reference.md section 4); scopes and
    lifetime_seconds its gcp.scopes and gcp.lifetime_seconds (left out: the service's
    defaults). service_account_id defaults to zuplo-<name> (6..30 characters).
    cloud_run_service names a Cloud Run service (in cloud_run_location) the mapping may call
    with the service account's ID tokens: its URL becomes the mapping's
    gcp.id_token_audiences (docs/reference.md section 14).
  EOT
  type = list(object({
    name               = string
    account            = string
    project            = string
    deployment         = optional(string, "*")
    environment_type   = optional(string, "*")
    service_account_id = optional(string)
    scopes             = optional(list(string))
    lifetime_seconds   = optional(number)
    cloud_run_service  = optional(string)
    cloud_run_location = optional(string, "us-central1")
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
    condition     = alltrue([for m in var.mappings : can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", coalesce(m.service_account_id, "zuplo-${m.name}")))])
    error_message = "A service account id: 6..30 of a-z, 0-9 and -, starting with a letter. Set service_account_id when zuplo-<name> is longer."
  }

  validation {
    condition     = alltrue([for m in var.mappings : m.cloud_run_service == null || can(regex("^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$", m.cloud_run_service))])
    error_message = "A Cloud Run service name: lower-case letters, digits and hyphens, at most 49 characters."
  }

  # Pass-through bindings name a Zuplo project (attribute.project), which two accounts may share:
  # one account per pool keeps another account's project of the same name out.
  validation {
    condition     = var.token == "broker" || length(distinct([for m in var.mappings : m.account])) <= 1
    error_message = "With token = \"zuplo\" every mapping names the same Zuplo account."
  }
}
