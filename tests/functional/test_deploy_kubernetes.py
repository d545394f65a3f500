"""deploy/kubernetes and deploy/Dockerfile, checked offline with the real validators.

- Kubernetes manifests: every object against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict mode: unknown fields are errors), then the properties the operations guide relies on.
- CloudFormation: cfn-lint with zero findings, and the trust policy as IAM will read it.
- Terraform: parsed with python-hcl2; resources, attribute mapping, condition and audiences.
- Dockerfile: no engine here, so its instructions are parsed and the build stage's wheel build is
  run for real on exactly the files the Dockerfile copies.
- The Jobs' commands and the mappings ConfigMap run for real against SQLite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner, Result

from sts.cli import cli
from sts.config import ZUPLO_ISSUER, Settings
from sts.identity.principal import ENVIRONMENT_TYPES
from sts.mappings.document import parse_document

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes minor still in wide support, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a container listens on its own network namespace
SECRET_VARIABLES = {
    "STS_DATABASE_URL",
    "STS_REDIS_URL",
    "STS_CACHE_ENCRYPTION_KEY",
    "STS_KEY_ENCRYPTION_KEY",
}
ISSUER_HOST_PATH = ZUPLO_ISSUER.removeprefix("https://")
# The Zuplo claims that GCP maps to attributes (docs/reference.md section 1).
ENVIRONMENT_CLAIMS = ("account", "project", "deployment", "environment_type")


# ---------------------------------------------------------------------------------------------
# Where the STS_* variables are defined


def variables_read_by_code() -> set[str]:
    """Every STS_* name sts/config.py reads: the ground truth the manifests must cover."""
    return set(re.findall(r'"(STS_[A-Z0-9_]+)"', (ROOT / "sts" / "config.py").read_text()))


def variables_in_table(text: str, heading: str) -> set[str]:
    """The STS_* names in the first column of the Markdown table under ``heading``."""
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(STS_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE))


NOT_YET_BUILT: set[str] = set()


def test_variable_lists_agree() -> None:
    code = variables_read_by_code()
    assert len(code) >= 12
    assert variables_in_table((ROOT / "README.md").read_text(), "## Configuration") == code
    contract = ROOT.parent / "shared" / "CONTRACT.md"
    if contract.exists():  # the contract's copy beside the repository, when present
        contracted = variables_in_table(contract.read_text(), "## 5. Configuration")
        assert code <= contracted
        # What is contracted but not built yet (nothing now: Azure was the last).
        assert contracted - code == NOT_YET_BUILT


# ---------------------------------------------------------------------------------------------
# Kubernetes


def load_manifests() -> dict[str, dict[str, Any]]:
    """``"Kind/name" -> object`` for every YAML document under deploy/kubernetes."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.name)}"
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return load_manifests()


def job_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """A Job's spec, or a CronJob's job template spec."""
    spec: dict[str, Any] = (
        obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    )
    return spec


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job_spec(obj)["template"]["spec"]
    return spec


def sts_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    return dict(container)


def workloads(manifests: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, obj in manifests.items():
        if obj["kind"] in ("Deployment", "Job", "CronJob"):
            yield key, obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(
    manifests: dict[str, dict[str, Any]], version: str
) -> None:
    failures = []
    for key, obj in manifests.items():
        if obj["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            failures.append(f"{key}: {path}: {exc.message}")
    assert failures == []
    validated = {obj["kind"] for obj in manifests.values()} - {"Kustomization"}
    assert validated == {
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "CronJob",
    }


def test_the_validator_is_strict(manifests: dict[str, dict[str, Any]]) -> None:
    """A misspelt field and a mistyped value are refused, so the test above can fail."""
    deployment = json.loads(json.dumps(manifests["Deployment/zuplo-sts"]))
    container = sts_container(deployment)
    pod_spec(deployment)["containers"][0]["readinessProbes"] = container["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = json.loads(json.dumps(manifests["Deployment/zuplo-sts"]))
    deployment["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {
        path.name
        for path in K8S.glob("*.yaml")
        if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml")
    }
    assert set(listed) == on_disk
    # Images named in the kustomization are the ones the workloads use.
    images = {image["name"] for image in kustomization["images"]}
    for _, obj in workloads(load_manifests()):
        assert sts_container(obj)["image"].rsplit(":", 1)[0] in images


def test_deployment_shape(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment/zuplo-sts"]
    spec = deployment["spec"]
    pod = pod_spec(deployment)
    container = sts_container(deployment)
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = container["ports"]
    assert port["containerPort"] == 8000
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]

    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}

    # The arguments are a valid `sts serve` command line (the image's ENTRYPOINT is `sts`).
    assert container["args"][0] == "serve"
    parsed = click_params(container["args"])
    assert (parsed["host"], parsed["port"]) == (ALL_INTERFACES, 8000)


def click_params(args: list[str]) -> dict[str, Any]:
    """Parse ``args`` with the real ``sts`` command tree, without running the command."""
    command: click.Command = cli
    context = click.Context(cli, info_name="sts")
    rest = list(args)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.get_command(context, name)
        assert found is not None, f"no sts command {name!r}"
        command = found
        context = click.Context(command, info_name=name, parent=context)
    params: dict[str, Any] = command.make_context(context.info_name, rest, parent=context).params
    return params


def test_every_sts_variable_comes_from_the_configmap_or_the_secret(
    manifests: dict[str, dict[str, Any]],
) -> None:
    container = sts_container(manifests["Deployment/zuplo-sts"])
    env = {item["name"]: item for item in container["env"]}
    assert {name for name in env if name.startswith("STS_")} == variables_read_by_code()
    assert "envFrom" not in container
    configmap = manifests["ConfigMap/zuplo-sts-config"]["data"]
    secret = manifests["Secret/zuplo-sts-secrets"]["stringData"]
    from_configmap = set()
    for name, item in env.items():
        if not name.startswith("STS_"):
            continue
        source = item["valueFrom"]
        if name in SECRET_VARIABLES:
            ref = source["secretKeyRef"]
            assert ref["name"] == "zuplo-sts-secrets"
            assert ref["key"] == name
            assert name in secret
            # Redis is optional; the database is not.
            assert ref.get("optional", False) is (name != "STS_DATABASE_URL")
        else:
            ref = source["configMapKeyRef"]
            assert ref["name"] == "zuplo-sts-config"
            assert ref["key"] == name
            assert name in configmap
            from_configmap.add(name)
    assert from_configmap == set(configmap)


def test_the_configmap_values_are_accepted_by_the_service(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """The ConfigMap as the container sees it passes the service's own start-up validation."""
    env = dict(manifests["ConfigMap/zuplo-sts-config"]["data"])
    env["STS_DATABASE_URL"] = "postgresql+psycopg://sts@postgres:5432/sts"
    settings = Settings.from_env(env)
    settings.require_audience()
    assert settings.trusted_issuers == (ZUPLO_ISSUER,)
    assert settings.allow_http_loopback is False
    assert settings.aws_endpoint_url is None
    assert settings.log_format == "json"


def test_security_context_of_every_workload(manifests: dict[str, dict[str, Any]]) -> None:
    dockerfile_uid = int(final_stage_user().split(":")[0])
    assert manifests["ServiceAccount/zuplo-sts"]["automountServiceAccountToken"] is False
    seen = []
    for key, obj in workloads(manifests):
        pod = pod_spec(obj)
        container = sts_container(obj)
        assert pod["serviceAccountName"] == "zuplo-sts", key
        assert pod["automountServiceAccountToken"] is False, key
        assert pod["enableServiceLinks"] is False, key
        assert pod["securityContext"]["runAsNonRoot"] is True, key
        assert pod["securityContext"]["runAsUser"] == dockerfile_uid, key
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, key
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, key
        assert context["readOnlyRootFilesystem"] is True, key
        assert context["allowPrivilegeEscalation"] is False, key
        assert context["capabilities"] == {"drop": ["ALL"]}, key
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, key
        # /tmp is the one writable path, and TMPDIR points there.
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], key
        assert {"name": "TMPDIR", "value": "/tmp"} in container["env"], key
        seen.append(key)
    assert len(seen) == 4


def test_service_hpa_pdb_and_network_policy(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment/zuplo-sts"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = sts_container(deployment)["ports"]

    service = manifests["Service/zuplo-sts"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    hpa = manifests["HorizontalPodAutoscaler/zuplo-sts"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "zuplo-sts",
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    pdb = manifests["PodDisruptionBudget/zuplo-sts"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    policy = manifests["NetworkPolicy/zuplo-sts"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {port["containerPort"]}
    assert all(rule["from"] for rule in policy["ingress"])  # never "from anywhere"
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379), ("TCP", 443)}


def test_job_commands_are_real_sts_commands(manifests: dict[str, dict[str, Any]]) -> None:
    upgrade = sts_container(manifests["Job/zuplo-sts-db-upgrade"])
    assert upgrade["args"] == ["db", "upgrade"]
    assert click_params(upgrade["args"]) == {"versions": ()}

    job = manifests["Job/zuplo-sts-mappings-apply"]
    apply = sts_container(job)
    assert apply["args"] == ["mappings", "apply", "/config/mappings.yaml"]
    assert click_params(apply["args"])["file"] == "/config/mappings.yaml"
    # /config/mappings.yaml is the mappings ConfigMap's key, mounted read-only.
    mount = next(m for m in apply["volumeMounts"] if m["mountPath"] == "/config")
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "zuplo-sts-mappings"
    assert volume["configMap"]["items"] == [{"key": "mappings.yaml", "path": "mappings.yaml"}]
    assert "mappings.yaml" in manifests["ConfigMap/zuplo-sts-mappings"]["data"]
    # docs/operations.md applies the migration Job alone with this selector, before the roll.
    migrations = [
        key
        for key, obj in manifests.items()
        if obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        == "migrations"
    ]
    assert migrations == ["Job/zuplo-sts-db-upgrade"]
    assert "-l app.kubernetes.io/component=migrations" in (ROOT / "docs/operations.md").read_text()
    prune = manifests["CronJob/zuplo-sts-audit-prune"]
    assert sts_container(prune)["args"] == ["audit", "prune"]
    assert click_params(sts_container(prune)["args"]) == {"older_than": None, "dry_run": False}
    assert prune["spec"]["concurrencyPolicy"] == "Forbid"
    for key, obj in workloads(manifests):
        if obj["kind"] != "Deployment":
            assert pod_spec(obj)["restartPolicy"] == "Never", key
            (rule,) = job_spec(obj)["podFailurePolicy"]["rules"]
            # Exit 2 (bad configuration or file) fails the Job at once; exit 1 is retried.
            assert rule["action"] == "FailJob"
            assert rule["onExitCodes"] == {
                "containerName": sts_container(obj)["name"],
                "operator": "In",
                "values": [2],
            }


def test_the_mappings_configmap_applies_with_the_jobs_commands(
    manifests: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Run the Jobs' and the CronJob's arguments through `sts` against a real database."""
    document = manifests["ConfigMap/zuplo-sts-mappings"]["data"]["mappings.yaml"]
    specs = parse_document(document, "mappings-configmap.yaml")
    assert {spec.environment_type for spec in specs} <= {*ENVIRONMENT_TYPES, "*"}
    config = tmp_path / "mappings.yaml"
    config.write_text(document)
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("STS_")}
    env["STS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'sts.db'}"
    runner = CliRunner(env=env)

    def sts(args: list[str]) -> Result:
        args = [str(config) if arg == "/config/mappings.yaml" else arg for arg in args]
        return runner.invoke(cli, args, catch_exceptions=False)

    upgrade = sts(sts_container(manifests["Job/zuplo-sts-db-upgrade"])["args"])
    assert upgrade.exit_code == 0, upgrade.output
    applied = sts(sts_container(manifests["Job/zuplo-sts-mappings-apply"])["args"])
    assert applied.exit_code == 0, applied.output
    listed = sts(["mappings", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(item["name"] for item in json.loads(listed.stdout)) == sorted(
        spec.name for spec in specs
    )
    pruned = sts(sts_container(manifests["CronJob/zuplo-sts-audit-prune"])["args"])
    assert pruned.exit_code == 0, pruned.output


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def final_stage_user() -> str:
    users = [arguments for keyword, arguments in stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER"
    return users[-1]


def test_dockerfile_runs_sts_serve_as_a_numeric_non_root_user() -> None:
    build, final = stages()
    assert build[0][1].endswith(" AS build")
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\}", final[0][1])
    base = next(a for k, a in dockerfile_instructions() if k == "ARG" and "PYTHON_IMAGE" in a)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-3]-slim(-\w+)?", base)

    user = final_stage_user()
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0

    keywords = [keyword for stage in stages() for keyword, _ in stage]
    assert "ADD" not in keywords  # COPY only: nothing fetched from a URL or auto-extracted
    final_dict = dict(final)
    assert json.loads(final_dict["ENTRYPOINT"]) == ["sts"]
    command = json.loads(final_dict["CMD"])
    assert click_params(command) | {"workers": 2} == {
        "host": ALL_INTERFACES,
        "port": 8000,
        "workers": 2,
        "threads": 4,
    }
    assert final_dict["EXPOSE"] == str(click_params(command)["port"])

    healthcheck = final_dict["HEALTHCHECK"]
    options, _, check = healthcheck.partition(" CMD ")
    assert re.search(r"--timeout=\d+s", options)
    probe = json.loads(check)
    assert probe[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in probe[2]
    compile(probe[2], "<healthcheck>", "exec")

    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert "TMPDIR=/tmp" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/sts/bin:" in env
    labels = " ".join(arguments for keyword, arguments in final if keyword == "LABEL")
    assert "org.opencontainers.image.title=" in labels


def test_final_stage_has_no_build_tools() -> None:
    _, final = stages()
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    for tool in ("pip ", "apt-get", "gcc", "build-essential", "wheel"):
        assert tool not in runs
    copies = [arguments for keyword, arguments in final if keyword == "COPY"]
    assert copies == ["--from=build /opt/sts /opt/sts"]
    build, _ = stages()
    build_runs = " ".join(arguments for keyword, arguments in build if keyword == "RUN")
    assert "pip uninstall --yes pip" in build_runs  # the venv that ships carries no installer


def build_stage_sources() -> list[str]:
    """The paths the build stage COPYs from the build context (the repository root)."""
    build, _ = stages()
    sources: list[str] = []
    for keyword, arguments in build:
        if keyword == "COPY":
            parts = shlex.split(arguments)
            sources.extend(part.rstrip("/") for part in parts[:-1] if not part.startswith("--"))
    return sources


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [
        line
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert set(build_stage_sources()) <= kept


def test_build_stage_builds_an_installable_wheel(tmp_path: Path) -> None:
    """The build stage's `pip wheel .` on exactly the files the Dockerfile copies."""
    context = tmp_path / "src"
    context.mkdir()
    for source in build_stage_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, context / source)
    (build,) = [a for k, a in stages()[0] if k == "RUN"]
    assert "pip wheel --no-deps --wheel-dir /dist ." in build
    # The image builds in an isolated environment from the registry; here the build backend is
    # the one installed (no network), which must satisfy pyproject's own build requirement.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("zuplo_sts-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "sts = sts.cli:main" in archive.read(entry_points).decode()
    assert "sts/cli.py" in names
    assert "sts/_migrations/env.py" in names
    assert any(n.startswith("sts/_migrations/versions/") for n in names)


def test_the_ingress_exposes_token_and_the_discovery_documents_only(
    manifests: dict[str, dict[str, Any]],
) -> None:
    """Zuplo's hosted gateways call /token over the internet; in broker mode the clouds read
    the two discovery paths at STS_BROKER_ISSUER. Nothing else is public, over TLS only."""
    from sts.api.openapi import DOCUMENT

    ingress = manifests["Ingress/zuplo-sts"]["spec"]
    (rule,) = ingress["rules"]
    paths = rule["http"]["paths"]
    assert {(p["path"], p["pathType"]) for p in paths} == {
        ("/token", "Exact"),
        ("/.well-known/openid-configuration", "Exact"),
        ("/.well-known/jwks.json", "Exact"),
    }
    assert set(DOCUMENT["paths"]) >= {p["path"] for p in paths}
    service = manifests["Service/zuplo-sts"]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in port_names
    (tls,) = ingress["tls"]
    assert tls["hosts"] == [rule["host"]]
    assert tls["secretName"]
