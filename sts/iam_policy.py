"""IAM policy condition evaluation, as AWS evaluates the condition operators the service writes
and reads (IAM User Guide, "IAM JSON policy elements: Condition operators").

Two users: the revocation deny documents (:mod:`sts.revocations`), which the service evaluates
against each cached credential's session so that it never serves credentials a printed policy
denies, and the AWS emulator's trust check (:mod:`sts.dev.aws_iam`). One implementation, so the
documents the operator attaches and what the service assumes of them cannot drift apart.

Supported: ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``, ``StringLike``,
``StringNotLike``, ``DateLessThan``, ``DateGreaterThan``, ``Null``, the ``IfExists`` suffix and
the ``ForAllValues`` / ``ForAnyValue`` qualifiers. Anything else raises :class:`ValueError`: a
condition this code cannot evaluate must never be taken as true or false silently.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import datetime
from typing import Any

Context = Mapping[str, list[str]]


def as_list(value: Any) -> list[Any]:
    """A policy element's value as a list (IAM allows a single value or a list)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def match(operator: str, actual: str, expected: str) -> bool:
    """One comparison of a condition operator (without its ``Not``: the caller negates)."""
    if operator in ("StringEquals", "StringNotEquals"):
        return actual == expected
    if operator == "StringEqualsIgnoreCase":
        return actual.lower() == expected.lower()
    if operator in ("StringLike", "StringNotLike"):
        return fnmatch.fnmatchcase(actual, expected)
    if operator == "DateLessThan":
        return _instant(actual) < _instant(expected)
    if operator == "DateGreaterThan":
        return _instant(actual) > _instant(expected)
    raise ValueError(f"condition operator {operator} not supported")


def conditions_hold(conditions: Mapping[str, Any], context: Context) -> bool:
    """Every operator block, every key in it (AND); any listed value per key (OR)."""
    for full_operator, block in conditions.items():
        qualifier, _, operator = full_operator.rpartition(":")
        if_exists = operator.endswith("IfExists")
        operator = operator.removesuffix("IfExists")
        for key, expected_values in block.items():
            expected = [str(v) for v in as_list(expected_values)]
            if operator == "Null":
                absent = key not in context or not context[key]
                if absent != (expected[0].lower() == "true"):
                    return False
                continue
            actual = context.get(key)
            if not actual:
                if if_exists or qualifier == "ForAllValues":
                    continue
                return False
            negated = operator.startswith("StringNot")
            if qualifier == "ForAllValues":
                ok = all(any(match(operator, a, e) for e in expected) for a in actual)
            else:
                ok = any(match(operator, a, e) for a in actual for e in expected)
            if ok == negated:
                return False
    return True


def denied(policy: Mapping[str, Any], action: str, context: Context) -> bool:
    """Does an identity policy's ``Deny`` statement apply to ``action`` in ``context``?
    (``Resource`` is taken as matching: the service's documents deny ``*``.)"""
    for statement in as_list(policy.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            continue
        actions = as_list(statement.get("Action"))
        if not any(fnmatch.fnmatchcase(action, pattern) for pattern in actions):
            continue
        if conditions_hold(statement.get("Condition", {}), context):
            return True
    return False
