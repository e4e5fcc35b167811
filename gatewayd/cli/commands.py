"""The offline commands: check, routes, explain and schema. None of them opens a socket."""

from __future__ import annotations

import json
import sys
from urllib.parse import unquote

from ..config.errors import ConfigError
from ..config.load import load_bytes, read
from ..config.validate import SCHEMA_PATH
from ..dispatch.actions.redirect import compile_location
from ..dispatch.compile import compile_table
from ..dispatch.refusals import read_head
from ..observe import Observer
from ..policies import run_order
from ..routing import Found, MethodNotAllowed
from ..runtime.status import RuntimeStatus
from ..store import MemoryStore
from ..upstream.pool import UpstreamRegistry


def _load(path: str):
    """(config, None) or (None, exit code) after printing why."""
    try:
        raw = read(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None, 2
    try:
        return load_bytes(raw, path), None
    except ConfigError as exc:
        return exc, 1


def _load_valid(path: str):
    """(config, 0), or (None, exit code) after printing every problem."""
    config, code = _load(path)
    if code == 1:
        print(config, file=sys.stderr)
    return (None, code) if code else (config, 0)


def check(args) -> int:
    config, code = _load(args.file)
    if code == 2:
        return 2
    problems = config.problems if code else []
    if args.format == "json":
        print(json.dumps({"file": args.file, "ok": not problems, "errors": [
            {"line": p.location.line, "column": p.location.column, "severity": p.severity, "message": p.message} for p in problems
        ]}, indent=2))
    elif args.format == "github":
        for p in problems:
            print(f"::{p.severity} file={p.location.file},line={p.location.line},col={p.location.column}::{p.message}")
    else:
        for p in problems:
            print(p)
    if problems:
        if args.format == "text":
            print(f"{args.file}: {count(len(problems), 'error', 'errors')}", file=sys.stderr)
        return 1
    try:
        _table(config)  # what serving would build: a config that loads must compile
    except Exception as exc:
        print(f"{args.file}: the config is valid but could not be compiled: {exc!r}", file=sys.stderr)
        return 1
    if args.format == "text":
        counts = (
            count(len(config.routes), "route", "routes"),
            count(len(config.upstreams), "upstream", "upstreams"),
            count(len(config.policies), "policy", "policies"),
        )
        print(f"{args.file}: ok ({', '.join(counts)})")
    return 0


def count(n: int, one: str, many: str) -> str:
    """`1 route`, `3 routes`, `0 policies`."""
    return f"{n} {one if n == 1 else many}"


def _table(config):
    live, _ = UpstreamRegistry().resolve(config.upstreams)
    status = RuntimeStatus()
    return compile_table(config, live, status, Observer(MemoryStore(), status))


def _describe(config, route) -> dict:
    m = config.routes[route.index].match
    return {
        "index": route.index,
        "name": route.name,
        "line": config.marks.at(("routes", route.index)).line,
        "match": m,
        "policies": list(route.policies),
        "runs": [f"{kind} ({name})" for kind, name in run_order(config.policies, route.policies)],
        "action": route.action_kind,
        "target": route.target,
    }


def routes(args) -> int:
    config, code = _load_valid(args.file)
    if config is None:
        return code
    rows = [_describe(config, r) for r in _table(config).routes]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'#':>3}  {'line':>4}  {'methods':<12} {'path':<32} {'policies':<20} action")
    for row in rows:
        m = row["match"]
        path = m.get("path") or (m.get("path_prefix") and m["path_prefix"] + "*") or f"~{m.get('path_regex')}"
        extra = "".join(f" {k}={m[k]}" for k in ("host", "headers", "query") if k in m)
        print(
            f"{row['index']:>3}  {row['line']:>4}  {','.join(m.get('methods', ['*'])):<12} {path + extra:<32} "
            f"{','.join(row['policies']) or '-':<20} {row['action']} {row['target']}"
        )
    return 0


def explain(args) -> int:
    config, code = _load_valid(args.file)
    if config is None:
        return code
    table = _table(config)
    o = config.observability
    headers = []
    for h in args.header:
        name, _, value = h.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    method = args.method.upper()
    # the request target as a client sends it: the refusals normalize its path as the server does
    raw_path, _, query = args.target.partition("?")
    scope = {"method": method, "path": unquote(raw_path), "raw_path": (raw_path or "/").encode(), "headers": headers,
             "query_string": query.encode()}  # fmt: skip
    head = read_head(headers)
    own = {o.health_path: "health", o.latency_path: "latency", o.metrics_path: "metrics"}
    own.pop(None, None)
    reject = table.refuse(scope, head)
    path, query, host = scope["path"], scope["query_string"], head[2]
    if reject:
        out = {"result": reject.status, "error": reject.error, "message": reject.message}
    elif path in table.endpoints:
        out = {"result": "endpoint", "message": f"{path} is the gateway's {own[path]} endpoint"}
    else:
        result = table.router.match(method, path, host and host.decode("latin-1"), headers, query)
        if isinstance(result, Found):
            out = {"result": "match", "params": dict(result.params), "route": _describe(config, result.target)}
            route = config.routes[result.target.index]
            if route.action == "redirect":
                out["location"] = compile_location(route.spec)(result.params, query).decode("latin-1")
        elif isinstance(result, MethodNotAllowed):
            out = {"result": 405, "allow": list(result.allow), "message": f"the path matches, but not for {method}"}
        else:
            out = {"result": 404, "message": f"no route matches {method} {path}"}
    if args.format == "json":
        print(json.dumps(out, indent=2))
    elif out["result"] == "match":
        r = out["route"]
        print(f"route {r['index']} {r['name']!r} (line {r['line']})")
        print(f"  params:   {json.dumps(out['params'])}")
        print(f"  policies: {', '.join(r['policies']) or '-'}")
        if r["runs"]:
            print(f"  runs:     {' -> '.join(r['runs'])}")
        print(f"  action:   {r['action']} {r['target']}")
        if "location" in out:
            print(f"  location: {out['location']}")
    else:
        extra = f" (Allow: {', '.join(out['allow'])})" if "allow" in out else ""
        print(f"{out['result']}: {out['message']}{extra}")
    return 0 if out["result"] in ("match", "endpoint") else 1


def schema(args) -> int:
    sys.stdout.write(SCHEMA_PATH.read_text())
    return 0
