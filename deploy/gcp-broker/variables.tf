variable "project_id" {
  description = "The GCP project that holds the workload identity pool and the service account."
  type        = string
}

variable "pool_id" {
  description = "Workload identity pool id."
  type        = string
  default     = "zuplo-sts"
}

variable "provider_id" {
  description = "Workload identity pool provider id."
  type        = string
  default     = "zuplo-sts"
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER: where Google reads its discovery document and JWKS (https)."
  type        = string

  validation {
    condition     = can(regex("^https://[^?#]+[^/]$", var.broker_issuer))
    error_message = "An https URL without a trailing slash, query or fragment."
  }
}

variable "zuplo_account" {
  description = "The Zuplo account whose mapping tokens the provider accepts at all."
  type        = string
}

variable "mapping_name" {
  description = "The zuplo-sts mapping that may impersonate the service account (its name)."
  type        = string
  default     = "analytics-gcp"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,62}$", var.mapping_name))
    error_message = "A mapping name: [a-z0-9][a-z0-9-]{0,62}."
  }
}

variable "service_account_id" {
  description = "Account id of the example service account."
  type        = string
  default     = "zuplo-reader"
}

variable "cloud_run_service" {
  description = "Name of a Cloud Run service the mapping may call with the service account's ID tokens (its gcp.id_token_audiences holds the URL); empty for none."
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
