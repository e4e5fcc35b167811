"""`${VAR}` and `${VAR:-default}` substitution in string values.

Runs before schema validation, so the schema checks the values the gateway will use. The paths of
substituted values are returned: they may hold secrets, so messages about them never show the value.
`$${` writes a literal `${`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import Problem
from .source import Marks, Path

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}?")


def substitute(data: object, marks: Marks, environ: Mapping[str, str]) -> tuple[object, set[Path], list[Problem]]:
    """Return (data with variables replaced, paths that were substituted, problems)."""
    secret_paths: set[Path] = set()
    problems: list[Problem] = []

    def replace_in(text: str, path: Path) -> str:
        def one(m: re.Match) -> str:
            whole = m.group(0)
            if whole == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name is None:
                problems.append(Problem(marks.at(path), f"malformed variable reference {whole!r}: use ${{NAME}} or ${{NAME:-default}}"))
                return whole
            secret_paths.add(path)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(Problem(marks.at(path), f"environment variable {name} is not set (give a default with ${{{name}:-value}})"))
            return ""

        return _REF.sub(one, text) if "$" in text else text

    def walk(value: object, path: Path) -> object:
        if isinstance(value, str):
            return replace_in(value, path)
        if isinstance(value, dict):
            return {k: walk(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, path + (i,)) for i, v in enumerate(value)]
        return value

    return walk(data, ()), secret_paths, problems
