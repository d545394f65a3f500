variable "project_id" {
  description = "The GCP project that holds the pool, the service accounts and the Cloud Run service."
  type        = string
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER."
  type        = string
}

variable "mappings" {
  description = "The role mappings: see the mappings variable of ../../modules/gcp."
  type        = any
}
