# zuplo-sts broker mode in Azure for a list of role mappings: per mapping, an Entra app
# registration whose one federated identity credential trusts zuplo-sts's own issuer
# (STS_BROKER_ISSUER) for exactly that mapping, its service principal, and its role assignments.
#
# zuplo-sts signs a token per upstream call after its mapping decided (docs/reference.md
# sections 8 and 9): iss is STS_BROKER_ISSUER, sub is mapping:<name>, aud is
# api://AzureADTokenExchange. Entra matches all three exactly against the credential, so a Zuplo
# token (another issuer) or another mapping's token (another subject) is refused. There is no
# per-tenant piece to create: the issuer is trusted credential by credential. One app per mapping
# keeps each mapping's roles apart (and far inside Entra's 20 credentials per app).

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

locals {
  mappings = { for m in var.mappings : m.name => m }

  role_assignments = merge([
    for name, m in local.mappings : {
      for role in m.roles : "${name} ${role.role_definition_name} ${role.scope}" => merge(role, { mapping = name })
    }
  ]...)

  # The mappings as `sts mappings apply` takes them (docs/reference.md section 9).
  mapping_entries = [
    for name, m in local.mappings : {
      name             = name
      account          = m.account
      project          = m.project
      deployment       = m.deployment
      environment_type = m.environment_type
      azure = merge(
        {
          tenant_id = var.tenant_id
          client_id = azuread_application.mapping[name].client_id
          token     = "broker"
        },
        m.scopes == null ? null : { scopes = m.scopes },
      )
    }
  ]
}

resource "azuread_application" "mapping" {
  for_each     = local.mappings
  display_name = coalesce(each.value.application_name, "zuplo-sts-${each.key}")
}

resource "azuread_service_principal" "mapping" {
  for_each  = local.mappings
  client_id = azuread_application.mapping[each.key].client_id
}

resource "azuread_application_federated_identity_credential" "mapping" {
  for_each       = local.mappings
  application_id = azuread_application.mapping[each.key].id
  display_name   = "zuplo-sts-${each.key}"
  description    = "Broker tokens zuplo-sts signs for its mapping ${each.key}"
  issuer         = var.broker_issuer
  subject        = "mapping:${each.key}"
  audiences      = ["api://AzureADTokenExchange"]
}

resource "azurerm_role_assignment" "mapping" {
  for_each             = local.role_assignments
  scope                = each.value.scope
  role_definition_name = each.value.role_definition_name
  principal_id         = azuread_service_principal.mapping[each.value.mapping].object_id
}
