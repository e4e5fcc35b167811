"""JSON Schema validation of a parsed config, with every error located and phrased for people.

The schema in `schemas/gateway.schema.json` is the single source of truth for the config's shape;
this module only translates jsonschema's errors into `Problem`s that point at the offending key or
value, suggests the likely intended key for typos, and never prints a substituted (secret) value.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path as FsPath

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from .errors import Problem
from .source import Marks, Path

SCHEMA_PATH = FsPath(__file__).with_name("gateway.schema.json")  # schemas/gateway.schema.json links here


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())


def validate(data: object, marks: Marks, secret_paths: set[Path]) -> list[Problem]:
    """Every schema violation in `data` as a located problem."""
    problems = []
    for error in _validator().iter_errors(data):
        problems.extend(_explain(error, marks, secret_paths))
    # one problem per location and message: oneOf/anyOf branches can repeat each other
    return list(dict.fromkeys(problems))


def invalid_nodes(data: object) -> list[tuple[Path, tuple[str, ...]]]:
    """Where `data` fails the schema, for salvaging the valid rest: (path of a node, the keys it does not
    allow), with no keys when the node itself is wrong. A key it does not allow is an unknown one, or a
    map's key that is not a valid name."""
    nodes = []
    for error in _validator().iter_errors(data):
        path: Path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            nodes.append((path, _unknown_keys(error)))
        elif _is_key(error):
            nodes.append((path, (error.instance,)))
        else:
            nodes.append((path, ()))
    return nodes


def _is_key(error: ValidationError) -> bool:
    """Whether the error is about a map's key (`propertyNames`): the instance is the key, the path the map's."""
    return "propertyNames" in error.absolute_schema_path


def _unknown_keys(error: ValidationError) -> tuple[str, ...]:
    allowed = error.schema.get("properties", {})
    return tuple(key for key in error.instance if key not in allowed)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _secret(path: Path, secret_paths: set[Path]) -> bool:
    """Whether the value at `path` holds a substituted value, or is held in one."""
    return any(path[: len(p)] == p or p[: len(path)] == path for p in secret_paths)


def _show(value: object, path: Path, secret_paths: set[Path]) -> str:
    if _secret(path, secret_paths):
        return "the substituted value"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(error: ValidationError) -> str:
    """`routes[2].match.path`: the path of the node, as users write it."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return text or "the top level"


def _expected(error: ValidationError, otherwise: str) -> str:
    """What the node should be: the first sentence of its description, or `otherwise`."""
    what = error.schema.get("description", "").split(".")[0]
    return what[0].lower() + what[1:] if what else otherwise


def _explain(error: ValidationError, marks: Marks, secret_paths: set[Path]) -> list[Problem]:
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        out = []
        for key in _unknown_keys(error):
            hint = did_you_mean(key, allowed) or (f"; allowed: {', '.join(sorted(allowed))}" if allowed else "")
            out.append(Problem(marks.at(path + (key,), key=True), f"unknown key {key!r} in {_where(error)}{hint}"))
        return out
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [Problem(marks.at(path, key=True), f"{_where(error)}: missing required key {', '.join(map(repr, missing))}")]
    if _is_key(error):
        bad = error.instance
        message = f"invalid name {bad!r} in {_where(error)}: expected {_expected(error, error.message)}"
        return [Problem(marks.at(path + (bad,), key=True), message)]
    if kind in ("oneOf", "anyOf") and all(set(b) == {"required"} for b in error.validator_value):
        # "exactly one of these keys" written as branches of plain `required` lists
        options = [k for b in error.validator_value for k in b["required"]]
        present = [k for k in options if isinstance(error.instance, dict) and k in error.instance]
        if not present:
            message = f"{_where(error)} needs one of {', '.join(options)}"
        else:
            message = f"{_where(error)} has {' and '.join(present)}: give only one of {', '.join(options)}"
        return [Problem(marks.at(path, key=True), message)]
    if kind in ("oneOf", "anyOf") and error.context:
        return _explain(best_match(error.context), marks, secret_paths)
    if kind == "enum":
        shown = _show(error.instance, path, secret_paths)
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        hint = did_you_mean(str(error.instance), [str(v) for v in error.validator_value]) if isinstance(error.instance, str) else ""
        return [Problem(marks.at(path), f"{_where(error)}: {shown} is not one of {allowed}{hint}")]
    if kind == "pattern":
        shown = _show(error.instance, path, secret_paths)
        expected = _expected(error, f"a string matching {error.validator_value}")
        return [Problem(marks.at(path), f"{_where(error)}: {shown} is not valid: expected {expected}")]
    if kind == "type":
        shown = _show(error.instance, path, secret_paths)
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        return [Problem(marks.at(path), f"{_where(error)}: expected {expected}, got {shown}")]
    if kind == "minItems":
        n = error.validator_value
        return [Problem(marks.at(path), f"{_where(error)}: needs at least {n} item{'s' if n != 1 else ''}")]
    if kind == "minProperties":
        return [Problem(marks.at(path), f"{_where(error)}: must not be empty")]
    if kind == "uniqueItems":
        return [Problem(marks.at(path), f"{_where(error)}: has the same item more than once")]
    if kind == "format" and error.validator_value == "regex":
        return [Problem(marks.at(path), f"{_where(error)}: not a valid regular expression")]
    if kind == "const":
        return [Problem(marks.at(path), f"{_where(error)}: must be {json.dumps(error.validator_value)}")]
    if kind in ("not", "dependentRequired", "if", "then"):
        return [Problem(marks.at(path, key=True), f"{_where(error)}: {error.schema.get('description') or error.message}")]
    message = error.message
    if _secret(path, secret_paths):
        message = f"the substituted value fails the '{kind}' rule"
    return [Problem(marks.at(path), f"{_where(error)}: {message}")]
