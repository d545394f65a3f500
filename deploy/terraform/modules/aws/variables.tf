variable "issuer" {
  description = "The issuer AWS trusts: zuplo-sts's STS_BROKER_ISSUER (token = \"broker\"), or the Zuplo issuer (token = \"zuplo\"). https, no trailing slash."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s?#]+[^/]$", var.issuer))
    error_message = "An https URL without a trailing slash, query or fragment."
  }
}

variable "token" {
  description = "What AWS receives, the mappings' aws.token: \"broker\" (a token zuplo-sts signs, sub mapping:<name>) or \"zuplo\" (the Zuplo token passed through; each role pins one deployment's sub). Prefer broker: docs/security.md."
  type        = string
  default     = "broker"

  validation {
    condition     = contains(["broker", "zuplo"], var.token)
    error_message = "token is \"broker\" or \"zuplo\"."
  }
}

variable "audience" {
  description = "token = \"zuplo\" only, and required there: the audience the gateways ask Zuplo for (STS_AUDIENCE). Broker tokens for AWS always carry sts.amazonaws.com."
  type        = string
  default     = null

  validation {
    condition     = (var.token == "zuplo") == (var.audience != null)
    error_message = "Set audience exactly when token is \"zuplo\"."
  }
}

variable "oidc_provider_arn" {
  description = "The ARN of an IAM OIDC provider for issuer that already exists in the account (IAM keeps one per issuer URL: a second module instance, or deploy/aws/oidc-provider.yaml). Null: this module creates it."
  type        = string
  default     = null
}

variable "thumbprints" {
  description = "Optional SHA-1 thumbprints of the issuer's TLS certificate chain, for a provider this module creates. Empty: IAM trusts the issuer through its own root certificate store."
  type        = list(string)
  default     = []
}

variable "mappings" {
  description = <<-EOT
    The role mappings, one IAM role each. name, account, project, deployment and
    environment_type are the mapping's (docs/reference.md section 4). role_name defaults to
    zuplo-<name>; policy_arns and policy (an inline JSON policy) are the role's permissions;
    duration_seconds is the mapping's aws.duration_seconds (the role's longest session is at
    least that); session_tags is the mapping's aws.session_tags (token = "broker"). subject is
    required with token = "zuplo" and refused otherwise: the sub (OAuth client id) of the one
    Zuplo deployment that may assume the role.
  EOT
  type = list(object({
    name             = string
    account          = string
    project          = string
    deployment       = optional(string, "*")
    environment_type = optional(string, "*")
    role_name        = optional(string)
    policy_arns      = optional(list(string), [])
    policy           = optional(string)
    duration_seconds = optional(number, 3600)
    session_tags     = optional(bool, true)
    subject          = optional(string)
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
    condition     = alltrue([for m in var.mappings : m.duration_seconds >= 900 && m.duration_seconds <= 43200])
    error_message = "duration_seconds is 900..43200."
  }

  validation {
    condition     = alltrue([for m in var.mappings : can(regex("^[\\w+=,.@-]{1,64}$", coalesce(m.role_name, "zuplo-${m.name}")))])
    error_message = "An IAM role name: at most 64 of [A-Za-z0-9_+=,.@-]. Set role_name when zuplo-<name> is longer."
  }

  # Pass-through: without a pinned sub, any Zuplo deployment of any Zuplo customer could assume
  # the role by calling AssumeRoleWithWebIdentity itself.
  validation {
    condition = alltrue([
      for m in var.mappings : var.token == "zuplo" ? can(regex("^[^\\s*?]+$", m.subject)) : m.subject == null
    ])
    error_message = "With token = \"zuplo\" every mapping pins one exact subject (no wildcard); with token = \"broker\" none does (the role pins mapping:<name>)."
  }
}
