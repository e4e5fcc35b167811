"""YAML text -> plain data plus the line and column of every node.

PyYAML's composer gives nodes with marks; we build the data from those nodes ourselves so each
value and each mapping key keeps its position. Keys are looked up by JSON path: a tuple of
mapping keys and sequence indexes, the same paths jsonschema reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .errors import Location, Problem

Path = tuple[str | int, ...]

try:  # the C loader is several times faster on large configs
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


@dataclass
class Marks:
    """Where each node of a document stands in its file."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path, *, key: bool = False) -> Location:
        """The location of the value at `path` (or of its key), or of the nearest enclosing node."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return Location(self.file, *table[p])
            if key and p in self.values:
                return Location(self.file, *self.values[p])
            p = p[:-1]
        line, col = self.values.get((), (1, 1))
        return Location(self.file, line, col)


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def parse_yaml(text: str, file: str) -> tuple[object, Marks, list[Problem]]:
    """Parse one YAML document; returns (data, marks, problems). Problems are syntax errors or duplicate keys."""
    marks = Marks(file)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _pos(mark) if mark else (1, 1)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return None, marks, [Problem(Location(file, line, col), f"invalid YAML: {message}")]
    except yaml.YAMLError as exc:
        return None, marks, [Problem(Location(file, 1, 1), f"invalid YAML: {exc}")]
    if node is None:
        return None, marks, [Problem(Location(file, 1, 1), "the file is empty: expected a mapping with 'version: 1'")]
    problems: list[Problem] = []
    try:
        data = _build(node, (), marks, problems, _Loader(""))
    except RecursionError:
        return None, marks, [Problem(Location(file, 1, 1), "the document is nested too deeply")]
    return data, marks, problems


def _build(node: yaml.Node, path: Path, marks: Marks, problems: list[Problem], constructor) -> object:
    marks.values[path] = _pos(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(Location(marks.file, *_pos(key_node.start_mark)), "YAML merge keys (<<) are not supported"))
                continue
            key = _build(key_node, path + ("<key>",), marks, problems, constructor)
            if not isinstance(key, str):
                problems.append(Problem(Location(marks.file, *_pos(key_node.start_mark)), f"mapping keys must be strings, got {key!r}"))
                key = str(key)
            child = path + (key,)
            if key in out:
                first = marks.keys[child]
                problems.append(
                    Problem(Location(marks.file, *_pos(key_node.start_mark)), f"duplicate key {key!r} (first defined at line {first[0]})")
                )
                continue
            marks.keys[child] = _pos(key_node.start_mark)
            out[key] = _build(value_node, child, marks, problems, constructor)
        marks.values.pop(path + ("<key>",), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), marks, problems, constructor) for i, item in enumerate(node.value)]
    if node.tag == "tag:yaml.org,2002:timestamp":  # a date is text to the schema, not a datetime
        return node.value
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(Location(marks.file, *_pos(node.start_mark)), f"invalid value: {exc}"))
        return None
