"""The offline commands, run as a user would: check, routes, explain and schema, with their
output formats and exit codes (0 ok, 1 config errors or no match, 2 unreadable file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

SAMPLE = ROOT / "configs" / "gateway.yaml"
SCHEMA = ROOT / "schemas" / "gateway.schema.json"

# two independent mistakes: a bad duration (line 5) and a lower-case method (line 7)
BAD = """\
version: 1
upstreams:
  items:
    targets: ["http://127.0.0.1:9001"]
    timeouts: {connect: 1sec}
routes:
  - match: {path: /a, methods: [get]}
    respond: {json: {a: 1}}
"""
BAD_LOCATIONS = [(5, BAD.splitlines()[4].index("1sec") + 1), (7, BAD.splitlines()[6].index("get") + 1)]


def gatewayd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "bad.yaml"
    path.write_text(BAD)
    return path


@pytest.fixture(scope="module")
def sample() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


# --- check -------------------------------------------------------------------------------------


def test_check_ok(sample):
    out = gatewayd("check", SAMPLE)
    assert out.returncode == 0, out.stderr
    assert (len(sample["routes"]), len(sample["upstreams"]), len(sample["policies"])) == (6, 1, 5)
    assert out.stdout.strip() == f"{SAMPLE}: ok (6 routes, 1 upstream, 5 policies)"


def test_check_ok_counts_in_words(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(
        "version: 1\n"
        "policies:\n"
        "  a: {headers: {response: {set: {X-A: a}}}}\n"
        "  b: {headers: {response: {set: {X-B: b}}}}\n"
        "routes:\n"
        "  - {match: {path: /}, respond: {}}\n"
    )
    out = gatewayd("check", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: ok (1 route, 0 upstreams, 2 policies)"


def test_check_ok_json():
    out = gatewayd("check", SAMPLE, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"file": str(SAMPLE), "ok": True, "errors": []}


def test_check_reports_every_error(bad_file):
    out = gatewayd("check", bad_file)
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line, (row, col) in zip(lines, BAD_LOCATIONS):
        assert line.startswith(f"{bad_file}:{row}:{col}: error: "), line
    assert "1sec" in lines[0]
    assert "get" in lines[1]
    assert f"{bad_file}: 2 errors" in out.stderr


def test_check_json(bad_file):
    out = gatewayd("check", bad_file, "--format", "json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["file"] == str(bad_file)
    assert report["ok"] is False
    assert [(e["line"], e["column"]) for e in report["errors"]] == BAD_LOCATIONS
    assert all(e["severity"] == "error" and e["message"] for e in report["errors"])


def test_check_github(bad_file):
    out = gatewayd("check", bad_file, "--format", "github")
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line, (row, col) in zip(lines, BAD_LOCATIONS):
        assert re.fullmatch(rf"::error file={re.escape(str(bad_file))},line={row},col={col}::.+", line), line


def test_check_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    out = gatewayd("check", missing)
    assert out.returncode == 2
    assert f"{missing}:1:1: error: cannot read config" in out.stderr
    assert out.stdout == ""


# --- routes ------------------------------------------------------------------------------------


def test_routes_text(sample):
    out = gatewayd("routes", SAMPLE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["#", "line", "methods", "path"]
    assert len(lines) == 1 + len(sample["routes"])
    for i, (line, route) in enumerate(zip(lines[1:], sample["routes"])):
        assert line.split()[0] == str(i)
        m = route["match"]
        assert (m.get("path") or m["path_prefix"]) in line
        action = next(a for a in ("respond", "redirect", "upstream") if a in route)
        assert action in line


def test_routes_json(sample):
    out = gatewayd("routes", SAMPLE, "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == [r["name"] for r in sample["routes"]]
    assert [r["index"] for r in rows] == list(range(len(rows)))
    by_name = {r["name"]: r for r in rows}
    assert by_name["items"]["action"] == "upstream"
    assert by_name["items"]["target"] == "items"
    assert by_name["items"]["policies"] == ["browser", "keyed", "typed-item", "api-headers"]
    assert by_name["items"]["match"] == {"path": "/v1/items/{id}", "methods": ["GET", "PUT", "DELETE"]}
    assert by_name["legacy-items"]["action"] == "redirect"
    # `line` points at the route's entry in the file
    text = SAMPLE.read_text().splitlines()
    for row in rows:
        assert f"name: {row['name']}" in text[row["line"] - 1]


def test_routes_on_bad_file(bad_file):
    out = gatewayd("routes", bad_file)
    assert out.returncode == 1
    assert f"{bad_file}:5:" in out.stderr


# --- explain -----------------------------------------------------------------------------------


def test_explain_match():
    out = gatewayd("explain", SAMPLE, "GET", "/v1/items/42")
    assert out.returncode == 0, out.stderr
    assert "'items'" in out.stdout
    assert '{"id": "42"}' in out.stdout
    assert "upstream items" in out.stdout
    # the route's policy kinds in the order they run, whatever the order the route lists them in
    assert "runs:     cors (browser) -> api_key (keyed) -> rate_limit (keyed) -> validate (typed-item) -> headers (api-headers)" in out.stdout


def test_explain_match_json():
    out = gatewayd("explain", SAMPLE, "GET", "/v1/items/42?x=1", "--format", "json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["result"] == "match"
    assert result["params"] == {"id": "42"}
    assert result["route"]["name"] == "items"
    assert result["route"]["action"] == "upstream"
    assert result["route"]["runs"][:2] == ["cors (browser)", "api_key (keyed)"]


@pytest.mark.parametrize(
    "method,target,name,fmt",
    [("GET", "/", "hello", "text"), ("POST", "/v1/items", "items-collection", "json")],
)
def test_explain_route_without_params(method, target, name, fmt):
    out = gatewayd("explain", SAMPLE, method, target, "--format", fmt)
    assert out.returncode == 0, out.stderr
    if fmt == "json":
        result = json.loads(out.stdout)
        assert result["params"] == {}
        assert result["route"]["name"] == name
    else:
        assert f"'{name}'" in out.stdout
        assert "params:   {}" in out.stdout


def test_explain_405():
    out = gatewayd("explain", SAMPLE, "DELETE", "/v1/status")
    assert out.returncode == 1
    assert out.stdout.startswith("405:")
    assert "Allow: GET, HEAD" in out.stdout
    out = gatewayd("explain", SAMPLE, "DELETE", "/v1/status", "--format", "json")
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["result"] == 405
    assert result["allow"] == ["GET", "HEAD"]


def test_explain_404():
    out = gatewayd("explain", SAMPLE, "GET", "/nope")
    assert out.returncode == 1
    assert out.stdout.startswith("404:")
    out = gatewayd("explain", SAMPLE, "GET", "/nope", "--format", "json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["result"] == 404


@pytest.mark.parametrize("target", ["/users/../ping", "/v1/items/./42", "/v1/items/%2E%2E"])
def test_explain_dot_segments_get_400_as_from_the_server(target):
    out = gatewayd("explain", SAMPLE, "GET", target)
    assert out.returncode == 1
    assert out.stdout.strip() == "400: the path has . or .. segments"
    out = gatewayd("explain", SAMPLE, "GET", target, "--format", "json")
    assert json.loads(out.stdout) == {"result": 400, "error": "bad_path", "message": "the path has . or .. segments"}


def test_explain_limits_before_routing():
    out = gatewayd("explain", SAMPLE, "POST", "/v1/items", "-H", "Content-Length: 10485761", "--format", "json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"] == "body_too_large"
    out = gatewayd("explain", SAMPLE, "GET", "/v1/items/42", "-H", f"X-Big: {'x' * 17000}", "--format", "json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["result"] == 431


def test_explain_redirect_shows_its_location_with_the_query():
    out = gatewayd("explain", SAMPLE, "GET", "/v0/items/4%202?x=1&y=2")
    assert out.returncode == 0, out.stderr
    assert "  location: /v1/items/4%202?x=1&y=2" in out.stdout.splitlines()
    out = gatewayd("explain", SAMPLE, "GET", "/v0/items/42?x=1", "--format", "json")
    assert json.loads(out.stdout)["location"] == "/v1/items/42?x=1"


@pytest.mark.parametrize("path", ["/health", "/latency", "/metrics"])
def test_explain_own_endpoints(path):
    out = gatewayd("explain", SAMPLE, "GET", path, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == "endpoint"


def test_explain_missing_file(tmp_path):
    out = gatewayd("explain", tmp_path / "nope.yaml", "GET", "/")
    assert out.returncode == 2


# --- schema ------------------------------------------------------------------------------------


def test_schema_prints_the_schema():
    out = gatewayd("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema == json.loads(SCHEMA.read_text())
    assert schema["properties"]["server"]["properties"]["engine"]["enum"] == ["granian", "hypercorn"]
