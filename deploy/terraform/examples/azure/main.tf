# Two zuplo-sts mappings in Azure (broker mode): per mapping an app registration with one
# federated identity credential for STS_BROKER_ISSUER and its role assignments
# (../../modules/azure). Copy terraform.tfvars.example to terraform.tfvars, edit it, then
# terraform init && terraform apply; `terraform output -raw mappings_document` is a file for
# `sts mappings apply`.

terraform {
  required_version = ">= 1.9"
  required_providers {
    azuread = {
      source  = "hashicorp/azuread"
      version = ">= 2.47"
    }
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.90"
    }
  }
}

provider "azuread" {
  tenant_id = var.tenant_id
}

provider "azurerm" {
  features {}
  tenant_id       = var.tenant_id
  subscription_id = var.subscription_id
}

module "zuplo_sts" {
  source        = "../../modules/azure"
  tenant_id     = var.tenant_id
  broker_issuer = var.broker_issuer
  mappings      = var.mappings
}
