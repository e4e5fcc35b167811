"""File -> `Config`: parse with locations, substitute the environment, validate, build, cross-check.

Collects every problem it can before giving up, so `gatewayd check` reports all errors at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from . import model
from .env import substitute
from .errors import ConfigError, Location, Problem
from .semantic import check
from .source import parse_yaml
from .validate import invalid_paths, validate


def load_bytes(raw: bytes, file: str, environ: Mapping[str, str] | None = None) -> model.Config:
    """Parse, substitute and validate `raw` (named `file` in messages); raise ConfigError with every problem."""
    sha = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(Location(file, 1, 1), f"the file is not UTF-8: {exc.reason} at byte {exc.start}")]) from None
    data, marks, problems = parse_yaml(text, file)
    if problems:
        raise ConfigError(problems)
    data, secret_paths, problems = substitute(data, marks, os.environ if environ is None else environ)
    unset = {p.location for p in problems}  # a missing variable is reported once, not again by the schema
    problems += [p for p in validate(data, marks, secret_paths) if p.location not in unset]
    if problems:
        salvaged = _salvage(data)
        if salvaged is not None:  # cross-check what the schema accepted, to report everything at once
            rest, skip = salvaged
            problems += check(model.build(rest, file, sha, marks, frozenset(secret_paths), skip_routes=skip))
        raise ConfigError(problems)
    config = model.build(data, file, sha, marks, frozenset(secret_paths))
    problems = check(config)
    if problems:
        raise ConfigError(problems)
    return config


_SECTIONS = ("server", "observability", "upstreams", "policies", "routes")


def _salvage(data: object) -> tuple[dict, frozenset[int]] | None:
    """The schema-valid part of a config: (data, indexes of routes left out), or None when too little is left.

    Broken upstreams and policies are replaced by valid stand-ins so references to them still
    resolve; broken routes are left out (their indexes kept, so locations stay right).
    """
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        return None
    rest = {k: data[k] for k in _SECTIONS if k in data} | {"version": 1}
    skip = set()
    for path in invalid_paths(rest):
        section = path[0] if path else None
        if section == "routes" and len(path) >= 2:
            skip.add(path[1])
        elif section == "upstreams" and len(path) >= 2:
            rest["upstreams"] = dict(rest["upstreams"], **{path[1]: {"targets": ["http://invalid.invalid"]}})
        elif section == "policies" and len(path) >= 2:
            rest["policies"] = dict(rest["policies"], **{path[1]: {"headers": {}}})
        elif section in ("server", "observability"):
            rest.pop(section, None)
        else:
            return None
    stand_in = {"match": {"path": "/"}, "respond": {}}
    rest["routes"] = [stand_in if i in skip else r for i, r in enumerate(rest["routes"])]
    if invalid_paths(rest):
        return None
    return rest, frozenset(skip)


def read(path: str) -> bytes:
    """The file's bytes; an unreadable file is a ConfigError at 1:1."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError([Problem(Location(path, 1, 1), f"cannot read config: {exc.strerror}")]) from None


def load(path: str, environ: Mapping[str, str] | None = None) -> model.Config:
    return load_bytes(read(path), path, environ)
