"""Markdown reference for `gateway.yaml`, rendered from `schemas/gateway.schema.json`.

`render_reference(schema)` gives one table per object (key path, type, default, allowed values,
description) followed by a table of the named value formats (duration, path, ...). The schema is the
single source of truth; README.md embeds the output between two markers, and

    python -m gatewayd.config.reference                 # print the reference
    python -m gatewayd.config.reference --write-readme  # refresh README.md's block
    python -m gatewayd.config.reference --check         # exit 1 if README.md's block is stale

keep it in step.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from .validate import SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[2]
README_PATH = ROOT / "README.md"

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"

_DASH = "-"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- small Markdown helpers -------------------------------------------------------------------


def _code(text: str) -> str:
    """`text` as a code span, whatever backticks it contains."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    """Text safe inside a table cell: one line, pipes escaped (also inside code spans, as GFM wants)."""
    return " ".join(text.split()).replace("|", "\\|") or _DASH


_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_SPECIAL = re.compile(r"[\\*<>\[\]$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def _text(text: str) -> str:
    """A description as Markdown: code spans kept, everything else that Markdown (or GitHub's math)
    would interpret escaped, so `*.example.com` outside backticks stays literal."""
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_SPECIAL.sub(lambda c: "\\" + c.group(0), text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_SPECIAL.sub(lambda c: "\\" + c.group(0), text[pos:]))
    return "".join(out)


def _value(value: object) -> str:
    """A value as it would be written in YAML, in a code span: strings that YAML would read as
    something else (numbers, booleans, null) are quoted."""
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value and value.strip() == value and value != ""
        except yaml.YAMLError:
            plain = False
        return _code(value if plain else json.dumps(value))
    return _code(json.dumps(value, ensure_ascii=False))


def _values(values: list) -> str:
    return ", ".join(_value(v) for v in values)


# --- schema walking ---------------------------------------------------------------------------


class _Renderer:
    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.defs: dict = schema.get("$defs", {})
        self.sections: list[str] = []
        self.rendered_at: dict[str, str] = {}  # $ref of an object definition -> key path of its section

    # resolution

    def _target(self, s: dict) -> tuple[str | None, dict]:
        """(def name, def schema) when `s` is a local $ref, else (None, {})."""
        ref = s.get("$ref")
        if not ref:
            return None, {}
        prefix = "#/$defs/"
        if not ref.startswith(prefix) or ref[len(prefix) :] not in self.defs:
            raise ValueError(f"unsupported or dangling $ref {ref!r}")
        name = ref[len(prefix) :]
        return name, self.defs[name]

    def _merged(self, s: dict) -> dict:
        """`s` with its $ref target's keywords underneath (the referring schema's own keywords win)."""
        _, target = self._target(s)
        if not target:
            return s
        return {**self._merged(target), **{k: v for k, v in s.items() if k != "$ref"}}

    def _is_format(self, s: dict) -> bool:
        """A named value format: a $def with a title that is not an object with properties."""
        name, target = self._target(s)
        return name is not None and "title" in target and "properties" not in target

    @staticmethod
    def _is_fixed_object(s: dict) -> bool:
        return "properties" in s

    # cells

    def type_of(self, s: dict) -> str:
        if self._is_format(s):
            return self._target(s)[1]["title"]
        m = self._merged(s)
        for key in ("anyOf", "oneOf"):
            if key in m and all("required" not in b for b in m[key]):
                return " or ".join(self.type_of(b) for b in m[key])
        t = m.get("type")
        if t is None and "const" in m:
            t = type(m["const"]).__name__
        if isinstance(t, list):
            # `type: [string, null]` with `if: {type: string}, then: <format>` reads as "<format> or null"
            then = m.get("then")
            then_type = self._merged(then).get("type") if then else None
            return " or ".join(self.type_of(then) if then and x == then_type else x for x in t)
        if t == "array":
            return f"array of {self.type_of(m.get('items', {}))}"
        if t == "object" and not self._is_fixed_object(m) and isinstance(m.get("additionalProperties"), dict):
            return f"map of {self.type_of(m['additionalProperties'])}"
        return t or "any"

    def allowed(self, s: dict) -> list[str]:
        """Constraints of `s`; a named format's own constraints are described once, under Value formats."""
        m = s if self._is_format(s) else self._merged(s)
        out = []
        if "const" in m:
            out.append(_value(m["const"]))
        if "enum" in m:
            out.append(_values(m["enum"]))
        if "pattern" in m and not self._is_format(s):
            out.append(f"matches {_code(m['pattern'])}")
        lo, hi = m.get("minimum"), m.get("maximum")
        if lo is not None and hi is not None:
            out.append(f"{lo} to {hi}")
        elif lo is not None:
            out.append(f"at least {lo}")
        elif hi is not None:
            out.append(f"at most {hi}")
        if "minLength" in m:
            out.append("non-empty" if m["minLength"] == 1 else f"at least {m['minLength']} characters")
        if m.get("format") == "regex":
            out.append("a valid regular expression")
        if "minItems" in m:
            out.append(f"at least {m['minItems']} item{'s' if m['minItems'] != 1 else ''}")
        if m.get("uniqueItems"):
            out.append("no duplicates")
        if "items" in m and not self._is_format(m["items"]):
            out += [f"each {c}" for c in self.allowed(m["items"])]
        if "propertyNames" in m:
            names = m["propertyNames"]
            if self._is_format(names):
                out.append(f"keys: {self._target(names)[1]['title']}")
            else:
                out += [f"keys: {c}" for c in self.allowed(names)]
        for key in ("anyOf", "oneOf"):
            for branch in m.get(key, []):
                if "required" not in branch:
                    out += self.allowed(branch)
        if "then" in m:
            out += self.allowed(m["then"])
        if "examples" in m:
            out.append(f"e.g. {_values(m['examples'])}")
        return out

    def notes(self, m: dict) -> list[str]:
        """Rules about an object as a whole."""
        out = []
        for key in ("oneOf", "anyOf"):
            branches = m.get(key, [])
            if branches and all(set(b) == {"required"} and len(b["required"]) == 1 for b in branches):
                keys = ", ".join(_code(b["required"][0]) for b in branches)
                out.append(f"{'Exactly' if key == 'oneOf' else 'At least'} one of {keys} is required.")
        for key, needs in m.get("dependentRequired", {}).items():
            out.append(f"{_code(key)} is only allowed together with {' and '.join(map(_code, needs))}.")
        excluded = m.get("not", {}).get("required")
        if excluded and set(m["not"]) == {"required"}:
            out.append(f"{' and '.join(map(_code, excluded))} cannot all be set together." if len(excluded) > 2
                       else f"{' and '.join(map(_code, excluded))} cannot both be set.")
        for sub in m.get("allOf", []):
            out += self.notes(sub)
        if m.get("minProperties"):
            n = m["minProperties"]
            out.append("At least one key must be set." if n == 1 else f"At least {n} keys must be set.")
        return out

    # sections

    def section(self, path: str, s: dict, heading: str | None = None) -> None:
        """A table for the object `s` at key path `path`, then sections for its nested objects."""
        m = self._merged(s)
        props: dict = m["properties"]
        required = set(m.get("required", []))
        nested: list[tuple[str, dict]] = []
        lines = [f"### {heading or _code(path)}", ""]
        if m.get("description"):
            lines += [_text(m["description"]), ""]
        lines += ["| Key | Type | Default | Allowed values | Description |", "| --- | --- | --- | --- | --- |"]
        for key, p in props.items():
            key_path = f"{path}.{key}" if path else key
            description = self._merged(p).get("description", "")
            child, child_path = self._object_child(p, key_path)
            if child is not None:
                ref = child.get("$ref")
                if ref and ref in self.rendered_at:
                    description += f" Same keys as {_code(self.rendered_at[ref])}."
                else:
                    if ref:
                        self.rendered_at[ref] = child_path
                    nested.append((child_path, child))
            if "default" in p:
                default = _value(p["default"])
            elif key in required:
                default = "*required*"
            else:
                default = _DASH
            lines.append(
                "| "
                + " | ".join(
                    [
                        _cell(_code(key_path)),
                        _cell(self.type_of(p)),
                        _cell(default),
                        _cell("; ".join(self.allowed(p))),
                        _cell(_text(description)),
                    ]
                )
                + " |"
            )
        notes = self.notes(m)
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        self.sections.append("\n".join(lines))
        for child_path, child in nested:
            self.section(child_path, child)

    def _object_child(self, p: dict, key_path: str) -> tuple[dict | None, str]:
        """The object schema nested under property `p` (directly, as map values or as array items)."""
        m = self._merged(p)
        if self._is_fixed_object(m):
            return p, key_path
        values = m.get("additionalProperties")
        if m.get("type") == "object" and isinstance(values, dict) and self._is_fixed_object(self._merged(values)):
            return values, f"{key_path}.<name>"
        items = m.get("items")
        if m.get("type") == "array" and isinstance(items, dict) and self._is_fixed_object(self._merged(items)):
            return items, f"{key_path}[]"
        return None, key_path

    def formats(self) -> None:
        rows = []
        for name, d in self.defs.items():
            s = {"$ref": f"#/$defs/{name}"}
            if not self._is_format(s):
                continue
            m = self._merged(d)
            allowed = self.allowed(m)
            rows.append(
                "| "
                + " | ".join([_cell(d["title"]), _cell(self.type_of(m)), _cell("; ".join(allowed)), _cell(_text(m.get("description", "")))])
                + " |"
            )
        if rows:
            lines = [
                "### Value formats",
                "",
                "Named formats used in the Type column above.",
                "",
                "| Format | Type | Allowed values | Description |",
                "| --- | --- | --- | --- |",
                *rows,
            ]
            self.sections.append("\n".join(lines))

    def render(self) -> str:
        self.section("", self.schema, heading="Top level")
        self.formats()
        return "\n\n".join(self.sections) + "\n"


def render_reference(schema: dict) -> str:
    """The Markdown configuration reference for `schema` (ends with a newline)."""
    return _Renderer(schema).render()


# --- README block -------------------------------------------------------------------------------


def readme_block(text: str) -> str:
    """The text between README's markers, without the blank lines that frame it."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START_MARKER} ... {END_MARKER} block")
    return text[start + len(START_MARKER) : end].strip("\n") + "\n"


def splice_readme(text: str, reference: str) -> str:
    """`text` with the block between the markers replaced by `reference`."""
    readme_block(text)  # raises if the markers are missing
    start = text.find(START_MARKER) + len(START_MARKER)
    end = text.find(END_MARKER)
    return text[:start] + "\n\n" + reference.strip("\n") + "\n\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gatewayd.config.reference",
        description="Render the gateway.yaml reference from the JSON Schema.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write-readme", action="store_true", help="replace the reference block in README.md")
    group.add_argument("--check", action="store_true", help="exit 1 if README.md's reference block is out of date")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help="schema file (default: %(default)s)")
    parser.add_argument("--readme", type=Path, default=README_PATH, help="README file (default: %(default)s)")
    args = parser.parse_args(argv)

    reference = render_reference(load_schema(args.schema))
    if not (args.write_readme or args.check):
        sys.stdout.write(reference)
        return 0
    text = args.readme.read_text(encoding="utf-8")
    if args.check:
        if readme_block(text) != reference:
            print(f"{args.readme.name} is out of date: run python -m gatewayd.config.reference --write-readme", file=sys.stderr)
            return 1
        return 0
    updated = splice_readme(text, reference)
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
