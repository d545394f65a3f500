"""deploy/kubernetes, deploy/Dockerfile and constraints.txt, checked offline with the real tools.

- Kubernetes: every overlay, and the base with every combination of the components, rendered by
  `kubectl kustomize`; every object validated against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict mode: unknown fields are errors) for two Kubernetes versions, then
  the properties the operations guide relies on. The containers' environment, as a pod would see
  it, passes the service's own start-up validation.
- The init container's, the CronJob's and the mappings file's commands run for real against
  SQLite.
- Dockerfile: no engine here, so its instructions are parsed and the build stage's wheel build is
  run for real on exactly the files the Dockerfile copies.
- constraints.txt: pins everything the dev install brings in, and every installer uses it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner, Result
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sts.cli import cli
from sts.config import ZUPLO_ISSUER, ConfigError, Settings
from sts.identity.principal import ENVIRONMENT_TYPES
from sts.mappings.document import parse_document
from sts.mappings.spec import MappingSpec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
LOCK = ROOT / "constraints.txt"
# The oldest Kubernetes minor still in wide support, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a container listens on its own network namespace
SECRET_NAME = "zuplo-sts-secrets"
SECRET_VARIABLES = {
    "STS_DATABASE_URL",
    "STS_REDIS_URL",
    "STS_CACHE_ENCRYPTION_KEY",
    "STS_KEY_ENCRYPTION_KEY",
}
# The mappings file the service keeps the database equal to (docs/reference.md section 13).
MAPPINGS_FILE_VARIABLE = "STS_MAPPINGS_FILE"
# The optional pieces an overlay picks; postgresql is the one every deployable overlay needs.
COMPONENTS = ("postgresql", "redis", "kms", "ingress")
# What the secretKeyRefs resolve to when the test plays the kubelet: valid, never real.
SECRET_VALUES = {
    "STS_DATABASE_URL": "postgresql+psycopg://sts@postgres:5432/sts",
    "STS_REDIS_URL": "rediss://redis:6379/0",
    "STS_CACHE_ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(range(32))).decode(),
    "STS_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(range(32, 64))).decode(),
}
TEST_KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TEST_IMAGE = {"name": "zuplo-sts", "newName": "registry.example/zuplo-sts", "newTag": "1.2.3"}


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
        text = contract.read_text()
        contracted = variables_in_table(text, "## 5. Configuration")
        # Section 13 contracts STS_MAPPINGS_FILE outside section 5's table.
        running = text.split("## 13.", 1)[1].split("\n## ", 1)[0]
        assert code <= contracted | set(re.findall(r"`(STS_[A-Z0-9_]+)`", running))
        # What is contracted but not built yet (nothing now: Azure was the last).
        assert contracted - code == NOT_YET_BUILT


# ---------------------------------------------------------------------------------------------
# Rendering: every overlay, and the base with every combination of the components


@dataclass(frozen=True)
class Render:
    """One `kubectl kustomize` output: ``"Kind/name" -> object``."""

    name: str
    components: frozenset[str]
    objects: dict[str, dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects[f"{kind}/{name}"]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", "zuplo-sts")

    def settings(self) -> dict[str, str]:
        """The settings ConfigMap's data (its name carries a hash of the content)."""
        (data,) = [
            obj["data"]
            for obj in self.objects.values()
            if obj["kind"] == "ConfigMap"
            and re.fullmatch(r"zuplo-sts-config-[a-z0-9]{10}", obj["metadata"]["name"])
        ]
        return dict(data)


def kustomize(directory: Path) -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed: `kubectl kustomize` renders deploy/kubernetes"
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{directory}: {result.stderr[-2000:]}"
    objects: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(result.stdout):
        key = f"{doc['kind']}/{doc['metadata']['name']}"
        assert key not in objects, f"{key} rendered twice"
        objects[key] = doc
    return objects


def overlay_dirs(root: Path = K8S) -> list[Path]:
    return sorted(path.parent for path in (root / "overlays").glob("*/kustomization.yaml"))


def kustomization(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return document


def components_of(directory: Path) -> frozenset[str]:
    return frozenset(Path(path).name for path in kustomization(directory).get("components", []))


def combination_name(chosen: tuple[str, ...]) -> str:
    return "+".join(("base", *chosen))


COMBINATIONS = [
    chosen
    for size in range(len(COMPONENTS) + 1)
    for chosen in itertools.combinations(COMPONENTS, size)
]
RENDER_NAMES = [combination_name(chosen) for chosen in COMBINATIONS] + [
    f"overlays/{path.name}" for path in overlay_dirs()
]
DEPLOYABLE = [name for name in RENDER_NAMES if "postgresql" in name or name.startswith("overlays/")]


def write_combination(tree: Path, chosen: tuple[str, ...]) -> Path:
    """An overlay of the base and ``chosen``, with what an overlay must add: the image and,
    with kms, the key ARNs."""
    directory = tree / "combinations" / combination_name(chosen)
    directory.mkdir(parents=True)
    document: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "zuplo-sts",
        "resources": ["../../base"],
        "components": [f"../../components/{name}" for name in chosen],
        "images": [TEST_IMAGE],
    }
    if "kms" in chosen:
        document["configMapGenerator"] = [
            {
                "name": "zuplo-sts-config",
                "behavior": "merge",
                "literals": [f"STS_SIGNING_KMS_KEY_IDS={TEST_KMS_KEY}"],
            }
        ]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(document))
    return directory


def copy_tree(destination: Path) -> Path:
    tree = destination / "kubernetes"
    shutil.copytree(K8S, tree)
    return tree


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Render]:
    tree = copy_tree(tmp_path_factory.mktemp("deploy"))
    jobs = [
        (combination_name(chosen), frozenset(chosen), write_combination(tree, chosen))
        for chosen in COMBINATIONS
    ] + [(f"overlays/{path.name}", components_of(path), path) for path in overlay_dirs(tree)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(kustomize, [directory for _, _, directory in jobs]))
    rendered = {
        name: Render(name, chosen, objects)
        for (name, chosen, _), objects in zip(jobs, outputs, strict=True)
    }
    assert sorted(rendered) == sorted(RENDER_NAMES)
    return rendered


def job_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """A Job's spec, or a CronJob's job template spec."""
    spec: dict[str, Any] = (
        obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    )
    return spec


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job_spec(obj)["template"]["spec"]
    return spec


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    return dict(container)


def init_container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(obj).get("initContainers", []) if c["name"] == name]
    return dict(container)


def workloads(render: Render) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, obj in render.objects.items():
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            yield key, obj


def containers(render: Render) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(label, pod spec, container)`` for every container and init container."""
    for key, obj in workloads(render):
        pod = pod_spec(obj)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{key}/{container['name']}", pod, container


def container_env(render: Render, container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would give ``container``, with SECRET_VALUES as the Secret."""
    configmaps = {
        obj["metadata"]["name"]: obj.get("data", {})
        for obj in render.objects.values()
        if obj["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configmaps[ref["name"]][ref["key"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET_NAME
            env[item["name"]] = SECRET_VALUES[ref["key"]]
    return env


def mount_configmaps(render: Render, container: dict[str, Any], root: Path) -> dict[str, Path]:
    """Play the kubelet: write every ConfigMap volume ``container`` mounts under ``root``, in the
    kubelet's layout. Returns ``mountPath -> directory``."""
    pod = pod_spec(render.deployment)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            directory = root / mount["mountPath"].lstrip("/")
            data = render.get("ConfigMap", volume["configMap"]["name"])["data"]
            update_configmap_volume(directory, data)
            mounted[mount["mountPath"]] = directory
    return mounted


def update_configmap_volume(directory: Path, data: dict[str, str]) -> None:
    """Write or update a ConfigMap volume as the kubelet does: each key is a symbolic link
    through ``..data`` into a timestamped directory, and an update writes a new directory and
    swaps ``..data`` to it in one rename, so the file a key names is replaced, never written."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{len(list(directory.glob('..2*'))) + 2000}_01_01"
    version.mkdir()
    for key, value in data.items():
        (version / key).write_text(value)
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    link.rename(directory / "..data")
    for key in data:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")


def pod_env(render: Render, container: dict[str, Any], root: Path) -> dict[str, str]:
    """``container_env`` with the ConfigMap volumes written under ``root`` and the variables
    that name a path inside one pointed there."""
    env = container_env(render, container)
    for mount_path, directory in mount_configmaps(render, container, root).items():
        for variable, value in env.items():
            if value.startswith(f"{mount_path}/"):
                env[variable] = str(directory / value.removeprefix(f"{mount_path}/"))
    return env


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


# ---------------------------------------------------------------------------------------------
# Layout


def test_the_base_lists_every_manifest_it_holds() -> None:
    base = K8S / "base"
    document = kustomization(base)
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert document["kind"] == "Kustomization"
    listed = document["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {path.name for path in base.glob("*") if path.name != "kustomization.yaml"}
    generated = [
        source
        for generator in document["configMapGenerator"]
        for source in [*generator.get("files", []), *generator.get("envs", [])]
    ]
    assert sorted([*listed, *generated]) == sorted(on_disk)
    assert "namespace" not in document  # the overlay's choice
    for name in COMPONENTS:
        component = kustomization(K8S / "components" / name)
        assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
        assert component["kind"] == "Component"
    assert overlay_dirs(), "no example overlay"
    for directory in overlay_dirs():
        assert "postgresql" in components_of(directory), directory
        assert kustomization(directory)["resources"] == ["../../base"]


def test_no_secret_is_rendered_and_the_example_is_outside_every_kustomization(
    renders: dict[str, Render],
) -> None:
    for render in renders.values():
        assert [key for key in render.objects if key.startswith("Secret/")] == [], render.name
    for path in K8S.rglob("kustomization.yaml"):
        document = yaml.safe_load(path.read_text())
        assert "secret.example.yaml" not in json.dumps(document), path
        assert "secretGenerator" not in document, path


def test_the_image_is_named_in_one_place(renders: dict[str, Render]) -> None:
    """Every container of the base says `image: zuplo-sts`, and one `images:` entry in the
    overlay says which image that is, for all of them; the base and the components name none."""
    for manifest in [*(K8S / "base").glob("*.yaml"), *(K8S / "components").rglob("*.yaml")]:
        for document in yaml.safe_load_all(manifest.read_text()):
            assert "images" not in document, manifest
        for found in re.findall(r"^\s*image:\s*(\S+)", manifest.read_text(), re.MULTILINE):
            assert found == "zuplo-sts", manifest
    for directory in overlay_dirs():
        (image,) = kustomization(directory)["images"]
        assert image["name"] == "zuplo-sts"
        render = renders[f"overlays/{directory.name}"]
        used = {container["image"] for _, _, container in containers(render)}
        assert used == {f"{image['newName']}:{image['newTag']}"}
    for chosen in COMBINATIONS:
        render = renders[combination_name(chosen)]
        used = {container["image"] for _, _, container in containers(render)}
        assert used == {f"{TEST_IMAGE['newName']}:{TEST_IMAGE['newTag']}"}


# ---------------------------------------------------------------------------------------------
# Schema


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_matches_the_kubernetes_schema(
    renders: dict[str, Render], version: str
) -> None:
    failures = []
    seen: set[str] = set()
    kinds: set[str] = set()
    for render in renders.values():
        for key, obj in render.objects.items():
            text = json.dumps(obj, sort_keys=True)
            if text in seen:
                continue
            seen.add(text)
            kinds.add(obj["kind"])
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                failures.append(f"{render.name}: {key}: {path}: {exc.message}")
    assert failures == []
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "CronJob",
    }


def test_the_secret_example_matches_the_kubernetes_schema() -> None:
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert set(secret["stringData"]) == SECRET_VARIABLES


def test_the_validator_is_strict(renders: dict[str, Render]) -> None:
    """A misspelt field and a mistyped value are refused, so the test above can fail."""
    deployment = json.loads(json.dumps(renders["overlays/production"].deployment))
    container = main_container(deployment)
    pod_spec(deployment)["containers"][0]["readinessProbes"] = container["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = json.loads(json.dumps(renders["overlays/production"].deployment))
    deployment["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# ---------------------------------------------------------------------------------------------
# The server


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_deployment_shape(renders: dict[str, Render], name: str) -> None:
    render = renders[name]
    deployment = render.deployment
    spec = deployment["spec"]
    pod = pod_spec(deployment)
    container = main_container(deployment)
    # The autoscaler owns the count (two at least): a count here would fight it on every apply.
    assert "replicas" not in spec
    assert render.get("HorizontalPodAutoscaler", "zuplo-sts")["spec"]["minReplicas"] == 2
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

    for _, _, each in containers(render):
        resources = each["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}

    # The arguments are a valid `sts serve` command line (the image's ENTRYPOINT is `sts`).
    assert container["args"][0] == "serve"
    parsed = click_params(container["args"])
    assert (parsed["host"], parsed["port"]) == (ALL_INTERFACES, 8000)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_sts_variable_comes_from_the_configmap_or_the_secret(
    renders: dict[str, Render], name: str
) -> None:
    render = renders[name]
    container = main_container(render.deployment)
    env = {item["name"]: item for item in container["env"]}
    assert "envFrom" not in container
    # Every variable the service reads, except those of the components left out.
    expected = variables_read_by_code() | {MAPPINGS_FILE_VARIABLE}
    if "redis" not in render.components:
        expected -= {"STS_REDIS_URL", "STS_CACHE_ENCRYPTION_KEY"}
    if "kms" in render.components:
        expected -= {"STS_KEY_ENCRYPTION_KEY"}
    assert {variable for variable in env if variable.startswith("STS_")} == expected
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    settings = render.settings()
    from_configmap = set()
    for variable, item in env.items():
        if not variable.startswith("STS_"):
            continue
        source = item["valueFrom"]
        if variable in SECRET_VARIABLES:
            ref = source["secretKeyRef"]
            assert ref["name"] == SECRET_NAME
            assert ref["key"] == variable
            assert variable in secret["stringData"]
            # Every key a component reads is required: a missing one stops the pod, visibly.
            assert ref.get("optional", False) is False
        else:
            ref = source["configMapKeyRef"]
            assert re.fullmatch(r"zuplo-sts-config-[a-z0-9]{10}", ref["name"])
            assert ref["key"] == variable
            assert variable in settings
            from_configmap.add(variable)
    assert from_configmap == set(settings)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_settings_are_accepted_by_the_service(
    renders: dict[str, Render], name: str, tmp_path: Path
) -> None:
    """The environment as the server container sees it, its mappings volume mounted, passes
    `sts serve`'s own start-up checks, in broker mode, with the key store the components
    chose."""
    render = renders[name]
    settings = Settings.from_env(pod_env(render, main_container(render.deployment), tmp_path))
    settings.require_serving()
    assert settings.broker_issuer is not None
    assert settings.broker_issuer.startswith("https://")
    assert settings.trusted_issuers == (ZUPLO_ISSUER,)
    assert settings.allow_http_loopback is False
    assert settings.aws_endpoint_url is None
    assert settings.log_format == "json"
    assert settings.database_url == SECRET_VALUES["STS_DATABASE_URL"]
    if "kms" in render.components:
        assert settings.signing_kms_key_ids
        assert settings.key_encryption_key is None
    else:
        assert settings.signing_kms_key_ids == ()
        assert settings.key_encryption_key is not None
    assert (settings.redis_url is not None) is ("redis" in render.components)


@pytest.mark.parametrize("name", [n for n in RENDER_NAMES if n not in DEPLOYABLE])
def test_without_postgresql_every_pod_stops_at_start_up(
    renders: dict[str, Render], name: str
) -> None:
    """The base alone must not give each pod a SQLite file of its own (two replicas, two sets of
    broker keys): every container that opens the database refuses to start, naming it."""
    render = renders[name]
    opened = 0
    for label, _, container in containers(render):
        env = container_env(render, container)
        if "STS_DATABASE_URL" not in env:
            continue
        opened += 1
        with pytest.raises(ConfigError) as refused:
            Settings.from_env(env)
        assert refused.value.variable == "STS_DATABASE_URL", label
    assert opened == 3  # the server, its migrations, the audit prune


def test_the_base_runs_broker_mode() -> None:
    settings_file = (K8S / "base" / "settings.env").read_text()
    values = dict(
        line.split("=", 1)
        for line in settings_file.splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert values["STS_BROKER_ISSUER"].startswith("https://")
    assert values["STS_SIGNING_KMS_KEY_IDS"] == ""  # keys in the database, under the KEK
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    env = {item["name"]: item for item in main_container(deployment)["env"]}
    assert env["STS_KEY_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET_NAME,
        "key": "STS_KEY_ENCRYPTION_KEY",
    }


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_security_context_of_every_container(renders: dict[str, Render], name: str) -> None:
    render = renders[name]
    dockerfile_uid = int(final_stage_user().split(":")[0])
    assert render.get("ServiceAccount", "zuplo-sts")["automountServiceAccountToken"] is False
    seen = []
    for label, pod, container in containers(render):
        assert pod["serviceAccountName"] == "zuplo-sts", label
        assert pod["automountServiceAccountToken"] is False, label
        assert pod["enableServiceLinks"] is False, label
        assert pod["securityContext"]["runAsNonRoot"] is True, label
        assert pod["securityContext"]["runAsUser"] == dockerfile_uid, label
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, label
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, label
        assert context["readOnlyRootFilesystem"] is True, label
        assert context["allowPrivilegeEscalation"] is False, label
        assert context["capabilities"] == {"drop": ["ALL"]}, label
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, label
        # /tmp is the one writable path, and TMPDIR points there.
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], label
        assert all(m["readOnly"] for path, m in mounts.items() if path != "/tmp"), label
        assert {"name": "TMPDIR", "value": "/tmp"} in container["env"], label
        seen.append(label)
    assert sorted(seen) == [
        "CronJob/zuplo-sts-audit-prune/audit-prune",
        "Deployment/zuplo-sts/db-upgrade",
        "Deployment/zuplo-sts/sts",
    ]


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_service_hpa_pdb_and_network_policy(renders: dict[str, Render], name: str) -> None:
    render = renders[name]
    deployment = render.deployment
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = main_container(deployment)["ports"]

    service = render.get("Service", "zuplo-sts")["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    hpa = render.get("HorizontalPodAutoscaler", "zuplo-sts")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "zuplo-sts",
    }
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    # One pod at a time may go: with two replicas, `minAvailable: 2` would block every drain.
    pdb = render.get("PodDisruptionBudget", "zuplo-sts")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    policy = render.get("NetworkPolicy", "zuplo-sts")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {port["containerPort"]}
    assert all(rule["from"] for rule in policy["ingress"])  # never "from anywhere"
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert ("ingress-nginx" in sources) is ("ingress" in render.components)
    # Each component opens exactly the port it needs.
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    expected = {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    if "postgresql" in render.components:
        expected.add(("TCP", 5432))
    if "redis" in render.components:
        expected.add(("TCP", 6379))
    assert egress == expected


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_kms_takes_its_aws_role_from_the_service_account(
    renders: dict[str, Render], name: str
) -> None:
    render = renders[name]
    annotations = render.get("ServiceAccount", "zuplo-sts")["metadata"].get("annotations", {})
    if "kms" in render.components:
        role = annotations["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)
    else:
        assert annotations == {}


# ---------------------------------------------------------------------------------------------
# Migrations and the audit prune


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_migrations_run_in_an_init_container_not_a_job(
    renders: dict[str, Render], name: str
) -> None:
    """A GitOps tool applies manifests and never deletes a Job to run it again: each pod runs
    `sts db upgrade` before it serves, against the same database as the server."""
    render = renders[name]
    assert [key for key in render.objects if key.startswith("Job/")] == []
    deployment = render.deployment
    (upgrade,) = pod_spec(deployment)["initContainers"]
    assert upgrade["name"] == "db-upgrade"
    assert upgrade["args"] == ["db", "upgrade"]
    assert click_params(upgrade["args"]) == {"versions": ()}
    assert upgrade["image"] == main_container(deployment)["image"]
    server = {item["name"]: item for item in main_container(deployment)["env"]}
    migrations = {item["name"]: item for item in upgrade["env"]}
    assert migrations["STS_DATABASE_URL"] == server["STS_DATABASE_URL"]

    prune = render.get("CronJob", "zuplo-sts-audit-prune")
    container = main_container(prune)
    assert container["args"] == ["audit", "prune"]
    assert click_params(container["args"]) == {"older_than": None, "dry_run": False}
    assert container["image"] == main_container(deployment)["image"]
    assert prune["spec"]["concurrencyPolicy"] == "Forbid"
    pruned = {item["name"]: item for item in container["env"]}
    assert pruned["STS_DATABASE_URL"] == server["STS_DATABASE_URL"]
    assert pod_spec(prune)["restartPolicy"] == "Never"
    (rule,) = job_spec(prune)["podFailurePolicy"]["rules"]
    # Exit 2 (bad configuration) fails the Job at once; exit 1 is retried.
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "In",
        "values": [2],
    }


# ---------------------------------------------------------------------------------------------
# Mappings: one file, watched


def mapping_roles(spec: MappingSpec) -> list[str]:
    """The cloud identities a mapping's broker token is trusted by (its subject is
    mapping:<name>, so each of them can trust one mapping only)."""
    roles = []
    if spec.aws is not None:
        roles.append(spec.aws.role_arn)
    if spec.gcp is not None and spec.gcp.service_account is not None:
        roles.append(spec.gcp.service_account)
    if spec.azure is not None:
        roles.append(spec.azure.client_id)
    return roles


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_the_service_reads_the_mounted_mappings_file(renders: dict[str, Render], name: str) -> None:
    render = renders[name]
    deployment = render.deployment
    container = main_container(deployment)
    path = Path(render.settings()[MAPPINGS_FILE_VARIABLE])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    # A directory mount: the kubelet swaps a ConfigMap volume's files in place on an update,
    # which a subPath mount never sees.
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    items = volume["configMap"].get("items", [{"key": path.name, "path": path.name}])
    assert {"key": path.name, "path": path.name} in items
    assert volume["configMap"].get("optional", False) is False
    # A fixed name: a hashed one would change the pod template, and roll every pod, on each edit.
    configmap = render.get("ConfigMap", volume["configMap"]["name"])
    assert configmap["metadata"]["name"] == "zuplo-sts-mappings"
    specs = parse_document(configmap["data"][path.name], f"{name}/{path.name}")
    assert {spec.environment_type for spec in specs} <= {*ENVIRONMENT_TYPES, "*"}
    roles = [role for spec in specs for role in mapping_roles(spec)]
    assert len(roles) == len(set(roles)), "two mappings share a cloud role"
    if name.startswith("overlays/"):
        assert len(specs) >= 2
    else:
        assert specs == []  # the base grants nothing


def test_changing_the_mappings_changes_only_their_configmap(tmp_path: Path) -> None:
    """Editing the overlay's mappings.yaml and applying changes one object, the ConfigMap the
    pods read in place: no Job to re-run, no rollout. A settings change does roll the pods."""
    tree = copy_tree(tmp_path)
    overlay = tree / "overlays" / "production"
    before = kustomize(overlay)
    mappings = overlay / "mappings.yaml"
    document = yaml.safe_load(mappings.read_text())
    document["mappings"].append(
        {
            "name": "added",
            "account": "a",
            "project": "p",
            "aws": {"role_arn": "arn:aws:iam::123456789012:role/added"},
        }
    )
    mappings.write_text(yaml.safe_dump(document))
    after = kustomize(overlay)
    assert before.keys() == after.keys()
    changed = [key for key in before if before[key] != after[key]]
    assert changed == ["ConfigMap/zuplo-sts-mappings"]
    assert len(parse_document(after[changed[0]]["data"]["mappings.yaml"], "m")) == len(
        document["mappings"]
    )

    settings = overlay / "settings.env"
    settings.write_text(settings.read_text() + "STS_AUDIT_RETENTION_DAYS=30\n")
    rolled = kustomize(overlay)
    template = "Deployment/zuplo-sts"
    assert rolled[template]["spec"]["template"] != after[template]["spec"]["template"]


def test_a_configmap_update_reaches_the_running_service(
    renders: dict[str, Render], tmp_path: Path
) -> None:
    """The server's own file watch on the mounted volume, as the kubelet lays it out and
    updates it: the first look applies the overlay's mappings, an edited ConfigMap is applied
    at the next look, with no restart and no Job."""
    from sts.db import Database
    from sts.mappings.watch import MappingsFile

    render = renders["overlays/production"]
    env = pod_env(render, main_container(render.deployment), tmp_path / "pod")
    path = Path(env[MAPPINGS_FILE_VARIABLE])
    document = yaml.safe_load(path.read_text())
    database = Database(f"sqlite:///{tmp_path / 'sts.db'}")
    try:
        database.upgrade()
        watch = MappingsFile(str(path), database)
        first = watch.check()
        assert (first.state, first.created) == ("applied", len(document["mappings"]))
        assert watch.check().state == "unchanged"
        document["mappings"][0]["description"] = "edited in the overlay's mappings.yaml"
        update_configmap_volume(path.parent, {path.name: yaml.safe_dump(document)})
        second = watch.check()
        assert (second.state, second.created, second.updated, second.deleted) == (
            "applied",
            0,
            1,
            0,
        )
    finally:
        database.dispose()


def test_the_commands_run_against_a_real_database(
    renders: dict[str, Render], tmp_path: Path
) -> None:
    """The init container's migrations, then what the service does with STS_MAPPINGS_FILE
    (`sts mappings apply --prune`), then the CronJob's prune, through `sts` on SQLite."""
    render = renders["overlays/production"]
    path = render.settings()[MAPPINGS_FILE_VARIABLE]
    document = render.get("ConfigMap", "zuplo-sts-mappings")["data"][Path(path).name]
    specs = parse_document(document, "mappings.yaml")
    config = tmp_path / "mappings.yaml"
    config.write_text(document)
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("STS_")}
    env["STS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'sts.db'}"
    runner = CliRunner(env=env)

    def sts(args: list[str]) -> Result:
        return runner.invoke(cli, args, catch_exceptions=False)

    upgrade = sts(init_container(render.deployment, "db-upgrade")["args"])
    assert upgrade.exit_code == 0, upgrade.output
    applied = sts(["mappings", "apply", "--prune", str(config)])
    assert applied.exit_code == 0, applied.output
    listed = sts(["mappings", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(item["name"] for item in json.loads(listed.stdout)) == sorted(
        spec.name for spec in specs
    )
    pruned = sts(main_container(render.get("CronJob", "zuplo-sts-audit-prune"))["args"])
    assert pruned.exit_code == 0, pruned.output


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
    description = re.search(r'org\.opencontainers\.image\.description="([^"]*)"', labels)
    assert description
    for cloud in ("AWS", "GCP", "Azure"):
        assert cloud in description[1]


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


@pytest.mark.parametrize("name", [n for n in RENDER_NAMES if "ingress" in n or "overlays/" in n])
def test_the_ingress_exposes_token_and_the_discovery_documents_only(
    renders: dict[str, Render], name: str
) -> None:
    """Zuplo's hosted gateways call /token over the internet; in broker mode the clouds read
    the two discovery paths at STS_BROKER_ISSUER. Nothing else is public, over TLS only."""
    from sts.api.openapi import DOCUMENT

    render = renders[name]
    if "ingress" not in render.components:
        assert [key for key in render.objects if key.startswith("Ingress/")] == []
        return
    ingress = render.get("Ingress", "zuplo-sts")
    spec = ingress["spec"]
    (rule,) = spec["rules"]
    paths = rule["http"]["paths"]
    assert {(p["path"], p["pathType"]) for p in paths} == {
        ("/token", "Exact"),
        ("/.well-known/openid-configuration", "Exact"),
        ("/.well-known/jwks.json", "Exact"),
    }
    assert set(DOCUMENT["paths"]) >= {p["path"] for p in paths}
    service = render.get("Service", "zuplo-sts")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in port_names
    (tls,) = spec["tls"]
    assert tls["hosts"] == [rule["host"]]
    assert tls["secretName"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    # The clouds read <issuer>/.well-known/...: the issuer is exactly this host's root.
    assert render.settings()["STS_BROKER_ISSUER"] == f"https://{rule['host']}"


# ---------------------------------------------------------------------------------------------
# The lock: constraints.txt


def locked_versions() -> dict[str, str]:
    """``name -> version`` of every pin in constraints.txt; anything but ``name==version``
    (a range, a URL, a path, an extra) fails."""
    pins: dict[str, str] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"constraints.txt: not an exact pin: {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt: {name} pinned twice"
        pins[name] = match[2]
    return pins


def project_requirements() -> list[Requirement]:
    """What `pip install -e '.[dev]'` asks for: the dependencies, every extra, the build
    backend."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    texts = [
        *project["dependencies"],
        *(text for extra in project["optional-dependencies"].values() for text in extra),
        *pyproject["build-system"]["requires"],
    ]
    return [
        requirement
        for requirement in map(Requirement, texts)
        if canonicalize_name(requirement.name) != canonicalize_name(project["name"])
    ]


def test_the_lock_pins_everything_the_dev_install_brings_in() -> None:
    """Every requirement pyproject.toml names, and everything they require in turn (extras
    included, as this interpreter's markers select them), is pinned to one version that
    pyproject's own range allows; the installed environment is the locked one."""
    pins = locked_versions()
    environment: dict[str, str] = dict(default_environment())
    todo = [(requirement, "") for requirement in project_requirements()]
    walked: set[tuple[str, str]] = set()
    reached: set[str] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**environment, "extra": extra}
        ):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} ({requirement}) is not in constraints.txt: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}: run scripts/lock"
        )
        reached.add(name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) not in walked:
                walked.add((name, wanted))
                todo.extend((Requirement(text), wanted) for text in metadata.requires(name) or [])
    assert len(reached) > len(project_requirements())
    installed = {name: metadata.version(name) for name in reached}
    assert installed == {name: pins[name] for name in reached}, "install with -c constraints.txt"


def test_the_lock_says_how_to_refresh_it() -> None:
    header = LOCK.read_text().split("\n\n", 1)[0]
    assert "pip-compile" in header
    assert "scripts/lock" in header
    python = re.search(r"with Python (3\.\d+)", header)
    assert python, "the header names the Python the pins were resolved for"
    # The image runs the interpreter the pins were resolved for.
    image = next(a for k, a in dockerfile_instructions() if k == "ARG" and "PYTHON_IMAGE" in a)
    assert image.startswith(f"PYTHON_IMAGE=python:{python[1]}-")
    script = ROOT / "scripts" / "lock"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "piptools compile" in text
    for option in ("--extra dev", "--strip-extras", "--output-file constraints.txt"):
        assert option in text


def test_every_installer_uses_the_lock() -> None:
    """README's fresh-machine commands, CI and the image install with `-c constraints.txt`."""
    readme = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("python3 -m venv .venv") and "pip install" in line
    ]
    assert len(readme) == 2
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert len(ci) == 1
    for line in [*readme, *ci]:
        words = shlex.split(line)
        install = words.index("install")
        assert words[install - 1] == "pip"
        constraint = words.index("-c", install)
        assert words[constraint + 1] == "constraints.txt", line
        assert "-e" in words[install:], line
    assert ci[0] in readme  # CI runs README's test command

    build, _ = stages()
    runs = " ".join(arguments for keyword, arguments in build if keyword == "RUN")
    assert "/opt/sts/bin/pip install -c constraints.txt /dist/" in runs
    assert "constraints.txt" in build_stage_sources()
    env = " ".join(arguments for keyword, arguments in build if keyword == "ENV")
    assert "PIP_CONSTRAINT=/src/constraints.txt" in env  # the isolated build backend too
