"""``sts demo``: one complete exchange on embedded defaults, everything on 127.0.0.1.

Starts a development Zuplo-like issuer, an AWS STS emulator (moto, server mode, behind the IAM
OIDC checks of :mod:`sts.dev.aws_iam` for every role: it knows one role and one OIDC provider),
the project's GCP STS + IAM Credentials and Azure (Microsoft Entra) emulators and ``sts serve`` in
broker mode on a throw-away SQLite database; applies example mappings; exchanges one ID token for
AWS credentials, a GCP access token and an Azure access token over real HTTP. The clouds trust
only the service's own issuer (docs/reference.md section 8) and verify its broker tokens through
its discovery document, as AWS, Google and Entra would; the demo shows the claims and session
tags they received, that AWS refuses the Zuplo token presented directly, and uses the AWS
credentials once. Secrets are shown masked.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import requests

from sts.dev.serving import free_port, sts_serve_process
from sts.protocol import AWS_BROKER_AUDIENCE, ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE

if TYPE_CHECKING:
    from sts.dev.aws_emulator import AwsEmulator
    from sts.dev.entra_emulator import EntraEmulator
    from sts.dev.gcp_emulator import GcpEmulator
    from sts.dev.issuer import DevIssuer

DEMO_AUDIENCE = "https://sts.demo.localhost"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
SERVICE_ACCOUNT = "reader@demo-project.iam.gserviceaccount.com"
CLOUD_RUN_URL = "https://orders-abc123-uc.a.run.app"
ROLE_ARN = "arn:aws:iam::123456789012:role/orders-api"
AZURE_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AZURE_CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"

MAPPINGS = f"""\
mappings:
  - name: orders-prod
    description: Orders API in production reads its S3 bucket
    account: my-account
    project: my-project
    environment_type: production
    aws:
      role_arn: {ROLE_ARN}
      duration_seconds: 3600
  - name: analytics-gcp
    description: Analytics reads BigQuery through a service account
    account: my-account
    project: my-project
    gcp:
      workload_identity_provider: {WIP}
      service_account: {SERVICE_ACCOUNT}
      scopes: [https://www.googleapis.com/auth/cloud-platform]
      id_token_audiences: [{CLOUD_RUN_URL}]
  - name: billing-azure
    description: Billing manages its Azure resources through an app registration
    account: my-account
    project: my-project
    azure:
      tenant_id: {AZURE_TENANT}
      client_id: {AZURE_CLIENT}
      scopes: [https://management.azure.com/.default]
"""


def _trust_policy(provider_arn: str, host_path: str) -> dict[str, Any]:
    """The role of deploy/aws/mapping-role.yaml (Trust=mapping): only mapping orders-prod's broker
    tokens, for one Zuplo account's session tags."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": {
                        f"{host_path}:aud": AWS_BROKER_AUDIENCE,
                        f"{host_path}:sub": "mapping:orders-prod",
                        "aws:RequestTag/zuplo-account": "my-account",
                    }
                },
            }
        ],
    }


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: for display (the clouds verified it)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 3))
    return decoded


def _show_broker_token(token: str) -> None:
    claims = _claims(token)
    for name in ("iss", "sub", "aud"):
        _detail(name, str(claims[name]))
    _detail("jti", _mask(str(claims["jti"]), 6))
    _detail("exp - iat", f"{claims['exp'] - claims['iat']} s")
    for name in ("account", "project", "deployment", "environment_type", "zuplo_sub"):
        _detail(name, str(claims[name]))
    tags = claims.get("https://aws.amazon.com/tags")
    if tags:
        for key, values in tags["principal_tags"].items():
            _detail(f"tag {key}", ", ".join(values))


def _mask(secret: str | None, keep: int = 4) -> str:
    if not secret:
        return "-"
    return f"{secret[:keep]}…{secret[-keep:]} ({len(secret)} chars)"


def _step(text: str) -> None:
    click.echo(click.style("▸ ", fg="cyan", bold=True) + text)


def _ok(text: str) -> None:
    click.echo(click.style("  ✓ ", fg="green", bold=True) + text)


def _detail(label: str, value: str) -> None:
    click.echo(f"    {click.style(f'{label:<26}', dim=True)} {value}")


def _post(url: str, token: str, audience: str, **fields: str) -> requests.Response:
    """``POST /token`` as a gateway sends it, for the mapping ``audience``."""
    return requests.post(
        url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
            "subject_token": token,
            "subject_token_type": ID_TOKEN_TYPE,
            "audience": audience,
            **fields,
        },
        timeout=30,
    )


def _exchange(url: str, token: str, audience: str, **fields: str) -> dict[str, Any]:
    response = _post(url, token, audience, **fields)
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise click.ClickException(
            f"exchange failed: {response.status_code} {body.get('error')}: "
            f"{body.get('error_description')}"
        )
    return body


def _run_sts(env: dict[str, str], *args: str) -> str:
    """``sts ARGS`` in the service's environment (the operator's command line); its output."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sts", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise click.ClickException(f"sts {args[0]} {args[1]} failed: {done.stderr.strip()}")
    return done.stdout


def _revoke(env: dict[str, str], deployment: str) -> str:
    out = _run_sts(
        env,
        "revoke",
        "add",
        "--account",
        "my-account",
        "--deployment",
        deployment,
        "--reason",
        "demo: a compromised deployment",
        "--actor",
        "demo",
    )
    return out.splitlines()[0].removeprefix("revoked: ")


def _until_refused(url: str, token: str, audience: str, within: float = 10.0) -> float:
    """Seconds until ``token`` is refused as revoked (the service reloads every 2 s)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        response = _post(url, token, audience)
        if response.status_code == 400 and response.json().get("error_description") == (
            "identity revoked"
        ):
            return time.monotonic() - started
        time.sleep(0.1)
    raise click.ClickException("the revoked deployment was still served")


@dataclass
class World:
    """What ``sts demo`` and ``sts dev`` start before the service: the issuer, the AWS, GCP and
    Azure (Entra) emulators trusting only the service's own broker issuer (the AWS one knowing
    only :data:`ROLE_ARN`), a migrated SQLite database (absolute URL) with :data:`MAPPINGS`, and
    the service's environment."""

    issuer: DevIssuer
    aws: AwsEmulator
    gcp: GcpEmulator
    entra: EntraEmulator
    env: dict[str, str]
    database_url: str
    diff: str
    mapping_names: list[str] = field(default_factory=list)


def start_world(
    stack: ExitStack,
    emulator: type[AwsEmulator],
    *,
    broker_issuer: str,
    audience: str,
    workdir: Path,
) -> World:
    """Start everything but the service, each stopped by ``stack``."""
    from sts.db import Database
    from sts.dev.entra_emulator import EntraEmulator
    from sts.dev.gcp_emulator import GcpEmulator
    from sts.dev.issuer import DevIssuer
    from sts.mappings.document import parse_document
    from sts.mappings.store import apply_specs

    issuer = stack.enter_context(DevIssuer())
    # An account whose only IAM OIDC provider is the broker issuer and whose only role is
    # ROLE_ARN: any other issuer or role is refused, as real AWS refuses them.
    aws = stack.enter_context(emulator(strict=True))
    provider = aws.iam.add_oidc_provider(broker_issuer, [AWS_BROKER_AUDIENCE])
    aws.iam.set_trust_policy(ROLE_ARN, _trust_policy(provider.arn, provider.url))
    gcp = stack.enter_context(GcpEmulator())
    # Google's default audience; keys through the issuer's discovery document.
    gcp.add_provider(WIP, broker_issuer, None, [])
    gcp.allow_service_account(SERVICE_ACCOUNT, WIP)
    entra = stack.enter_context(EntraEmulator())
    entra.add_tenant(AZURE_TENANT)
    entra.add_application(AZURE_TENANT, AZURE_CLIENT)
    entra.add_federated_credential(
        AZURE_TENANT, AZURE_CLIENT, issuer=broker_issuer, subject="mapping:billing-azure"
    )

    # Absolute: the URL is printed for commands run from any directory (sts explain, revoke).
    database_url = f"sqlite:///{(workdir / 'sts.db').resolve()}"
    database = Database(database_url)
    try:
        database.upgrade()
        specs = parse_document(MAPPINGS, "demo-mappings.yaml")
        with database.session() as session:
            diff = apply_specs(
                session, specs, prune=False, dry_run=False, actor="demo", source="demo"
            )
    finally:
        database.dispose()
    env = {
        **os.environ,
        "STS_DATABASE_URL": database_url,
        "STS_AUDIENCE": audience,
        "STS_TRUSTED_ISSUERS": issuer.url,
        "STS_ALLOW_HTTP_LOOPBACK": "true",
        "STS_AWS_ENDPOINT_URL": aws.endpoint_url,
        "STS_GCP_STS_URL": gcp.sts_url,
        "STS_GCP_IAM_CREDENTIALS_URL": gcp.iam_url,
        "STS_AZURE_AUTHORITY_URL": entra.authority_url,
        "STS_LOG_FORMAT": "json",
        "STS_BROKER_ISSUER": broker_issuer,
        "STS_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32))
        .decode()
        .rstrip("="),
    }
    for name in ("STS_REDIS_URL", "STS_CACHE_ENCRYPTION_KEY", "STS_SIGNING_KMS_KEY_IDS"):
        env.pop(name, None)
    names = [spec.name for spec in specs]
    return World(issuer, aws, gcp, entra, env, database_url, diff.render(), names)


def run_demo() -> int:
    """Run the demonstration; 0 when every exchange succeeded."""
    try:
        from sts.dev.aws_emulator import AwsEmulator
    except ImportError:
        click.echo(
            "error: sts demo needs the AWS emulator: pip install 'zuplo-sts[demo]'", err=True
        )
        return 1
    from sts.db import Database

    started = time.monotonic()
    click.echo(
        click.style("zuplo-sts demo", bold=True) + " — a complete exchange, all on 127.0.0.1\n"
    )
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sts-demo-")))

        # The service's own URL is the broker issuer the clouds trust (reference section 8).
        port = free_port()
        broker_issuer = f"http://127.0.0.1:{port}"

        _step("Starting the outside world")
        world = start_world(
            stack, AwsEmulator, broker_issuer=broker_issuer, audience=DEMO_AUDIENCE, workdir=workdir
        )
        issuer, aws, gcp, entra = world.issuer, world.aws, world.gcp, world.entra
        _ok(f"Zuplo-like issuer        {issuer.url}")
        _ok(f"AWS STS emulator (moto)  {aws.endpoint_url}")
        _detail("IAM OIDC provider", f"{broker_issuer} (client ID {AWS_BROKER_AUDIENCE})")
        _detail("role trusts", "sub mapping:orders-prod, tag zuplo-account my-account")
        _detail("other roles", "none: AccessDenied, as AWS answers for a role it does not have")
        _ok(f"GCP STS + IAM emulator   {gcp.iam_url}")
        _detail("pool provider issuer", broker_issuer)
        _ok(f"Azure (Entra) emulator   {entra.authority_url}")
        _detail("federated credential", f"issuer {broker_issuer}, subject mapping:billing-azure")

        _step("Preparing the mapping database (SQLite)")
        for line in world.diff.splitlines():
            _ok(line)
        env, database_url = world.env, world.database_url

        _step("Starting `sts serve` in broker mode (granian, 1 worker)")
        url = stack.enter_context(sts_serve_process(env, port, workdir / "serve.log"))
        _ok(f"ready at {url}, issuer of its own")
        jwks = requests.get(url + "/.well-known/jwks.json", timeout=10).json()
        _detail("signing keys published", ", ".join(key["kid"][:12] + "…" for key in jwks["keys"]))

        _step("A gateway asks Zuplo for an ID token")
        token = issuer.mint(audience=DEMO_AUDIENCE, deployment="orders-api-main-53c4947")
        claims = issuer.claims(audience=DEMO_AUDIENCE, deployment="orders-api-main-53c4947")
        for name in ("account", "project", "deployment", "environment_type", "aud"):
            _detail(name, str(claims[name]))
        _detail("token", _mask(token, 10))

        _step("Exchange 1: POST /token, audience=orders-prod  →  AWS")
        aws_body = _exchange(url, token, "orders-prod")
        creds = aws_body["aws_credentials"]
        _ok(f"mapping {aws_body['mapping']}, expires in {aws_body['expires_in']} s")
        _detail("AccessKeyId", _mask(creds["AccessKeyId"]))
        _detail("SecretAccessKey", _mask(creds["SecretAccessKey"]))
        _detail("SessionToken", _mask(creds["SessionToken"], 6))
        _detail("Expiration", creds["Expiration"])
        sent = aws.requests[-1]
        _detail("AWS saw RoleSessionName", str(sent.role_session_name))
        _ok("AWS received a broker token, not the Zuplo token:")
        _show_broker_token(sent.web_identity_token or "")

        import boto3

        identity = boto3.client(
            "sts",
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        ).get_caller_identity()
        _ok(f"used them: sts:GetCallerIdentity says {identity['Arn']}")

        _step("Anyone with a Zuplo token calls AWS directly, without zuplo-sts")
        from botocore import UNSIGNED
        from botocore.config import Config
        from botocore.exceptions import ClientError

        direct = boto3.client(
            "sts",
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            config=Config(signature_version=UNSIGNED),
        )
        try:
            direct.assume_role_with_web_identity(
                RoleArn=ROLE_ARN, RoleSessionName="direct", WebIdentityToken=token
            )
        except ClientError as exc:
            _ok(f"refused: {exc.response['Error']['Code']} (the role trusts only zuplo-sts)")
        else:
            raise click.ClickException("AWS accepted the Zuplo token: the trust is too wide")

        _step("Exchange 2: POST /token, audience=analytics-gcp  →  GCP")
        gcp_body = _exchange(url, token, "analytics-gcp")
        _ok(f"mapping {gcp_body['mapping']}, expires in {gcp_body['expires_in']} s")
        _detail("access_token", _mask(gcp_body["access_token"], 6))
        _detail("scope", gcp_body.get("scope", "-"))
        _detail("GCP saw", ", ".join(sorted({r.path.rsplit("/", 1)[-1] for r in gcp.requests})))
        exchanged = next(r for r in gcp.requests if r.path.endswith("/token"))
        _ok("GCP received a broker token for its provider's default audience:")
        _show_broker_token(str(exchanged.body["subject_token"]))

        _step("Exchange 2b: an ID token for a Cloud Run URL  →  GCP generateIdToken")
        id_body = _exchange(
            url,
            token,
            "analytics-gcp",
            requested_token_type=ID_TOKEN_TYPE,
            resource=CLOUD_RUN_URL,
        )
        import google.auth.transport.requests
        from google.oauth2 import id_token as google_id_token

        verified = google_id_token.verify_token(
            id_body["access_token"],
            google.auth.transport.requests.Request(),
            audience=CLOUD_RUN_URL,
            certs_url=gcp.certs_url,
        )
        _ok(f"issued_token_type {id_body['issued_token_type']}")
        _ok(f"a Cloud Run backend verifies it with google-auth: aud {verified['aud']}")
        _detail("email", str(verified.get("email")))

        _step("Exchange 3: POST /token, audience=billing-azure  →  Azure")
        azure_body = _exchange(url, token, "billing-azure")
        _ok(f"mapping {azure_body['mapping']}, expires in {azure_body['expires_in']} s")
        _detail("access_token", _mask(azure_body["access_token"], 6))
        _detail("scope", azure_body.get("scope", "-"))
        asked = next(r for r in entra.requests if r.path.endswith("/oauth2/v2.0/token"))
        _ok("Entra received a broker token, matched to the app's federated credential:")
        _show_broker_token(str(asked.body["client_assertion"]))

        _step("Exchange 4: the same token again  →  served from the cache")
        aws_calls = len(aws.requests)
        again = _exchange(url, token, "orders-prod")
        same = again["aws_credentials"]["AccessKeyId"] == creds["AccessKeyId"]
        _ok(
            f"same credentials: {'yes' if same else 'no'}; upstream calls to AWS: "
            f"{len(aws.requests) - aws_calls} (expires_in now {again['expires_in']} s)"
        )

        _step("Cut one deployment off: sts revoke add")
        neighbour = issuer.mint(audience=DEMO_AUDIENCE, deployment="orders-api-pr-7")
        _exchange(url, neighbour, "orders-prod")
        revoked_id = _revoke(env, "orders-api-main-53c4947")
        waited = _until_refused(url, token, "orders-prod")
        _ok(f"revocation {revoked_id}: orders-api-main-53c4947 refused after {waited:.1f} s")
        _detail("its answer", "400 unauthorized_client: identity revoked")
        neighbour_body = _exchange(url, neighbour, "orders-prod")
        _ok(f"its neighbour orders-api-pr-7 is still served (mapping {neighbour_body['mapping']})")
        _run_sts(env, "revoke", "lift", revoked_id)
        _ok(f"lifted revocation {revoked_id}: the deployment is served again within 5 s")

        _step("The audit trail (sts audit list): one row per upstream issuance, no secrets")
        from sts.audit import AuditRecorder

        trail = Database(database_url)
        try:
            for event in reversed(AuditRecorder(trail).query(limit=10)):
                digest = (event.credential_sha256 or "")[:12]
                _ok(f"{event.mapping:<14} {event.outcome:<7} {event.target}  sha256 {digest}…")
        finally:
            trail.dispose()

        click.echo("")
        _step("Shutting down")
    click.echo(
        click.style("\nDone", fg="green", bold=True)
        + f" in {time.monotonic() - started:.1f} s: one AWS, one GCP and one Azure exchange over"
        " real HTTP, in broker mode, and one deployment revoked and restored."
    )
    click.echo("Next: README.md shows how to point zuplo-sts at real AWS, GCP and Azure accounts.")
    return 0
