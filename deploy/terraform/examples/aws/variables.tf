variable "region" {
  description = "The AWS region of the provider (IAM itself is global)."
  type        = string
  default     = "us-east-1"
}

variable "broker_issuer" {
  description = "zuplo-sts's STS_BROKER_ISSUER."
  type        = string
}

variable "mappings" {
  description = "The role mappings: see the mappings variable of ../../modules/aws."
  type        = any
}
