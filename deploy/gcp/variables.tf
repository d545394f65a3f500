variable "project_id" {
  description = "The GCP project that holds the workload identity pool and the service account."
  type        = string
}

variable "pool_id" {
  description = "Workload identity pool id."
  type        = string
  default     = "zuplo"
}

variable "provider_id" {
  description = "Workload identity pool provider id."
  type        = string
  default     = "zuplo"
}

variable "issuer_uri" {
  description = "The Zuplo ID token issuer (the `iss` claim); the same as STS_TRUSTED_ISSUERS."
  type        = string
  default     = "https://dev.zuplo.com/v1/client-auth/auth_o8PUdhKxSTOiB794GWPwLQCD"
}

variable "audiences" {
  description = "Audiences your gateways ask Zuplo for (ZuploServices.getIDToken's `audience`); the same as STS_AUDIENCE."
  type        = list(string)
  default     = ["https://sts.example.com"]

  validation {
    condition     = length(var.audiences) > 0
    error_message = "Name at least one audience."
  }
}

variable "zuplo_account" {
  description = "The Zuplo account whose tokens the provider accepts at all (the attribute condition)."
  type        = string
}

variable "zuplo_project" {
  description = "The Zuplo project whose deployments may impersonate the service account."
  type        = string
}

variable "service_account_id" {
  description = "Account id of the example service account the Zuplo project may impersonate."
  type        = string
  default     = "zuplo-reader"
}

variable "cloud_run_service" {
  description = "Name of a Cloud Run service the Zuplo project may call with the service account's ID tokens (a mapping's gcp.id_token_audiences holds its URL); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = var.cloud_run_service == "" || can(regex("^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$", var.cloud_run_service))
    error_message = "A Cloud Run service name: lower-case letters, digits and hyphens, at most 49 characters, or empty."
  }
}

variable "cloud_run_location" {
  description = "The region of cloud_run_service."
  type        = string
  default     = "us-central1"
}
