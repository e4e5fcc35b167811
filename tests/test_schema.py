"""The gateway.yaml JSON Schema: well-formed, strict, accepts the documented shape, rejects the
usual mistakes, and README.md's configuration reference is the one rendered from it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from jsonschema import Draft202012Validator

from gatewayd.config import reference
from gatewayd.config.reference import END_MARKER, START_MARKER, readme_block, render_reference, splice_readme

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "schemas" / "gateway.schema.json"
README_FILE = ROOT / "README.md"

SAMPLE = r"""
# yaml-language-server: $schema=../schemas/gateway.schema.json
version: 1
server:
  listen: ["127.0.0.1:8080", "[::1]:8080", "localhost:9000"]
  engine: granian
  http: auto
observability:
  server_timing: true
  endpoints:
    health: /health
upstreams:
  items:
    targets: ["http://127.0.0.1:9001", "https://items.internal:8443"]
    balance: round_robin
    timeouts:
      connect: 1s
      response: 30s
    max_connections: 100
  legacy.v1:
    targets: ["http://10.0.0.7"]
    balance: least_requests
    timeouts: {connect: 250ms, response: 1.5m}
policies:
  keyed:
    headers:
      request:
        set: {X-Api-Key: secret}
        add: {X-Forwarded-Proto: https}
        remove: [Cookie]
      response:
        set: {Cache-Control: no-store}
        remove: [Server, X-Powered-By]
routes:
  - name: items-by-id
    match:
      path: "/v1/items/{id}"
      methods: [GET, HEAD]
      host: api.example.com
    policies: [keyed]
    upstream: items
  - name: v1
    match:
      path_prefix: /v1
      host: "*.example.com"
      headers: {X-Env: canary}
      query: {version: "2"}
    upstream: items
    rewrite:
      strip_prefix: /v1
      add_prefix: /api
  - match:
      path_regex: "^/v[0-9]+/legacy/(?P<rest>.*)$"
      methods: [PROPFIND]
    redirect:
      to: "https://example.com/v2/items/{id}"
      status: 302
      keep_query: true
  - name: "status:ok"
    match: {path: /status}
    respond:
      status: 200
      headers: {Cache-Control: no-store}
      json: {ok: true}
  - match: {path: /robots.txt}
    respond: {body: "User-agent: *\nDisallow: /\n"}
"""


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def sample() -> dict:
    return yaml.safe_load(SAMPLE)


def walk(node, path=()):
    """Every subschema (dict) in the schema with its JSON-pointer-ish path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("default", "examples", "const", "enum"):
                continue  # instance data, not schemas
            if key == "properties":
                for name, sub in value.items():
                    yield from walk(sub, path + (key, name))
            else:
                yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, path + (i,))


def is_object_schema(s: dict) -> bool:
    return s.get("type") == "object" or "properties" in s


# --- (a) the schema itself ------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema.get("title") and schema.get("description")


def test_top_level_description_mentions_environment_substitution(schema):
    assert "${VAR}" in schema["description"] and "${VAR:-default}" in schema["description"]


def test_required_defs_exist(schema):
    for name in ("duration", "size", "header_name", "header_map", "method", "path", "name"):
        assert name in schema["$defs"], name
    for example in ("250ms", "30s", "5m"):
        assert example in schema["$defs"]["duration"]["description"]


def test_every_ref_resolves(schema):
    refs = [s["$ref"] for _, s in walk(schema) if "$ref" in s]
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_every_pattern_compiles(schema):
    patterns = [s["pattern"] for _, s in walk(schema) if isinstance(s.get("pattern"), str)]
    assert patterns
    for pattern in patterns:
        re.compile(pattern)


# --- (b) strictness and documentation -------------------------------------------------------------


def test_every_object_is_closed(schema):
    """Objects with fixed keys forbid others; maps (name -> value) constrain their keys instead."""
    for path, s in walk(schema):
        if not is_object_schema(s):
            continue
        where = "/".join(map(str, path)) or "(root)"
        if "properties" in s:
            assert s.get("additionalProperties") is False or s.get("unevaluatedProperties") is False, where
        else:
            assert isinstance(s.get("additionalProperties"), dict) and "propertyNames" in s, f"{where}: open object"


def test_every_property_has_a_description(schema):
    for path, s in walk(schema):
        for name, prop in s.get("properties", {}).items():
            assert isinstance(prop.get("description"), str) and prop["description"].strip(), "/".join(map(str, path + (name,)))


def test_every_definition_has_a_description(schema):
    for name, d in schema["$defs"].items():
        assert d.get("description", "").strip(), name


def test_defaults_and_examples_satisfy_their_own_schema(schema):
    checked = 0
    for path, s in walk(schema):
        values = ([s["default"]] if "default" in s else []) + list(s.get("examples", []))
        if not values:
            continue
        sub = {k: v for k, v in s.items() if k not in ("default", "examples")}
        v = Draft202012Validator({**sub, "$defs": schema["$defs"]}, format_checker=jsonschema.FormatChecker())
        for value in values:
            errors = [e.message for e in v.iter_errors(value)]
            assert not errors, f"{'/'.join(map(str, path))}: {value!r}: {errors}"
            checked += 1
    assert checked > 20


def test_one_of_branches_are_plain_required_lists(schema):
    """The config checker turns these into 'give exactly one of ...' messages."""
    seen = 0
    for path, s in walk(schema):
        for branch in s.get("oneOf", []):
            assert set(branch) == {"required"}, "/".join(map(str, path))
            seen += 1
    assert seen >= 6  # route actions and match paths


# --- (c) instances ---------------------------------------------------------------------------------


def errors_for(validator, instance) -> list[jsonschema.ValidationError]:
    return list(validator.iter_errors(instance))


def test_sample_config_validates(validator, sample):
    assert SAMPLE.lstrip().startswith("# yaml-language-server: $schema=../schemas/gateway.schema.json")
    assert [e.message for e in errors_for(validator, sample)] == []


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(validator, path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [e.message for e in errors_for(validator, data)] == []


MINIMAL = {"version": 1, "routes": [{"match": {"path": "/"}, "respond": {}}]}


def _set(path, value):
    def apply(cfg):
        node = cfg
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        node[path[-1]] = value

    return apply


def _delete(path):
    def apply(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


VALID_VARIANTS = {
    "minimal": lambda cfg: cfg.clear() or cfg.update(copy.deepcopy(MINIMAL)),
    "health disabled": _set(["observability", "endpoints", "health"], None),
    "http 1": _set(["server", "http"], "1"),
    "http 2": _set(["server", "http"], "2"),
    "hypercorn": _set(["server", "engine"], "hypercorn"),
    "listen all interfaces": _set(["server", "listen"], ["0.0.0.0:80", "[::]:65535"]),
    "decimal duration": _set(["upstreams", "items", "timeouts", "connect"], "0.5s"),
    "hour duration": _set(["upstreams", "items", "timeouts", "response"], "1h"),
    "empty respond": _set(["routes", 3, "respond"], {}),
    "respond any json": _set(["routes", 3, "respond", "json"], [1, "two", None]),
    "redirect to path": _set(["routes", 2, "redirect"], {"to": "/v2/items/{id}", "status": 308, "keep_query": False}),
    "rewrite strip only": _set(["routes", 1, "rewrite"], {"strip_prefix": "/v1"}),
    "empty header value": _set(["policies", "keyed", "headers", "request", "set"], {"X-Empty": ""}),
    "no optional sections": lambda cfg: [cfg.pop(k) for k in ("server", "observability")],
    "health checks": _set(["upstreams", "items", "health"], {"path": "/healthz", "interval": "2s", "timeout": "500ms", "healthy_threshold": 2, "unhealthy_threshold": 3}),
    "health path only": _set(["upstreams", "items", "health"], {"path": "/"}),
    "retries": _set(["upstreams", "items", "retries"], {"attempts": 3, "budget": 0.1, "per_try_timeout": "2s"}),
    "no retries": _set(["upstreams", "items", "retries"], {"attempts": 1}),
    "integer budget": _set(["upstreams", "items", "retries"], {"budget": 1}),
    "outlier off": _set(["upstreams", "items", "outlier"], {"consecutive_failures": 0}),
    "outlier": _set(["upstreams", "items", "outlier"], {"consecutive_failures": 3, "ejection_time": "30s"}),
    "slow start": _set(["upstreams", "items", "slow_start"], "30s"),
}


@pytest.mark.parametrize("mutate", VALID_VARIANTS.values(), ids=VALID_VARIANTS.keys())
def test_valid_variants(validator, sample, mutate):
    mutate(sample)
    assert [e.message for e in errors_for(validator, sample)] == []


ROUTE0 = ["routes", 0]
MATCH0 = ["routes", 0, "match"]

# id -> (mutation, expected validator keyword of at least one error, its location)
INVALID_VARIANTS = {
    # unknown keys, at several depths
    "unknown top-level key": (_set(["routs"], []), "additionalProperties", ()),
    "unknown server key": (_set(["server", "port"], 8080), "additionalProperties", ("server",)),
    "unknown upstream key": (_set(["upstreams", "items", "target"], "http://x"), "additionalProperties", ("upstreams", "items")),
    "unknown timeout key": (_set(["upstreams", "items", "timeouts", "idle"], "5s"), "additionalProperties", ("upstreams", "items", "timeouts")),
    "unknown route key": (_set(ROUTE0 + ["methods"], ["GET"]), "additionalProperties", ("routes", 0)),
    "unknown match key": (_set(MATCH0 + ["paths"], ["/a"]), "additionalProperties", ("routes", 0, "match")),
    "unknown policy kind": (_set(["policies", "keyed", "ratelimit"], {}), "additionalProperties", ("policies", "keyed")),
    "unknown rewrite op": (_set(["policies", "keyed", "headers", "request", "rename"], {}), "additionalProperties", ("policies", "keyed", "headers", "request")),
    # version
    "missing version": (_delete(["version"]), "required", ()),
    "version 2": (_set(["version"], 2), "const", ("version",)),
    "version as string": (_set(["version"], "1"), "type", ("version",)),
    # routes and actions
    "missing routes": (_delete(["routes"]), "required", ()),
    "empty routes": (_set(["routes"], []), "minItems", ("routes",)),
    "two actions in one route": (_set(ROUTE0 + ["respond"], {"status": 204}), "oneOf", ("routes", 0)),
    "three actions in one route": (
        lambda c: c["routes"][0].update(respond={}, redirect={"to": "/x"}),
        "oneOf",
        ("routes", 0),
    ),
    "no action": (_delete(ROUTE0 + ["upstream"]), "oneOf", ("routes", 0)),
    "missing match": (_delete(MATCH0), "required", ("routes", 0)),
    "rewrite without upstream": (
        lambda c: c["routes"][1].pop("upstream") and c["routes"][1].update(respond={}),
        "dependentRequired",
        ("routes", 1),
    ),
    "empty rewrite": (_set(["routes", 1, "rewrite"], {}), "minProperties", ("routes", 1, "rewrite")),
    "body and json": (_set(["routes", 3, "respond", "body"], "ok"), "not", ("routes", 3, "respond")),
    "respond status 600": (_set(["routes", 3, "respond", "status"], 600), "maximum", ("routes", 3, "respond", "status")),
    "redirect status 300": (_set(["routes", 2, "redirect", "status"], 300), "enum", ("routes", 2, "redirect", "status")),
    "redirect without to": (_delete(["routes", 2, "redirect", "to"]), "required", ("routes", 2, "redirect")),
    "bad route name": (_set(ROUTE0 + ["name"], "-items"), "pattern", ("routes", 0, "name")),
    "duplicate route policies": (_set(ROUTE0 + ["policies"], ["keyed", "keyed"]), "uniqueItems", ("routes", 0, "policies")),
    "bad upstream reference name": (_set(ROUTE0 + ["upstream"], "9items"), "pattern", ("routes", 0, "upstream")),
    # match paths
    "two path matchers": (_set(MATCH0 + ["path_prefix"], "/v1"), "oneOf", ("routes", 0, "match")),
    "no path matcher": (_delete(MATCH0 + ["path"]), "oneOf", ("routes", 0, "match")),
    "path without leading slash": (_set(MATCH0 + ["path"], "v1/items/{id}"), "pattern", ("routes", 0, "match", "path")),
    "path_prefix without leading slash": (_set(["routes", 1, "match", "path_prefix"], "v1"), "pattern", ("routes", 1, "match", "path_prefix")),
    "path with query": (_set(MATCH0 + ["path"], "/v1/items?id=1"), "pattern", ("routes", 0, "match", "path")),
    "strip_prefix without leading slash": (_set(["routes", 1, "rewrite", "strip_prefix"], "v1"), "pattern", ("routes", 1, "rewrite", "strip_prefix")),
    "health without leading slash": (_set(["observability", "endpoints", "health"], "health"), "pattern", ("observability", "endpoints", "health")),
    "health false": (_set(["observability", "endpoints", "health"], False), "type", ("observability", "endpoints", "health")),
    "invalid path_regex": (_set(["routes", 2, "match", "path_regex"], "^/(unclosed"), "format", ("routes", 2, "match", "path_regex")),
    # methods
    "lower-case method": (_set(MATCH0 + ["methods"], ["get"]), "pattern", ("routes", 0, "match", "methods", 0)),
    "method with space": (_set(MATCH0 + ["methods"], ["GET "]), "pattern", ("routes", 0, "match", "methods", 0)),
    "duplicate methods": (_set(MATCH0 + ["methods"], ["GET", "GET"]), "uniqueItems", ("routes", 0, "match", "methods")),
    "empty methods": (_set(MATCH0 + ["methods"], []), "minItems", ("routes", 0, "match", "methods")),
    "method not a list": (_set(MATCH0 + ["methods"], "GET"), "type", ("routes", 0, "match", "methods")),
    # hosts, headers, query
    "host with port": (_set(MATCH0 + ["host"], "api.example.com:443"), "pattern", ("routes", 0, "match", "host")),
    "host wildcard in the middle": (_set(MATCH0 + ["host"], "api.*.com"), "pattern", ("routes", 0, "match", "host")),
    "header name with space": (_set(MATCH0 + ["headers"], {"X Env": "a"}), "pattern", ("routes", 0, "match", "headers")),
    "header value with newline": (_set(MATCH0 + ["headers"], {"X-Env": "a\r\nX-Evil: 1"}), "pattern", ("routes", 0, "match", "headers", "X-Env")),
    "header value not a string": (_set(MATCH0 + ["headers"], {"X-Count": 5}), "type", ("routes", 0, "match", "headers", "X-Count")),
    "query value not a string": (_set(MATCH0 + ["query"], {"version": 2}), "type", ("routes", 0, "match", "query", "version")),
    "empty header rewrite": (_set(["policies", "keyed", "headers", "response"], {}), "minProperties", ("policies", "keyed", "headers", "response")),
    "empty policy": (_set(["policies", "keyed"], {}), "minProperties", ("policies", "keyed")),
    "bad header name in remove": (_set(["policies", "keyed", "headers", "request", "remove"], ["Bad:Name"]), "pattern", ("policies", "keyed", "headers", "request", "remove", 0)),
    # upstreams
    "bad upstream name": (lambda c: c["upstreams"].update({"1st": {"targets": ["http://a"]}}), "pattern", ("upstreams",)),
    "bad policy name": (lambda c: c["policies"].update({"bad name": {"headers": {"request": {"remove": ["A"]}}}}), "pattern", ("policies",)),
    "missing targets": (_delete(["upstreams", "items", "targets"]), "required", ("upstreams", "items")),
    "empty targets": (_set(["upstreams", "items", "targets"], []), "minItems", ("upstreams", "items", "targets")),
    "target with path": (_set(["upstreams", "items", "targets"], ["http://127.0.0.1:9001/api"]), "pattern", ("upstreams", "items", "targets", 0)),
    "target with trailing slash": (_set(["upstreams", "items", "targets"], ["http://127.0.0.1:9001/"]), "pattern", ("upstreams", "items", "targets", 0)),
    "target without scheme": (_set(["upstreams", "items", "targets"], ["127.0.0.1:9001"]), "pattern", ("upstreams", "items", "targets", 0)),
    "target with other scheme": (_set(["upstreams", "items", "targets"], ["ftp://files"]), "pattern", ("upstreams", "items", "targets", 0)),
    "target with user and password": (_set(["upstreams", "items", "targets"], ["http://bob:pw@127.0.0.1:9001"]), "pattern", ("upstreams", "items", "targets", 0)),
    "bad balance": (_set(["upstreams", "items", "balance"], "random"), "enum", ("upstreams", "items", "balance")),
    "zero max_connections": (_set(["upstreams", "items", "max_connections"], 0), "minimum", ("upstreams", "items", "max_connections")),
    "health without path": (_set(["upstreams", "items", "health"], {"interval": "5s"}), "required", ("upstreams", "items", "health")),
    "health path without slash": (_set(["upstreams", "items", "health"], {"path": "healthz"}), "pattern", ("upstreams", "items", "health", "path")),
    "unknown health key": (_set(["upstreams", "items", "health"], {"path": "/h", "rise": 2}), "additionalProperties", ("upstreams", "items", "health")),
    "zero healthy_threshold": (_set(["upstreams", "items", "health"], {"path": "/h", "healthy_threshold": 0}), "minimum", ("upstreams", "items", "health", "healthy_threshold")),
    "zero attempts": (_set(["upstreams", "items", "retries"], {"attempts": 0}), "minimum", ("upstreams", "items", "retries", "attempts")),
    "budget above 1": (_set(["upstreams", "items", "retries"], {"budget": 1.5}), "maximum", ("upstreams", "items", "retries", "budget")),
    "unknown retries key": (_set(["upstreams", "items", "retries"], {"on": ["502"]}), "additionalProperties", ("upstreams", "items", "retries")),
    "negative consecutive_failures": (_set(["upstreams", "items", "outlier"], {"consecutive_failures": -1}), "minimum", ("upstreams", "items", "outlier", "consecutive_failures")),
    "slow_start as number": (_set(["upstreams", "items", "slow_start"], 30), "type", ("upstreams", "items", "slow_start")),
    # durations
    "duration with space": (_set(["upstreams", "items", "timeouts", "connect"], "1 s"), "pattern", ("upstreams", "items", "timeouts", "connect")),
    "duration without unit": (_set(["upstreams", "items", "timeouts", "connect"], "30"), "pattern", ("upstreams", "items", "timeouts", "connect")),
    "duration in words": (_set(["upstreams", "items", "timeouts", "response"], "30 seconds"), "pattern", ("upstreams", "items", "timeouts", "response")),
    "duration as number": (_set(["upstreams", "items", "timeouts", "response"], 30), "type", ("upstreams", "items", "timeouts", "response")),
    "negative duration": (_set(["upstreams", "items", "timeouts", "response"], "-1s"), "pattern", ("upstreams", "items", "timeouts", "response")),
    "duration unit days": (_set(["upstreams", "items", "timeouts", "response"], "1d"), "pattern", ("upstreams", "items", "timeouts", "response")),
    # server
    "listen without host": (_set(["server", "listen"], ["8080"]), "pattern", ("server", "listen", 0)),
    "listen port 0": (_set(["server", "listen"], ["127.0.0.1:0"]), "pattern", ("server", "listen", 0)),
    "listen port too large": (_set(["server", "listen"], ["127.0.0.1:65536"]), "pattern", ("server", "listen", 0)),
    "listen unbracketed ipv6": (_set(["server", "listen"], ["::1:8080"]), "pattern", ("server", "listen", 0)),
    "listen empty": (_set(["server", "listen"], []), "minItems", ("server", "listen")),
    "listen duplicate": (_set(["server", "listen"], ["127.0.0.1:1", "127.0.0.1:1"]), "uniqueItems", ("server", "listen")),
    "bad engine": (_set(["server", "engine"], "uvicorn"), "enum", ("server", "engine")),
    "http as integer": (_set(["server", "http"], 2), "enum", ("server", "http")),
    "server_timing as unknown word": (_set(["observability", "server_timing"], "yes"), "enum", ("observability", "server_timing")),
}


@pytest.mark.parametrize("case", INVALID_VARIANTS.values(), ids=INVALID_VARIANTS.keys())
def test_invalid_variants(validator, sample, case):
    mutate, keyword, location = case
    mutate(sample)
    errors = errors_for(validator, sample)
    assert errors, "expected the variant to be rejected"
    found = {(e.validator, tuple(e.absolute_path)) for e in errors}
    assert (keyword, location) in found, found


def test_two_actions_is_a_single_plain_one_of_error(validator, sample):
    """What the config checker phrases as 'give only one of respond, redirect, upstream'."""
    sample["routes"][0]["respond"] = {}
    [error] = errors_for(validator, sample)
    assert error.validator == "oneOf"
    assert [b["required"] for b in error.validator_value] == [["respond"], ["redirect"], ["upstream"]]


# --- (d) the rendered reference --------------------------------------------------------------------


def test_readme_reference_block_is_up_to_date(schema):
    text = README_FILE.read_text(encoding="utf-8")
    assert text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1
    assert "python -m gatewayd.config.reference --write-readme" in text
    assert readme_block(text) == render_reference(schema), (
        "README.md's configuration reference is stale: run python -m gatewayd.config.reference --write-readme"
    )


def test_reference_documents_every_property(schema):
    rendered = render_reference(schema)
    for _, s in walk(schema):
        for name in s.get("properties", {}):
            assert re.search(rf"`[^`|]*\b{re.escape(name)}` \|", rendered), name
    for d in schema["$defs"].values():
        if "title" in d and "properties" not in d:
            assert f"| {d['title']} |" in rendered


def test_reference_shows_defaults_and_allowed_values(schema):
    rendered = render_reference(schema)
    row = next(line for line in rendered.splitlines() if line.startswith("| `server.http` |"))
    assert "`auto`" in row and '`"1"`' in row and '`"2"`' in row
    row = next(line for line in rendered.splitlines() if line.startswith("| `upstreams.<name>.timeouts.connect` |"))
    assert "| duration |" in row and "`1s`" in row
    assert "Exactly one of `respond`, `redirect`, `upstream` is required." in rendered
    assert "`rewrite` is only allowed together with `upstream`." in rendered


def test_reference_tables_are_well_formed(schema):
    """Every table row has as many cells as its header (pipes inside cells are escaped)."""
    header_cells = None
    for line in render_reference(schema).splitlines():
        if not line.startswith("|"):
            header_cells = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line)) - 1
        if header_cells is None:
            header_cells = cells
        assert cells == header_cells, line


def test_cli_prints_the_reference(schema, capsys):
    assert reference.main([]) == 0
    assert capsys.readouterr().out == render_reference(schema)


def test_cli_write_readme_and_check(schema, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# gatewayd\n\nintro\n\n{START_MARKER}\nstale\n{END_MARKER}\n\nmore\n", encoding="utf-8")
    assert reference.main(["--check", "--readme", str(readme)]) == 1
    assert reference.main(["--write-readme", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# gatewayd\n\nintro\n\n") and text.endswith(f"{END_MARKER}\n\nmore\n")
    assert readme_block(text) == render_reference(schema)
    assert reference.main(["--check", "--readme", str(readme)]) == 0
    assert splice_readme(text, render_reference(schema)) == text  # idempotent
