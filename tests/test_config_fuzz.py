"""Fuzz the config loader: any bytes may only produce a Config or a ConfigError whose problems are located."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes

VALID = (Path(__file__).parent / "golden" / "valid.yaml").read_text()
KEYS = ["version", "server", "listen", "routes", "match", "path", "path_prefix", "path_regex", "methods", "respond",
        "redirect", "upstream", "upstreams", "targets", "policies", "headers", "rewrite", "status", "json", "to", "x"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 1000), st.floats(allow_nan=False),
    st.sampled_from(["/", "/a/{id}", "{", "${X}", "${X:-1}", "GET", "http://127.0.0.1:1", "1s", "", "[", "*"]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30,
)


def _load(raw: bytes) -> None:
    try:
        load_bytes(raw, "fuzz.yaml", environ={})
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.location.file == "fuzz.yaml" and p.location.line >= 1 and p.location.column >= 1 and p.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_documents(doc) -> None:
    _load(yaml.safe_dump(doc).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    _load(raw)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 8), st.text(max_size=6))
def test_mutated_valid_config(at: int, cut: int, insert: str) -> None:
    _load((VALID[:at] + insert + VALID[at + cut :]).encode())
