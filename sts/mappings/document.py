"""Strict parsing of the mapping document (docs/reference.md section 4).

The document is YAML (and therefore also JSON): a top-level ``mappings:`` list, or a bare list of
mapping entries as ``sts mappings list --json`` prints it. Parsing is strict in the octo-sts
``UnmarshalStrict`` sense: unknown keys, duplicate keys, YAML aliases and merge keys, and any value
of the wrong type are errors, each reported as one line that says where::

    mappings.yaml:12: mappings[1].aws.duration_seconds: must be 900..43200

Scalars are resolved by the YAML 1.2 core schema rather than PyYAML's YAML 1.1 one, so ``no`` is
the string ``"no"`` (not ``False``), ``1:00`` is not sixty and ``2024-01-01`` is not a date.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, ParamSpec, TypeVar
from urllib.parse import urlsplit

import yaml

from sts.mappings.spec import (
    AWS_DURATION_RANGE,
    DEFAULT_AZURE_SCOPE,
    DEFAULT_DURATION_SECONDS,
    DEFAULT_GCP_SCOPE,
    GCP_LIFETIME_RANGE,
    TOKEN_SOURCES,
    AwsTarget,
    AzureTarget,
    GcpTarget,
    MappingSpec,
    TokenSource,
)

T = TypeVar("T")
P = ParamSpec("P")

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# IAM role ARN: partition (aws, aws-cn, aws-us-gov, ...), 12-digit account, optional path.
ROLE_ARN_PATTERN = re.compile(r"arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
# The audience GCP's STS expects for a workload identity pool provider.
WIF_PROVIDER_PATTERN = re.compile(
    r"//iam\.googleapis\.com/projects/\d+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}",
    re.ASCII,
)
# User-managed (name@project.iam...), default (appspot, developer) and Google-managed accounts.
SERVICE_ACCOUNT_PATTERN = re.compile(
    r"[a-z0-9][a-z0-9-]{0,62}@[a-z0-9][a-z0-9.:-]{0,127}\.gserviceaccount\.com", re.ASCII
)
# A Microsoft Entra directory (tenant) or application (client) id: a GUID, 8-4-4-4-12 hex digits.
GUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
# Entra's client credentials grant takes one scope: a resource's identifier + "/.default".
AZURE_SCOPE_SUFFIX = "/.default"
ENVIRONMENT_TYPES = ("production", "preview", "development", "*")
# STS AssumeRoleWithWebIdentity: "The plain text that you use for both inline and managed
# session policies can't exceed 2,048 characters."
MAX_SESSION_POLICY_CHARS = 2048
SESSION_POLICY_VERSIONS = ("2012-10-17", "2008-10-17")
MAX_FIELD_CHARS = 255
#: The longest ID token audience taken (as a scope URL).
MAX_AUDIENCE_CHARS = 2048
MAX_DESCRIPTION_CHARS = 1024

PROVIDERS = ("aws", "gcp", "azure")
_GLOB_CHARS = frozenset("*?[]")
# Controls (newlines and tabs too) and format characters (bidi overrides, zero-width joiners)
# would let a value print differently from what it is, and the rest (surrogates, non-characters,
# line/paragraph separators) are what a YAML reader refuses or folds: refusing them keeps every
# stored value printable on one line by ``dump_json`` and readable again by ``parse_document``.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
# Limits past which a file is bad input (README, "Mappings": exit 2 with file:line): a whole
# document, and collections nested in one another (the root collection is level 1).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_NESTING = 100
# The longest integer or float literal taken; a duration needs five digits. Longer ones cost
# quadratic time to convert (and over 4300 digits Python refuses them).
MAX_NUMBER_CHARS = 64


class MappingFileError(ValueError):
    """A mapping document is invalid; ``str()`` is one line: ``source:line: path: problem``."""

    def __init__(
        self, source: str | None, line: int | None, path: str | None, problem: str
    ) -> None:
        self.source = source
        self.line = line
        self.path = path
        self.problem = problem
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(f"{where}{path}: {problem}" if path else f"{where}{problem}")

    @property
    def all(self) -> tuple[MappingFileError, ...]:
        """Every error found (one line each); a single error is itself."""
        return (self,)


#: At most this many mistakes are reported from one document (then how many more).
MAX_REPORTED_ERRORS = 50


class MappingFileErrors(MappingFileError):
    """Several mistakes in a document (in one entry or several), in file order. ``str()`` is
    the first; :attr:`all` holds every one kept (``omitted``: how many more there were)."""

    def __init__(self, errors: list[MappingFileError], omitted: int = 0) -> None:
        first = errors[0]
        super().__init__(first.source, first.line, first.path, first.problem)
        self.errors = tuple(errors)
        self.omitted = omitted

    @property
    def all(self) -> tuple[MappingFileError, ...]:
        return self.errors


def mistakes(error: MappingFileError, source: str) -> list[str]:
    """A refused document's mistakes, one line each as ``apply`` prints them (after
    ``error: ``) and the service logs them: every one kept, then how many more there were."""
    lines = [str(each) for each in error.all]
    omitted = error.omitted if isinstance(error, MappingFileErrors) else 0
    if omitted:
        lines.append(f"{source}: {omitted} more mistakes not shown")
    return lines


class _LDict(dict[str, Any]):
    """A mapping from the document, remembering the line of itself and of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}

    def new_key(self, key: Any, line: int) -> str:
        """``key`` on ``line``, recorded; a key that is not a string, or repeated, is refused."""
        if not isinstance(key, str):
            raise _LocatedError(line, "mapping keys must be strings")
        if key in self:
            first = self.key_lines[key]
            raise _LocatedError(line, f"duplicate key {key!r} (first at line {first})")
        self.key_lines[key] = line
        return key


class _LList(list[Any]):
    """A sequence from the document, remembering the line of itself and of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars, no aliases (no billion laughs, no surprises) and
    at most :data:`MAX_NESTING` levels of collections.

    PyYAML's composer recurses once per level, so the depth is counted there and refused before
    the stack is: a 3,000-deep document is bad input, not a ``RecursionError``.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level table
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _LocatedError(event.start_mark.line + 1, "YAML aliases are not allowed")
        nests = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if nests:
            self._depth += 1
            if self._depth > MAX_NESTING:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _LocatedError(
                    event.start_mark.line + 1, f"nested deeper than {MAX_NESTING} levels"
                )
        try:
            return super().compose_node(parent, index)
        finally:
            if nests:
                self._depth -= 1


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])

# libyaml (PyYAML's C parser), when PyYAML was built with it: the same grammar, the same node
# tree and marks, about ten times faster on a large file. The implicit resolvers (YAML 1.2 core
# scalars) and the checks in _build are this module's either way.
try:
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None  # type: ignore[assignment,misc]
_LIBYAML = CParser is not None
# What PyYAML's pure-Python reader refuses anywhere in a document (yaml.reader.Reader), and tabs,
# which its scanner refuses in places libyaml takes them: libyaml is more lenient, so such a
# document always goes the Python way and gets its error (tests/unit/mappings/test_yaml_paths.py
# searches for other differences).
# Also the line breaks and the byte order mark the two read differently (NEL, LS, PS, a BOM
# inside the text).
_PYTHON_ONLY = re.compile(
    "[^\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
    # A line that starts with the complex-key indicator: inside a multi-line plain scalar of a
    # flow collection libyaml reads "? k" as part of the scalar where PyYAML's scanner refuses
    # it ("{\nyes\n? k\n}"). Mapping files have no use for complex keys.
    r"|^[ \t]*\?(?:[ \t]|$)",
    re.MULTILINE,
)


class _StrictCLoader(CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """:class:`_StrictLoader`'s resolvers over libyaml's parser and composer (used only when
    :data:`_LIBYAML`)."""

    yaml_implicit_resolvers = _StrictLoader.yaml_implicit_resolvers

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null")
)
_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class _LocatedError(Exception):
    """A problem found while building the tree, before paths are known."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


_STR_TAG = "tag:yaml.org,2002:str"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scalar(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> Any:
    """A scalar's value, checked; built by the tag's constructor directly, never through
    ``construct_object``, which keeps every node it has seen (and its marks) until the end of
    the document: a gigabyte for a 100,000-mapping file."""
    tag = node.tag
    if tag == _STR_TAG:
        value: Any = node.value
        if _SURROGATE.search(value):
            # JSON writes characters beyond U+FFFF as \uD83D\uDE00; YAML readers do not join
            # the pair. Join it here; a lone half stays and is refused as unprintable.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        return value
    line = node.start_mark.line + 1
    if tag == "tag:yaml.org,2002:merge":
        raise _LocatedError(line, "YAML merge keys (<<) are not allowed")
    if tag not in _SCALAR_TAGS:
        raise _LocatedError(line, f"unsupported YAML tag {tag}")
    if tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
        raise _LocatedError(line, f"number has too many digits (at most {MAX_NUMBER_CHARS})")
    return loader.yaml_constructors[tag](loader, node)


def _build(loader: yaml.constructor.SafeConstructor, node: yaml.Node) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return _scalar(loader, node)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            raise _LocatedError(line, f"unsupported YAML tag {node.tag}")
        items = _LList(line)
        for item in node.value:
            items.item_lines.append(item.start_mark.line + 1)
            items.append(_build(loader, item))
        return items
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise _LocatedError(line, f"unsupported YAML tag {node.tag}")
        mapping = _LDict(line)
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = mapping.new_key(_build(loader, key_node), key_line)
            mapping[key] = _build(loader, value_node)
        return mapping
    raise _LocatedError(
        line, "unsupported YAML node"
    )  # pragma: no cover - PyYAML has no other kind


def _load(text: str, source: str, entries: _Entries | None = None) -> Any:
    """The document as plain values that remember their lines.

    libyaml reads it when it can; any problem it finds, and anything it would read more
    leniently, is read again by the pure-Python loader, whose answer (the value or the error)
    is the one given: the fast path never changes what a document means.

    With ``entries``, the fast path hands each entry of the mappings list to it as soon as the
    entry is read and leaves the list empty (``entries.streamed``), so a large file is never
    held as a tree; the Python path always returns the whole tree.
    """
    if _LIBYAML and not _PYTHON_ONLY.search(text):
        try:
            return _load_fast(text, source, entries)
        except (MappingFileError, yaml.YAMLError, ValueError):
            if entries is not None:
                entries.reset()
    return _load_python(text, source)


def _load_fast(text: str, source: str, entries: _Entries | None = None) -> Any:
    """libyaml's event stream built straight into the values :func:`_build` makes (no node
    tree): aliases and nesting are refused as the Python loader refuses them. Anything
    irregular raises, and :func:`_load` then asks the Python loader."""
    # The stubs type libyaml's events loosely (a mark may be None): Any here.
    loader: Any = _StrictCLoader(text)
    try:
        loader.get_event()  # StreamStartEvent
        if not loader.check_event(yaml.DocumentStartEvent):
            raise ValueError("no document")
        loader.get_event()
        value = _from_events(loader, 0, entries)
        loader.get_event()  # DocumentEndEvent
        if not loader.check_event(yaml.StreamEndEvent):
            raise ValueError("more than one document")
        return value
    except _LocatedError as exc:
        raise MappingFileError(source, exc.line, None, exc.problem) from None
    finally:
        loader.dispose()


def _from_events(loader: Any, depth: int, entries: _Entries | None = None) -> Any:
    """One value from the event stream; ``depth`` collections enclose it. ``entries`` (from
    the root only) takes the items of the mappings list: the root list, or the root's
    ``mappings``."""
    event: Any = loader.get_event()
    if getattr(event, "anchor", None) is not None:
        # Anchors (unused without aliases, refused when repeated): the Python loader's call.
        raise ValueError("anchor")
    if isinstance(event, yaml.ScalarEvent):
        tag, value = event.tag, event.value
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, value, event.implicit)
        if tag == _STR_TAG and not _SURROGATE.search(value):
            return value  # most scalars: no node needed
        marks: tuple[Any, Any] = (event.start_mark, event.end_mark)
        return _scalar(loader, yaml.ScalarNode(tag, value, *marks, event.style))
    line = event.start_mark.line + 1
    if isinstance(event, yaml.AliasEvent):
        raise _LocatedError(line, "YAML aliases are not allowed")
    if not isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
        raise ValueError(f"unexpected {type(event).__name__}")
    if depth + 1 > MAX_NESTING:
        raise _LocatedError(line, f"nested deeper than {MAX_NESTING} levels")
    sequence = isinstance(event, yaml.SequenceStartEvent)
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(
            yaml.SequenceNode if sequence else yaml.MappingNode, None, event.implicit
        )
    if tag != ("tag:yaml.org,2002:seq" if sequence else "tag:yaml.org,2002:map"):
        raise _LocatedError(line, f"unsupported YAML tag {tag}")
    if sequence:
        items = _LList(line)
        while not loader.check_event(yaml.SequenceEndEvent):
            item_line = loader.peek_event().start_mark.line + 1
            if entries is None:
                items.item_lines.append(item_line)
                items.append(_from_events(loader, depth + 1))
            else:
                entries.add(_from_events(loader, depth + 1), item_line)
        if entries is not None:
            entries.streamed = True
        loader.get_event()
        return items
    mapping = _LDict(line)
    while not loader.check_event(yaml.MappingEndEvent):
        key_line = loader.peek_event().start_mark.line + 1
        key = mapping.new_key(_from_events(loader, depth + 1), key_line)
        streams = entries is not None and depth == 0 and key == "mappings"
        mapping[key] = _from_events(loader, depth + 1, entries if streams else None)
    loader.get_event()
    return mapping


def _load_python(text: str, source: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise MappingFileError(source, None, None, "empty document: expected 'mappings:'")
        return _build(loader, node)
    except _LocatedError as exc:
        raise MappingFileError(source, exc.line, None, exc.problem) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        raise MappingFileError(source, line, None, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        # ReaderError (a byte YAML refuses) carries a position but is not a MarkedYAMLError.
        raise MappingFileError(source, None, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


class _Checker:
    """The checks of one document (or one stored row), keeping every mistake they find.

    A single check raises :class:`MappingFileError` at its value's first problem (one line a
    value); :meth:`fields`, :meth:`each` and :meth:`attempt` keep that mistake and go on to
    the next value, so that one run reports them all (docs/reference.md section 6): the first
    :data:`MAX_REPORTED_ERRORS` in :attr:`errors`, how many more in :attr:`omitted`.

    Mistakes are found in file order: a mapping's own problems (not a mapping, a required key
    missing: reported on the mapping's first line), then its keys as they are written, each
    value's nested ones inside it.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.errors: list[MappingFileError] = []
        # Mistakes found so far, kept or not: a check that raised it found some.
        self.found = 0
        # The line of each well-formed name met so far, whatever else its entry got wrong: a
        # later entry with the same name is a duplicate of it.
        self.names: dict[str, int | None] = {}

    @property
    def omitted(self) -> int:
        return self.found - len(self.errors)

    def fail(self, line: int | None, path: str, problem: str) -> NoReturn:
        raise MappingFileError(self.source, line, path, problem)

    def report(self, line: int | None, path: str, problem: str) -> None:
        self.keep(MappingFileError(self.source, line, path, problem))

    def keep(self, error: MappingFileError) -> None:
        for one in error.all:
            self.found += 1
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(one)

    def attempt(self, check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``check(...)``; its mistake is kept and None returned."""
        try:
            return check(*args, **kwargs)
        except MappingFileError as exc:
            self.keep(exc)
            return None

    def raise_errors(self) -> None:
        """Raises what was found: the one mistake, or :class:`MappingFileErrors`."""
        if len(self.errors) == 1 and not self.omitted:
            raise self.errors[0]
        if self.errors:
            raise MappingFileErrors(self.errors, self.omitted)

    @staticmethod
    def line_of(container: Any, key: str | None = None) -> int | None:
        if isinstance(container, _LDict):
            return container.key_lines.get(key, container.line) if key else container.line
        if isinstance(container, _LList):
            return container.line
        return None

    def fields(
        self, doc: Mapping[str, Any], path: str, table: Mapping[str, _Field]
    ) -> dict[str, Any]:
        """Every field of ``table`` checked in ``doc`` (a missing one gets its default or is
        reported as required) and every other key reported as unknown; the values of the
        fields checked without mistake."""
        values: dict[str, Any] = {}
        # Missing fields first: they are reported on the mapping's own line, above its keys.
        keys = [key for key in table if key not in doc]
        keys += doc
        for key in keys:
            field = table.get(key)
            if field is None:
                self.report(
                    self.line_of(doc, key),
                    f"{path}.{key}",
                    f"unknown key (expected one of: {', '.join(table)})",
                )
                continue
            try:
                values[key] = field(self, doc, path)
            except MappingFileError as exc:
                self.keep(exc)
        return values

    def each(
        self,
        items: list[Any],
        line: int | None,
        path: str,
        check: Callable[[int, Any, int | None, str], object],
    ) -> None:
        """``check(index, item, line, path)`` for every item of a list from the document; each
        item's mistake is kept."""
        for index, item in enumerate(items):
            item_line = items.item_lines[index] if isinstance(items, _LList) else line
            self.attempt(check, index, item, item_line, f"{path}[{index}]")

    def text(
        self,
        doc: Mapping[str, Any],
        key: str,
        path: str,
        *,
        default: str | None = None,
        max_chars: int = MAX_FIELD_CHARS,
    ) -> str:
        where = f"{path}.{key}"
        line = self.line_of(doc, key)
        if key not in doc or doc[key] is None:
            if default is None:
                self.fail(line, where, "required")
            return default
        value = doc[key]
        if not isinstance(value, str):
            self.fail(line, where, "must be a string")
        if not value and default != "":
            self.fail(line, where, "must not be empty")
        if len(value) > max_chars:
            self.fail(line, where, f"must be at most {max_chars} characters")
        self.printable(value, line, where)
        return value

    def printable(self, value: str, line: int | None, path: str) -> None:
        if value.isprintable():
            # No Cc, Cf, Cs, Cn, Zl or Zp character is printable: the common case in one call.
            return
        for char in value:
            if unicodedata.category(char) in _BAD_CATEGORIES:
                self.fail(line, path, f"must not contain the character U+{ord(char):04X}")

    def integer(
        self, doc: Mapping[str, Any], key: str, path: str, bounds: tuple[int, int], default: int
    ) -> int:
        where = f"{path}.{key}"
        line = self.line_of(doc, key)
        value = doc.get(key)
        if value is None:
            return default
        low, high = bounds
        # bool is an int subclass; ``true`` is not a duration.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(line, where, f"must be a whole number of seconds, {low}..{high}")
        if not low <= value <= high:
            self.fail(line, where, f"must be {low}..{high}")
        return value

    def boolean(self, doc: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(self.line_of(doc, key), f"{path}.{key}", "must be true or false")
        return value

    def token(self, doc: Mapping[str, Any], path: str) -> TokenSource | None:
        """``token``: ``broker`` or ``zuplo``; absent (or null) leaves it to the service."""
        value = doc.get("token")
        if value is None:
            return None
        found = next((s for s in TOKEN_SOURCES if isinstance(value, str) and value == s), None)
        if found is None:
            self.fail(self.line_of(doc, "token"), f"{path}.token", "must be broker or zuplo")
        return found

    def pattern(
        self, doc: Mapping[str, Any], key: str, path: str, regex: re.Pattern[str], shape: str
    ) -> str:
        value = self.text(doc, key, path, max_chars=2048)
        if not regex.fullmatch(value):
            self.fail(self.line_of(doc, key), f"{path}.{key}", f"must be {shape}")
        return value


#: Checks one field of a mapping: ``field(check, mapping, path of the mapping)``, the field's
#: value (its default when missing) or a raised :class:`MappingFileError`.
_Field = Callable[[_Checker, Mapping[str, Any], str], Any]


def spec_from_dict(doc: Any, where: str, *, source: str | None = None) -> MappingSpec:
    """Validate one mapping entry (file form) and return it with defaults filled in.

    Used for document entries and for rows read back from the database alike, so both pass the
    same rules. ``where`` is the path printed in errors (``mappings[3]``); ``source`` the file.
    Raises :class:`MappingFileError`, or :class:`MappingFileErrors` with every field's mistake
    when there are several.
    """
    check = _Checker(source)
    spec = _entry(check, doc, where, check.line_of(doc))
    check.raise_errors()
    assert spec is not None  # None only with a mistake, raised above
    return spec


def _entry(check: _Checker, doc: Any, where: str, line: int | None) -> MappingSpec | None:
    """One entry checked, every mistake kept in ``check``; None when it has any."""
    if not isinstance(doc, Mapping):
        check.report(line, where, "must be a mapping")
        return None
    found = check.found
    if len([key for key in PROVIDERS if doc.get(key) is not None]) != 1:
        # Reported on the entry's line; each block given is checked too (its own mistakes).
        check.report(line, where, "exactly one of aws, gcp, azure is required")
    values = check.fields(doc, where, _ENTRY_FIELDS)
    if check.found != found:
        return None
    return MappingSpec(**values)


def _name(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    name = check.text(doc, "name", where, max_chars=63)
    line = check.line_of(doc, "name")
    if not NAME_PATTERN.fullmatch(name):
        check.fail(line, f"{where}.name", "must match [a-z0-9][a-z0-9-]{0,62}")
    # Only a well-formed name is compared: a wrong one is reported once, as wrong.
    if name in check.names:
        first = check.names[name]
        at = f" (first at line {first})" if first is not None else ""
        check.fail(line, f"{where}.name", f"duplicate name {name!r}{at}")
    check.names[name] = line
    return name


def _description(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    return check.text(doc, "description", where, default="", max_chars=MAX_DESCRIPTION_CHARS)


def _enabled(check: _Checker, doc: Mapping[str, Any], where: str) -> bool:
    enabled = doc.get("enabled", True)  # null is not a boolean here
    if not isinstance(enabled, bool):
        check.fail(check.line_of(doc, "enabled"), f"{where}.enabled", "must be true or false")
    return enabled


def _account(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    account = check.text(doc, "account", where)
    if _GLOB_CHARS & set(account):
        check.fail(check.line_of(doc, "account"), f"{where}.account", "must be exact (no glob)")
    return account


def _project(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    project = check.text(doc, "project", where)
    if project != "*" and _GLOB_CHARS & set(project):
        check.fail(check.line_of(doc, "project"), f"{where}.project", 'must be exact or "*"')
    return project


def _deployment(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    deployment = check.text(doc, "deployment", where, default="*")
    if not deployment:
        check.fail(check.line_of(doc, "deployment"), f"{where}.deployment", "must not be empty")
    return deployment


def _environment_type(check: _Checker, doc: Mapping[str, Any], where: str) -> str:
    environment_type = check.text(doc, "environment_type", where, default="*")
    if environment_type not in ENVIRONMENT_TYPES:
        check.fail(
            check.line_of(doc, "environment_type"),
            f"{where}.environment_type",
            'must be production, preview, development or "*"',
        )
    return environment_type


def _cloud(
    check: _Checker,
    doc: Mapping[str, Any],
    where: str,
    *,
    provider: str,
    table: Mapping[str, _Field],
    target: Callable[..., T],
) -> T | None:
    """The entry's ``provider`` block as ``target(**fields)``; None when the entry has none,
    or when the block has mistakes (kept in ``check``)."""
    block = doc.get(provider)
    if block is None:
        return None
    path = f"{where}.{provider}"
    if not isinstance(block, Mapping):
        check.fail(check.line_of(doc, provider), path, "must be a mapping")
    found = check.found
    values = check.fields(block, path, table)
    return target(**values) if check.found == found else None


def _aws(check: _Checker, doc: Mapping[str, Any], where: str) -> AwsTarget | None:
    return _cloud(check, doc, where, provider="aws", table=_AWS_FIELDS, target=AwsTarget)


def _gcp(check: _Checker, doc: Mapping[str, Any], where: str) -> GcpTarget | None:
    return _cloud(check, doc, where, provider="gcp", table=_GCP_FIELDS, target=GcpTarget)


def _azure(check: _Checker, doc: Mapping[str, Any], where: str) -> AzureTarget | None:
    return _cloud(check, doc, where, provider="azure", table=_AZURE_FIELDS, target=AzureTarget)


def _role_arn(check: _Checker, doc: Mapping[str, Any], path: str) -> str:
    return check.pattern(
        doc, "role_arn", path, ROLE_ARN_PATTERN, "an IAM role ARN (arn:aws:iam::<account>:role/…)"
    )


def _duration_seconds(check: _Checker, doc: Mapping[str, Any], path: str) -> int:
    return check.integer(
        doc, "duration_seconds", path, AWS_DURATION_RANGE, DEFAULT_DURATION_SECONDS
    )


def _session_tags(check: _Checker, doc: Mapping[str, Any], path: str) -> bool:
    return check.boolean(doc, "session_tags", path, True)


def _session_policy(check: _Checker, doc: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """An IAM policy document (IAM JSON policy grammar: Version, Id, Statement); absent: none."""
    policy = doc.get("session_policy")
    if policy is None:
        return None
    line, where = check.line_of(doc, "session_policy"), f"{path}.session_policy"
    if not isinstance(policy, Mapping):
        check.fail(line, where, "must be a mapping")
    found = check.found
    try:
        compact = json.dumps(policy, separators=(",", ":"), allow_nan=False)
    except ValueError:
        check.report(line, where, "must be plain JSON (no NaN or infinity)")
    else:
        if len(compact) > MAX_SESSION_POLICY_CHARS:
            check.report(
                line,
                where,
                f"is {len(compact)} characters as compact JSON; "
                f"AWS allows at most {MAX_SESSION_POLICY_CHARS}",
            )
    check.fields(policy, where, _SESSION_POLICY_FIELDS)
    if check.found != found:
        return None
    # Plain dicts and lists: the value outlives the document and must compare equal to one
    # read back from the database.
    plain: dict[str, Any] = json.loads(compact)
    return plain


def _policy_version(check: _Checker, policy: Mapping[str, Any], where: str) -> None:
    if policy.get("Version") not in SESSION_POLICY_VERSIONS:
        check.fail(
            check.line_of(policy, "Version"),
            f"{where}.Version",
            f'must be "{SESSION_POLICY_VERSIONS[0]}" (quoted)',
        )


def _policy_id(check: _Checker, policy: Mapping[str, Any], where: str) -> None:
    _printable_tree(check, policy.get("Id"), check.line_of(policy, "Id"), f"{where}.Id")


def _policy_statements(check: _Checker, policy: Mapping[str, Any], where: str) -> None:
    statement = policy.get("Statement")
    line, path = check.line_of(policy, "Statement"), f"{where}.Statement"
    statements = [statement] if isinstance(statement, Mapping) else statement
    if not isinstance(statements, list) or not statements:
        check.fail(line, path, "must be a statement or a non-empty list of statements")

    def one(_index: int, item: Any, item_line: int | None, item_path: str) -> None:
        if not isinstance(item, Mapping):
            check.fail(item_line, item_path, "must be a mapping")
        _printable_tree(check, item, item_line, item_path)

    check.each(statements, line, path, one)


def _printable_tree(check: _Checker, value: Any, line: int | None, path: str) -> None:
    """Every string in ``value`` (keys too) printable; each one that is not is reported."""
    if isinstance(value, str):
        check.attempt(check.printable, value, line, path)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_line = check.line_of(value, key) or line
            check.attempt(check.printable, key, key_line, path)
            _printable_tree(check, item, key_line, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            item_line = value.item_lines[index] if isinstance(value, _LList) else line
            _printable_tree(check, item, item_line, f"{path}[{index}]")


def _workload_identity_provider(check: _Checker, doc: Mapping[str, Any], path: str) -> str:
    return check.pattern(
        doc,
        "workload_identity_provider",
        path,
        WIF_PROVIDER_PATTERN,
        "//iam.googleapis.com/projects/<number>/locations/global/"
        "workloadIdentityPools/<pool>/providers/<provider>",
    )


def _service_account(check: _Checker, doc: Mapping[str, Any], path: str) -> str | None:
    if doc.get("service_account") is None:
        return None
    return check.pattern(
        doc,
        "service_account",
        path,
        SERVICE_ACCOUNT_PATTERN,
        "a service account email (name@project.iam.gserviceaccount.com)",
    )


def _lifetime_seconds(check: _Checker, doc: Mapping[str, Any], path: str) -> int:
    return check.integer(
        doc, "lifetime_seconds", path, GCP_LIFETIME_RANGE, DEFAULT_DURATION_SECONDS
    )


def _id_token_audiences(check: _Checker, doc: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """The audiences a GCP mapping may issue ID tokens for (docs/reference.md, "GCP ID
    tokens"): ``https://`` URLs with a host, without userinfo or fragment, each once."""
    value = doc.get("id_token_audiences")
    if value is None:
        return ()
    line, where = check.line_of(doc, "id_token_audiences"), f"{path}.id_token_audiences"
    # Whether a service account is given, not whether it is well formed: a wrong one is its
    # own mistake, reported once.
    if doc.get("service_account") is None:
        check.report(
            line, where, "requires service_account (ID tokens are issued for a service account)"
        )
    if not isinstance(value, list) or not value:
        check.fail(line, where, "must be a non-empty list of https:// URLs")
    seen: set[str] = set()

    def one(_index: int, audience: Any, item_line: int | None, item_path: str) -> None:
        if not isinstance(audience, str):
            check.fail(item_line, item_path, "must be a string")
        check.printable(audience, item_line, item_path)
        if len(audience) > MAX_AUDIENCE_CHARS:
            check.fail(item_line, item_path, f"must be at most {MAX_AUDIENCE_CHARS} characters")
        if not _is_audience_url(audience):
            check.fail(
                item_line,
                item_path,
                "must be an https:// URL with a host, without userinfo or fragment",
            )
        if audience in seen:
            check.fail(item_line, item_path, "duplicate audience")
        seen.add(audience)

    check.each(value, line, where, one)
    return tuple(value)


def _is_audience_url(value: str) -> bool:
    """An ``https://`` URL (scheme in lower case, as Google compares the audience exactly) with
    a host and a valid port, and no userinfo, fragment or white space."""
    if not value.startswith("https://") or "#" in value or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0..65535
    except ValueError:
        return False
    return "@" not in parts.netloc and bool(parts.hostname)


def _guid(check: _Checker, doc: Mapping[str, Any], path: str, key: str) -> str:
    value = check.text(doc, key, path)
    # Entra shows GUIDs in lower case; an upper-case copy is the same id.
    if not GUID_PATTERN.fullmatch(value.lower()):
        check.fail(
            check.line_of(doc, key),
            f"{path}.{key}",
            "must be a GUID (8-4-4-4-12 hexadecimal digits, as the Azure portal shows it)",
        )
    return value.lower()


def _tenant_id(check: _Checker, doc: Mapping[str, Any], path: str) -> str:
    return _guid(check, doc, path, "tenant_id")


def _client_id(check: _Checker, doc: Mapping[str, Any], path: str) -> str:
    return _guid(check, doc, path, "client_id")


def _azure_scopes(check: _Checker, doc: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """One resource's ``/.default`` scope: Entra's client credentials grant takes no other."""
    value = doc.get("scopes")
    if value is None:
        return (DEFAULT_AZURE_SCOPE,)
    line, where = check.line_of(doc, "scopes"), f"{path}.scopes"
    if not isinstance(value, list) or not value:
        check.fail(line, where, "must be a list of one <resource>/.default scope")

    def one(index: int, scope: Any, item_line: int | None, item_path: str) -> None:
        if not isinstance(scope, str):
            check.fail(item_line, item_path, "must be a string")
        check.printable(scope, item_line, item_path)
        resource = scope.removesuffix(AZURE_SCOPE_SUFFIX)
        if (
            resource == scope
            or not resource
            or len(scope) > 2048
            or any(char.isspace() for char in scope)
        ):
            check.fail(
                item_line,
                item_path,
                "must be a resource followed by /.default (https://management.azure.com/.default)",
            )
        if index:
            check.fail(
                item_line,
                item_path,
                "one scope only: Entra issues a client credentials token for one resource",
            )

    check.each(value, line, where, one)
    return tuple(value)


def _gcp_scopes(check: _Checker, doc: Mapping[str, Any], path: str) -> tuple[str, ...]:
    value = doc.get("scopes")
    if value is None:
        return (DEFAULT_GCP_SCOPE,)
    line, where = check.line_of(doc, "scopes"), f"{path}.scopes"
    if not isinstance(value, list) or not value:
        check.fail(line, where, "must be a non-empty list of scope URLs")
    seen: set[str] = set()

    def one(_index: int, scope: Any, item_line: int | None, item_path: str) -> None:
        if not isinstance(scope, str):
            check.fail(item_line, item_path, "must be a string")
        parts = urlsplit(scope)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or len(scope) > 2048
            or any(char.isspace() for char in scope)
        ):
            check.fail(item_line, item_path, "must be an https:// scope URL")
        check.printable(scope, item_line, item_path)
        if scope in seen:
            check.fail(item_line, item_path, "duplicate scope")
        seen.add(scope)

    check.each(value, line, where, one)
    return tuple(value)


# The fields of each mapping in the file, in the order the reference lists them (the order an
# unknown key's message names them in). Their names are the fields of the spec.py dataclasses.
_ENTRY_FIELDS: dict[str, _Field] = {
    "name": _name,
    "description": _description,
    "account": _account,
    "project": _project,
    "deployment": _deployment,
    "environment_type": _environment_type,
    "enabled": _enabled,
    "aws": _aws,
    "gcp": _gcp,
    "azure": _azure,
}
_AWS_FIELDS: dict[str, _Field] = {
    "role_arn": _role_arn,
    "duration_seconds": _duration_seconds,
    "session_policy": _session_policy,
    "token": _Checker.token,
    "session_tags": _session_tags,
}
_GCP_FIELDS: dict[str, _Field] = {
    "workload_identity_provider": _workload_identity_provider,
    "service_account": _service_account,
    "scopes": _gcp_scopes,
    "lifetime_seconds": _lifetime_seconds,
    "token": _Checker.token,
    "id_token_audiences": _id_token_audiences,
}
_AZURE_FIELDS: dict[str, _Field] = {
    "tenant_id": _tenant_id,
    "client_id": _client_id,
    "scopes": _azure_scopes,
    "token": _Checker.token,
}
_SESSION_POLICY_FIELDS: dict[str, _Field] = {
    "Version": _policy_version,
    "Id": _policy_id,
    "Statement": _policy_statements,
}
MAPPING_KEYS = tuple(_ENTRY_FIELDS)
AWS_KEYS = tuple(_AWS_FIELDS)
GCP_KEYS = tuple(_GCP_FIELDS)
AZURE_KEYS = tuple(_AZURE_FIELDS)
SESSION_POLICY_KEYS = tuple(_SESSION_POLICY_FIELDS)


def _mappings(check: _Checker, root: Mapping[str, Any], _path: str) -> list[Any]:
    if "mappings" not in root:
        check.fail(check.line_of(root), "mappings", "required")
    listed = root["mappings"]
    if not isinstance(listed, list):
        check.fail(check.line_of(root, "mappings"), "mappings", "must be a list")
    return listed


class _Entries:
    """The entries of a document, each checked as it comes: every mistake is kept (the first
    :data:`MAX_REPORTED_ERRORS`, then a count) and only the specs, never the entries' trees."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.reset()

    def reset(self) -> None:
        self.check = _Checker(self.source)
        self.specs: list[MappingSpec] = []
        self.count = 0
        # Whether the loader handed every entry over (the document's list is then empty).
        self.streamed = False

    def add(self, entry: Any, line: int | None) -> None:
        """The entry that starts on ``line``."""
        spec = _entry(self.check, entry, f"mappings[{self.count}]", line)
        self.count += 1
        if spec is not None:
            self.specs.append(spec)

    def result(self, top: _Checker) -> list[MappingSpec]:
        """The specs, or every mistake: the entries' and the document's own (``top``)."""
        check = self.check
        if top.found:
            # The document's own keys stand before or after its list, which the fast loader
            # checked while reading it: merged in by line. The first errors of each part are
            # the first of the whole.
            merged = sorted([*top.errors, *check.errors], key=lambda error: error.line or 0)
            check.errors = merged[:MAX_REPORTED_ERRORS]
            check.found += top.found
        check.raise_errors()
        return self.specs


def parse_document(text: str, source: str = "<input>") -> list[MappingSpec]:
    """Parse and validate a whole mapping document; raises :class:`MappingFileError` (one
    mistake) or :class:`MappingFileErrors` (several: every field's, of every entry).

    Accepts ``{"mappings": [...]}`` (the file format) or a bare list of entries (the output of
    :func:`dump_json`). Names must be unique within the document.
    """
    entries = _Entries(source)
    root = _load(text, source, entries)
    top = _Checker(source)
    listed: Any = root
    if not isinstance(root, list):
        if not isinstance(root, Mapping):
            top.fail(top.line_of(root), "", "expected a top-level 'mappings:' list")
        listed = top.fields(root, "", {"mappings": _mappings}).get("mappings", [])
    if not entries.streamed:
        # Every entry is checked: one run reports every mistake (README).
        lines = listed.item_lines if isinstance(listed, _LList) else [None] * len(listed)
        for entry, line in zip(listed, lines, strict=True):
            entries.add(entry, line)
    return entries.result(top)


def dump_json(specs: Iterable[MappingSpec]) -> str:
    """The ``sts mappings list --json`` form: a JSON array that :func:`parse_document` accepts.

    Every string was checked printable when parsed, so the raw (not escaped) characters read
    back unchanged.
    """
    return json.dumps([spec.to_document() for spec in specs], indent=2, ensure_ascii=False)
