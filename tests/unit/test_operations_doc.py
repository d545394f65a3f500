"""docs/operations.md can be followed as written: every repository path, link, heading, ``STS_*``
variable, ``sts`` command line, kustomization directory and Kubernetes object it names exists.

Each check is a function from a document's text to its problems, so the last test can show that
each one finds a planted mistake.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import yaml

from sts.cli import cli
from sts.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
K8S = ROOT / "deploy" / "kubernetes"
# Read by commands, not by the service (docs/reference.md sections 6 and 11).
KNOWN_VARIABLES = VARIABLES | {"STS_ACTOR", "STS_IAM_ENDPOINT_URL"}
# Paths a reader must not be sent to: the layout before components and overlays.
REMOVED = (
    re.compile(r"deploy/kubernetes/(?!secret\.example\.yaml)[\w.*-]+\.ya?ml"),
    re.compile(r"\bjob-[\w-]+\.ya?ml"),
    re.compile(r"deploy/(?:gcp|gcp-broker|azure)\b"),
    re.compile(r"deploy/aws/zuplo-[\w.-]*"),
    re.compile(r"\b(?:migration|mappings?) Jobs?\b"),
)
SHELL_INFO = {"", "sh", "bash", "shell", "console"}
SHELL_OPERATORS = {"<", ">", ">>", "|", "||", "&&", ";", "&", "2>", "2>&1"}
COMMAND_POSITION = {"--", "&&", "||", "|", ";", "then", "do"}
KIND_ALIASES = {"hpa": "horizontalpodautoscaler", "pdb": "poddisruptionbudget"}


# -- reading markdown ---------------------------------------------------------------------------

FENCE = re.compile(r"^ *```([\w-]*)[^\n]*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)


def code_blocks(text: str, *, shell_only: bool = False) -> list[str]:
    return [
        body for info, body in FENCE.findall(text) if not shell_only or info.lower() in SHELL_INFO
    ]


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def inline_code(text: str) -> list[str]:
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(text))]


def slug(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lower case, punctuation but - and _ removed."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> list[str]:
    return [match.strip() for match in re.findall(r"^#{1,6} +(.+)$", prose(text), re.MULTILINE)]


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


# -- paths --------------------------------------------------------------------------------------

TOP_LEVEL = sorted(
    {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    | {"bench", "deploy", "docs", "migrations", "sts", "tests"}
)
REPO_PATH = re.compile(
    r"(?<![\w./~:@-])((?:" + "|".join(map(re.escape, TOP_LEVEL)) + r")/[\w./{},*-]*)"
)


def copies(text: str) -> dict[str, str]:
    """Directories the document makes itself (`cp -r SRC DST`): DST stands for SRC."""
    made = {}
    for block in code_blocks(text, shell_only=True):
        for src, dst in re.findall(r"\bcp +-r +(\S+) +(\S+)", block):
            made[dst.rstrip("/")] = src.rstrip("/")
    return made


def as_existing(path: str, made: dict[str, str]) -> str:
    for dst, src in made.items():
        if path == dst or path.startswith(dst + "/"):
            return src + path[len(dst) :]
    return path


def expand(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [
        expanded
        for choice in match[1].split(",")
        for expanded in expand(path[: match.start()] + choice + path[match.end() :])
    ]


def exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path.rstrip("/")))
    return (ROOT / path).exists()


def path_problems(text: str) -> list[str]:
    made = copies(text)
    problems = []
    for found in sorted(set(REPO_PATH.findall(text))):
        for path in expand(found.rstrip(".,:;")):
            if not exists(as_existing(path, made)):
                problems.append(f"{path}: not in the repository")
    problems += [
        f"{match[0]}: a removed path or object"
        for pattern in REMOVED
        for match in pattern.finditer(text)
    ]
    return problems


# -- links and cited sections --------------------------------------------------------------------


def link_problems(text: str, source: Path = DOC) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.is_relative_to(ROOT) or not file.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor:
            heading_text = text if file == source else file.read_text()
            if file.suffix != ".md" or anchor not in anchors(heading_text):
                problems.append(f"{target}: no such heading")
    # "[name.md](name.md), "Heading"" and "[x](#anchor), "Heading"" cite a heading by its text.
    flat = " ".join(prose(text).split())
    for path, quoted in re.findall(r"\]\(([^)#\s]*\.md)\),? \"([^\"]+)\"", flat):
        file = (source.parent / path).resolve()
        if file.exists() and quoted not in headings(file.read_text()):
            problems.append(f'{path} "{quoted}": no such heading')
    for quoted in re.findall(r"\]\(#[^)\s]+\),? \"([^\"]+)\"", flat):
        if quoted not in headings(text):
            problems.append(f'"{quoted}": no such heading here')
    reference = (ROOT / "docs" / "reference.md").read_text()
    numbered = set(re.findall(r"^## (\d+)\. ", reference, re.MULTILINE))
    for cited in re.findall(r"reference\.md,? sections? (\d+(?:(?:,| and) \d+)*)", flat):
        for number in re.findall(r"\d+", cited):
            if number not in numbered:
                problems.append(f"docs/reference.md section {number}: no such section")
    return problems


# -- variables -----------------------------------------------------------------------------------


def mentioned_variables(text: str) -> set[str]:
    return set(re.findall(r"(?<![A-Za-z0-9_])STS_[A-Z0-9_]*[A-Z0-9]", text))


def variable_problems(text: str) -> list[str]:
    return [
        f"{name}: not a variable" for name in sorted(mentioned_variables(text) - KNOWN_VARIABLES)
    ]


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no section {title!r}"
    return match[1]


# -- sts command lines ---------------------------------------------------------------------------


def shell_lines(block: str) -> Iterator[list[str]]:
    for line in block.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (an unbalanced quote in a here-document or the like)
        if tokens:
            yield tokens


def invocations(tokens: list[str]) -> Iterator[list[str]]:
    """The arguments of each `sts` that stands where a command does."""
    for index, token in enumerate(tokens):
        before = tokens[:index]
        at_start = all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word) for word in before)
        if token == "sts" and (at_start or before[-1] in COMMAND_POSITION):
            rest = tokens[index + 1 :]
            end = next((i for i, word in enumerate(rest) if word in SHELL_OPERATORS), len(rest))
            yield rest[:end]


def sts_command_lines(text: str) -> list[tuple[list[str], bool]]:
    """Every `sts ...` of the shell blocks (complete), and of the inline code (maybe cut short)."""
    lines = [
        (args, False)
        for block in code_blocks(text, shell_only=True)
        for tokens in shell_lines(block)
        for args in invocations(tokens)
    ]
    for span in inline_code(text):
        if span.startswith("sts "):
            try:
                tokens = shlex.split(span)
            except ValueError:
                tokens = span.split()
            lines += [(args, True) for args in invocations(tokens)]
    return lines


def command_problem(args: list[str], *, partial: bool) -> str | None:
    """Why `sts ARGS` is not a command line of click's tree, or None."""
    command: click.Command = cli
    path = ["sts"]
    index = 0
    while isinstance(command, click.Group):
        if index < len(args) and args[index] in command.commands:
            command = command.commands[args[index]]
            path.append(args[index])
            index += 1
        elif command.invoke_without_command:
            break
        elif partial and index == len(args):
            return None  # a group named in prose
        else:
            given = args[index] if index < len(args) else "nothing"
            return f"{' '.join(path)}: no subcommand {given!r}"
    options: dict[str, click.Option] = {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    positional = 0
    rest = args[index:]
    position = 0
    while position < len(rest):
        word = rest[position]
        if word == "--help":
            return None
        if word.startswith("-") and word != "-":
            name, equals, _ = word.partition("=")
            option = options.get(name)
            if option is None:
                return f"{' '.join(path)}: no option {name}"
            if not option.is_flag and not equals:
                if position + 1 == len(rest):
                    return None if partial else f"{' '.join(path)}: {name} needs a value"
                position += 1
        else:
            positional += 1
        position += 1
    most = sum(math.inf if argument.nargs < 0 else argument.nargs for argument in arguments)
    least = sum(argument.nargs for argument in arguments if argument.required)
    if positional > most:
        return f"{' '.join(path)}: {positional} arguments, takes {most}"
    if positional < least and not partial:
        return f"{' '.join(path)}: {positional} arguments, needs {least}"
    return None


def command_problems(text: str) -> list[str]:
    problems = []
    for args, partial in sts_command_lines(text):
        problem = command_problem(args, partial=partial)
        if problem is not None:
            problems.append(f"sts {' '.join(args)}: {problem}")
    return problems


# -- Kubernetes ----------------------------------------------------------------------------------

KUSTOMIZE = re.compile(
    r"\b(?:kubectl +kustomize|kubectl +(?:apply|diff|delete) +-k|kustomize +build) +([^\s`]+)"
)


def kustomize_paths(text: str) -> list[str]:
    found = []
    for chunk in [*code_blocks(text, shell_only=True), *inline_code(text)]:
        found += KUSTOMIZE.findall(chunk.replace("\\\n", " "))
    return found


def kustomization_problems(text: str) -> list[str]:
    made = copies(text)
    problems = []
    for path in kustomize_paths(text):
        directory = ROOT / as_existing(path.rstrip("/"), made)
        if not any(
            (directory / name).is_file() for name in ("kustomization.yaml", "kustomization.yml")
        ):
            problems.append(f"{path}: not a kustomization directory")
    return problems


def kubernetes_objects() -> tuple[set[tuple[str, str]], set[str]]:
    """(kind, name) of every object the manifests define or generate, and the container names."""
    objects, containers = set(), set()
    for file in K8S.rglob("*.yaml"):
        for document in yaml.safe_load_all(file.read_text()):
            if not isinstance(document, dict):
                continue
            for generated in document.get("configMapGenerator", []):
                objects.add(("configmap", generated["name"]))
            if "kind" in document and "name" in document.get("metadata", {}):
                objects.add((document["kind"].lower(), document["metadata"]["name"]))
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for key in ("initContainers", "containers"):
                containers |= {container["name"] for container in pod.get(key, [])}
    return objects, containers


def kubernetes_problems(text: str) -> list[str]:
    objects, containers = kubernetes_objects()
    chunks = [*code_blocks(text, shell_only=True), *inline_code(text)]
    problems = []
    for chunk in chunks:
        for written, name in re.findall(r"(?<![\w./:@-])([A-Za-z]+)/(zuplo-sts[\w-]*)", chunk):
            kind = KIND_ALIASES.get(written.lower(), written.lower())
            if (kind, name) not in objects:
                problems.append(f"{kind}/{name}: no such object in deploy/kubernetes")
        if "kubectl" in chunk:
            problems += [
                f"-c {name}: no such container"
                for name in re.findall(r"(?<!\S)-c +([a-z][\w-]*)", chunk)
                if name not in containers
            ]
    return problems


# -- the document --------------------------------------------------------------------------------

TEXT = DOC.read_text()


def test_every_repository_path_exists() -> None:
    assert REPO_PATH.findall(TEXT)
    assert path_problems(TEXT) == []


def test_every_link_and_cited_heading_exists() -> None:
    assert link_problems(TEXT) == []


def test_every_variable_is_real() -> None:
    assert variable_problems(TEXT) == []


def test_key_settings_name_every_variable_the_service_reads() -> None:
    table = section(TEXT, "Key settings")
    assert VARIABLES - mentioned_variables(table) == set()


def test_every_sts_command_line_is_a_real_command() -> None:
    assert len(sts_command_lines(TEXT)) >= 20
    assert command_problems(TEXT) == []


def test_every_kustomize_path_is_a_kustomization() -> None:
    assert kustomize_paths(TEXT)
    assert kustomization_problems(TEXT) == []


def test_every_kubernetes_object_and_container_exists() -> None:
    assert kubernetes_problems(TEXT) == []


def test_the_checks_find_planted_mistakes() -> None:
    bad = "\n".join(
        [
            "# Planted",
            "See `deploy/gcp/main.tf`, `deploy/kubernetes/job-migrate.yaml` and `docs/nothing.md`;",
            "[a](reference.md#99-no-such-section), [b](missing.md), [c](#bad), docs/reference.md",
            'section 99, [d](benchmarks.md), "No such heading". Set `STS_NO_SUCH_SETTING`.',
            "Run `sts keys rotate --later` and `sts revoke --aws-apply`.",
            "```sh",
            "sts mappings apply --dry-run",
            "kubectl -n zuplo-sts exec deployment/zuplo-sts -- sts keys retire A B",
            "kubectl -n zuplo-sts logs job/zuplo-sts-mappings-apply -c migrate",
            "kubectl apply -k deploy/kubernetes",
            "```",
        ]
    )
    assert len(path_problems(bad)) >= 4  # three missing paths, two removed ones
    assert len(link_problems(bad)) == 5
    assert variable_problems(bad) == ["STS_NO_SUCH_SETTING: not a variable"]
    assert len(command_problems(bad)) == 4
    assert kustomization_problems(bad) == ["deploy/kubernetes: not a kustomization directory"]
    assert len(kubernetes_problems(bad)) == 2
    assert (
        slug("13. Running it from files and migrations")
        == "13-running-it-from-files-and-migrations"
    )
    assert slug("The issuer's `JWKS` (Zuplo, egress)") == "the-issuers-jwks-zuplo-egress"
