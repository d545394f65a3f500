variable "tenant_id" {
  description = "The Entra directory (tenant) id."
  type        = string
}

variable "subscription_id" {
  description = "The subscription that holds the scopes of the role assignments."
  type        = string
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER."
  type        = string
}

variable "mappings" {
  description = "The role mappings: see the mappings variable of ../../modules/azure."
  type        = any
}
