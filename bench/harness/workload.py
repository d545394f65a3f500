"""The workload: generated mappings, the identities they bind, tokens and form bodies."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from harness.constants import AUDIENCE, GRANT, ID_TOKEN, MAPPINGS_PER_ACCOUNT, WIPS
from sts.dev.issuer import DevIssuer
from sts.mappings.document import spec_from_dict
from sts.mappings.spec import MappingSpec


def mapping_document(i: int) -> dict[str, Any]:
    """Mapping number ``i``: 8 per account, 4 projects each with a production mapping on every
    deployment and a preview mapping on ``pr-*`` deployments; one in five is GCP."""
    account = f"acct-{i // MAPPINGS_PER_ACCOUNT:05d}"
    slot = i % MAPPINGS_PER_ACCOUNT
    project = f"proj-{slot // 2}"
    production = slot % 2 == 0
    environment = "production" if production else "preview"
    doc: dict[str, Any] = {
        "name": f"m{i:06d}-{project}-{environment}",
        "description": f"bench mapping {i} for {account}/{project}",
        "account": account,
        "project": project,
        "deployment": "*" if production else "pr-*",
        "environment_type": environment,
    }
    if i % 5 == 2:
        gcp: dict[str, Any] = {"workload_identity_provider": WIPS[i % len(WIPS)]}
        if (i // 5) % 3 != 0:
            gcp["service_account"] = service_account(i)
        doc["gcp"] = gcp
    else:
        aws: dict[str, Any] = {
            "role_arn": (
                f"arn:aws:iam::{100000000000 + i // MAPPINGS_PER_ACCOUNT}:role/"
                f"bench-{project}-{environment}"
            ),
            "duration_seconds": 3600,
        }
        if i % 4 == 1:
            aws["session_policy"] = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{account}-{project}/*",
                    }
                ],
            }
        doc["aws"] = aws
    return doc


def service_account(i: int) -> str:
    return f"sa-{i:06d}@acct-{i // MAPPINGS_PER_ACCOUNT:05d}.iam.gserviceaccount.com"


def generate_specs(count: int) -> list[MappingSpec]:
    return [spec_from_dict(mapping_document(i), f"bench[{i}]") for i in range(count)]


def caller_claims(i: int, tag: str) -> dict[str, str]:
    """Claims of a caller that mapping ``i`` (and only it) binds; ``tag`` makes it unique."""
    doc = mapping_document(i)
    prefix = "main" if doc["environment_type"] == "production" else "pr"
    return {
        "sub": f"atcl_bench_{tag}",
        "account": doc["account"],
        "project": doc["project"],
        "deployment": f"{prefix}-{tag}",
        "environment_type": doc["environment_type"],
    }


def form_body(token: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN})


def mint(issuer: DevIssuer, claims: dict[str, str]) -> str:
    """A Zuplo-like ID token for ``AUDIENCE`` with ``claims`` over the issuer's defaults."""
    full = issuer.claims(AUDIENCE)
    full.update(claims)
    return issuer.mint(full)


def mint_bodies(issuer: DevIssuer, mappings: int, count: int, tag: str, seed: int) -> list[str]:
    """``count`` form bodies for distinct identities spread over the mappings."""
    rng = random.Random(seed)
    bodies = []
    for k in range(count):
        claims = caller_claims(rng.randrange(mappings), f"{tag}{k:06d}")
        bodies.append(form_body(mint(issuer, claims)))
    return bodies


def write_mappings_json(path: Path, count: int) -> Path:
    """The first ``count`` mappings as a JSON array of their documents (the file format's
    fields, defaults left out), for the same-work comparator to load and index."""
    path.write_text(json.dumps([mapping_document(i) for i in range(count)]))
    return path
