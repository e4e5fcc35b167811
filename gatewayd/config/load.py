"""File -> `Config`: parse with locations, substitute the environment, validate, build, cross-check.

Collects every problem it can before giving up, so `gatewayd check` reports all errors at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace

from . import model
from .env import substitute
from .errors import ConfigError, Location, Problem
from .salvage import salvage
from .semantic import check
from .source import parse_yaml
from .validate import validate


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
        salvaged = salvage(data)
        if salvaged is not None:  # cross-check what the schema accepted, to report everything at once
            rest, skip, policies = salvaged
            partial = model.build(rest, file, sha, marks, frozenset(secret_paths), skip_routes=skip)
            # policies that failed the schema still resolve, as empty bundles
            partial = replace(partial, policies=partial.policies | {name: {} for name in policies})
            problems += check(partial)
        raise ConfigError(problems)
    config = model.build(data, file, sha, marks, frozenset(secret_paths))
    problems = check(config)
    if problems:
        raise ConfigError(problems)
    return config


def read(path: str) -> bytes:
    """The file's bytes; an unreadable file is a ConfigError at 1:1."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError([Problem(Location(path, 1, 1), f"cannot read config: {exc.strerror}")]) from None


def load(path: str, environ: Mapping[str, str] | None = None) -> model.Config:
    return load_bytes(read(path), path, environ)
