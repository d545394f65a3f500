# zuplo-sts broker mode in Azure: an Entra app registration whose federated identity credential
# trusts zuplo-sts's own issuer (STS_BROKER_ISSUER) for exactly one mapping, and a role for the
# app on one Azure scope.
#
# zuplo-sts signs a token per upstream call after its mapping decided (docs/reference.md
# sections 8 and 9): iss is STS_BROKER_ISSUER, sub is mapping:<name>, aud is
# api://AzureADTokenExchange. Entra matches all three exactly against the credential below, so
# a Zuplo token (another issuer) or another mapping's token (another subject) is refused. One
# credential per mapping, not per deployment: Entra allows 20 per app.

terraform {
  required_version = ">= 1.5"
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

resource "azuread_application" "zuplo_sts" {
  display_name = var.application_name
}

resource "azuread_service_principal" "zuplo_sts" {
  client_id = azuread_application.zuplo_sts.client_id
}

resource "azuread_application_federated_identity_credential" "one_mapping" {
  application_id = azuread_application.zuplo_sts.id
  display_name   = "zuplo-sts-${var.mapping_name}"
  description    = "Broker tokens zuplo-sts signs for its mapping ${var.mapping_name}"
  issuer         = var.broker_issuer
  subject        = "mapping:${var.mapping_name}"
  audiences      = ["api://AzureADTokenExchange"]
}

resource "azurerm_role_assignment" "one_mapping" {
  scope                = var.role_scope
  role_definition_name = var.role_definition_name
  principal_id         = azuread_service_principal.zuplo_sts.object_id
}
