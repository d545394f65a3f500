# Two zuplo-sts mappings in AWS, broker mode: the IAM OIDC provider for STS_BROKER_ISSUER and one
# role per mapping (../../modules/aws). Copy terraform.tfvars.example to terraform.tfvars, edit
# it, then terraform init && terraform apply; `terraform output -raw mappings_document` is a file
# for `sts mappings apply`.

terraform {
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.81"
    }
  }
}

provider "aws" {
  region = var.region
}

module "zuplo_sts" {
  source   = "../../modules/aws"
  issuer   = var.broker_issuer
  mappings = var.mappings
}
