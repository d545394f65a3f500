# zuplo-sts trust in AWS for a list of role mappings: the IAM OIDC provider for one issuer
# (created once, or given by oidc_provider_arn), and one IAM role per mapping.
#
# token = "broker": zuplo-sts verifies the Zuplo token, selects the mapping, then signs a token
# for this one call (docs/reference.md section 8): sub mapping:<name>, aud sts.amazonaws.com and,
# unless the mapping says session_tags = false, the session tags zuplo-account, zuplo-project,
# zuplo-deployment, zuplo-environment-type and zuplo-mapping. Each role admits exactly its
# mapping's sub, and allows sts:TagSession when tags come (AWS refuses them otherwise).
#
# token = "zuplo" (pass-through): AWS receives the Zuplo token. IAM has no condition keys for the
# Zuplo claims account and project, and every Zuplo customer shares the issuer and picks the
# audience, so each role pins the sub of one deployment (validated in variables.tf).

terraform {
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.81: thumbprint_list became optional.
      version = ">= 5.81"
    }
  }
}

locals {
  mappings = { for m in var.mappings : m.name => m }

  client_id    = var.token == "broker" ? "sts.amazonaws.com" : var.audience
  provider_arn = var.oidc_provider_arn != null ? var.oidc_provider_arn : aws_iam_openid_connect_provider.issuer[0].arn
  # IAM's condition keys for a generic OIDC provider are <provider URL>:aud and :sub, the URL
  # being the issuer's host and path: the part of the provider's ARN after "oidc-provider/",
  # whether this module created the provider or was given it.
  issuer_host_path = split("oidc-provider/", local.provider_arn)[1]

  policy_attachments = merge([
    for name, m in local.mappings : {
      for arn in m.policy_arns : "${name} ${arn}" => { mapping = name, policy_arn = arn }
    }
  ]...)

  # The mappings as `sts mappings apply` takes them (docs/reference.md section 4).
  mapping_entries = [
    for name, m in local.mappings : {
      name             = name
      account          = m.account
      project          = m.project
      deployment       = m.deployment
      environment_type = m.environment_type
      aws = merge(
        {
          role_arn         = aws_iam_role.mapping[name].arn
          duration_seconds = m.duration_seconds
          token            = var.token
        },
        var.token == "broker" ? { session_tags = m.session_tags } : null,
      )
    }
  ]
}

resource "aws_iam_openid_connect_provider" "issuer" {
  count           = var.oidc_provider_arn == null ? 1 : 0
  url             = var.issuer
  client_id_list  = [local.client_id]
  thumbprint_list = length(var.thumbprints) > 0 ? var.thumbprints : null
  tags = {
    managed-by = "zuplo-sts"
  }
}

resource "aws_iam_role" "mapping" {
  for_each             = local.mappings
  name                 = coalesce(each.value.role_name, "zuplo-${each.key}")
  description          = "Obtained through the zuplo-sts mapping ${each.key}"
  max_session_duration = max(3600, each.value.duration_seconds)
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = var.token == "broker" ? "OneMapping" : "OneDeployment"
      Effect    = "Allow"
      Principal = { Federated = local.provider_arn }
      Action = (
        var.token == "broker" && each.value.session_tags
        ? ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]
        : ["sts:AssumeRoleWithWebIdentity"]
      )
      Condition = {
        StringEquals = {
          "${local.issuer_host_path}:aud" = local.client_id
          "${local.issuer_host_path}:sub" = var.token == "broker" ? "mapping:${each.key}" : each.value.subject
        }
      }
    }]
  })
  tags = {
    managed-by        = "zuplo-sts"
    zuplo-sts-mapping = each.key
  }
}

resource "aws_iam_role_policy_attachment" "mapping" {
  for_each   = local.policy_attachments
  role       = aws_iam_role.mapping[each.value.mapping].name
  policy_arn = each.value.policy_arn
}

resource "aws_iam_role_policy" "mapping" {
  for_each = { for name, m in local.mappings : name => m if m.policy != null }
  name     = "zuplo-sts-${each.key}"
  role     = aws_iam_role.mapping[each.key].id
  policy   = each.value.policy
}
