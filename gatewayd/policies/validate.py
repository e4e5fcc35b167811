"""The `validate` policy: refuse malformed requests before the upstream sees them.

Two parts. A request step (phase VALIDATE, the last before the action) decides from the headers and
the raw query string alone: a Content-Length over `max_body` gets 413 `body_too_large`; a request
with a body whose media type (compared without parameters, case-insensitively) is not in
`content_types` gets 415 `unsupported_media_type`; missing `required_headers` and `required_query`
get one 400 `bad_request` whose `errors` names every one of them. A request without a body is not
checked for its content type.

An action wrapper handles what needs the body; it reads it only when it must:
- a body whose length its headers do not give (chunked, or HTTP/2 and HTTP/3 without
  Content-Length) on a route with `max_body` is read whole, at most `max_body` bytes, so that a body
  over the limit gets 413 before the upstream is contacted;
- a body with a JSON media type (`application/json`, `*/*+json`) on a route with `json_schema` is
  read whole and validated: not JSON at all (RFC 8259: no NaN or Infinity) or not what the schema
  says gets 400 with every error as `{"in": "body", "path": <JSON Pointer>, "message"}` (at most
  MAX_ERRORS), and the upstream is not called. Bodies of other media types are not validated: list
  only JSON types in `content_types` to refuse them. An empty body is no body: it is not validated.
  Without `max_body`, such a body is read up to its Content-Length (which the table already held to
  `server.limits.max_body_bytes`), or, without one, up to that limit;
- an HTTP/2 or HTTP/3 request without Content-Length has its first message read to learn whether
  it has a body, for the content-type check.
A body that was read is handed to the action by a replaying `receive` (see `body.py`); one that was
not is streamed by the proxy as usual.

The schema is compiled once per config load: checked by jsonschema (the validator class for its
`$schema`, 2020-12 when it has none, and `check_schema` against that draft's metaschema), every
`$ref` resolved then (files it names are read from beside it at load time; nothing is fetched from
the network, then or later), and run on bodies by jsonschema-rs (measured 18 to 85 times faster
than jsonschema on small bodies: 4.3 against 79 us for 64 bytes). `format` is an annotation only,
in every draft.

With `observability.server_timing: detailed`, the `validate` entry is the step's time plus the
wrapper's time to parse and validate the body (merged into one entry), not the time the client took
to send the body.
"""

from __future__ import annotations

import json
import pathlib
from itertools import islice
from time import perf_counter_ns
from urllib.parse import unquote_to_bytes, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import jsonschema
import referencing
import referencing.exceptions
from jsonschema import validators
from jsonschema_specifications import REGISTRY as METASCHEMAS

import jsonschema_rs

from ..config import units
from ..observe import metrics
from . import body as bodies
from .effects import VALIDATE, Effects, Invalid, Reject

MAX_ERRORS = 100  # body errors listed in one answer; a body that has more says how many were left out
MAX_MESSAGE = 300  # characters of one error message (jsonschema's quote the offending value)

REFUSED = metrics.counter(
    "gatewayd_validate_refused_total",
    "Requests a validate policy refused, by policy and reason (content_type, body_too_large, missing, body).",
    ("policy", "reason"),
)


class SchemaProblem(Exception):
    """Why a `json_schema` file cannot be used (for `gatewayd check`, at the `json_schema` key)."""


# --- decisions on headers and the query string -----------------------------------------------------


def media_type(value: bytes) -> bytes:
    """A Content-Type value's media type, lowercased, without parameters: b'Application/JSON; charset=x' -> b'application/json'."""
    return value.partition(b";")[0].strip().lower()


def is_json(media: bytes) -> bool:
    """Whether a media type (as `media_type` gives it) is JSON: application/json or a +json suffix (RFC 6839)."""
    return media == b"application/json" or media.endswith(b"+json")


# characters that make a query name's raw bytes differ from its decoded form, or end it early
_NOT_LITERAL = frozenset(b"=&+%# ")


def query_needles(names) -> tuple[tuple[bytes, bytes | None, bytes | None], ...]:
    """For each required query name, (name as UTF-8, b'&name=', b'&name&'): the two ways the name can
    appear in `&` + query + `&` when written literally; (name, None, None) for names that a client
    must percent-encode, which only the decoding scan finds."""
    out = []
    for name in names:
        raw = name.encode()
        if _NOT_LITERAL.isdisjoint(raw):
            out.append((raw, b"&" + raw + b"=", b"&" + raw + b"&"))
        else:
            out.append((raw, None, None))
    return tuple(out)


def query_names(qs: bytes) -> set[bytes]:
    """Every parameter name in a raw query string, decoded (`+` is a space, %XX a byte), as
    `urllib.parse.parse_qsl(..., keep_blank_values=True)` would name them."""
    return {unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" ")) for part in qs.split(b"&") if part}


def missing_query(qs: bytes, needles) -> list[bytes]:
    """The required names (see `query_needles`) absent from the raw query string `qs`; a name with an
    empty value (`?a=` or `?a`) is present. A literal scan first; names are decoded only when the
    scan misses something and the query has escapes (or a name must be escaped)."""
    padded = b"&" + qs + b"&"
    for _, eq, amp in needles:
        if eq is None or (eq not in padded and amp not in padded):
            break
    else:
        return []
    missing = [raw for raw, eq, amp in needles if eq is None or (eq not in padded and amp not in padded)]
    if b"%" in qs or b"+" in qs or any(eq is None for _, eq, _ in needles):
        names = query_names(qs)
        missing = [raw for raw in missing if raw not in names]
    return missing


def missing_answer(headers: list[str], query: list[str]) -> Invalid:
    """The one 400 for every required header and query parameter a request lacks."""
    errors = [{"in": "header", "name": h, "message": f"the header {h} is required"} for h in headers]
    errors += [{"in": "query", "name": q, "message": f"the query parameter {q} is required"} for q in query]
    what = [f"header {h}" for h in headers] + [f"query parameter {q}" for q in query]
    return Invalid(400, "bad_request", "missing " + ", ".join(what), tuple(errors))


def too_large(limit: int) -> Reject:
    return Reject(413, "body_too_large", f"the request body exceeds {limit} bytes")


def unsupported(allowed) -> Reject:
    return Reject(415, "unsupported_media_type", f"the request body must be one of: {', '.join(allowed)}")


# --- the JSON Schema ---------------------------------------------------------------------------------


def json_pointer(path) -> str:
    """An error's path in the document (keys and indexes) as a JSON Pointer (RFC 6901): ['a/b', 0] -> '/a~1b/0'."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _one(message: str) -> Invalid:
    return Invalid(400, "bad_request", message, ({"in": "body", "path": "", "message": message},))


def body_errors(schema: Schema, body: bytes) -> Invalid | None:
    """None when `body` is JSON that satisfies `schema`, else the 400 listing why."""
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        return Invalid(
            400, "bad_request", "the body is not valid JSON", ({"in": "body", "path": "", "message": _short(str(exc))},)
        )
    except RecursionError:
        return _one("the body is nested too deeply")
    try:
        found = list(islice(schema.errors(document), MAX_ERRORS + 1))
    except (RecursionError, ValueError):  # jsonschema's recursion, jsonschema-rs's depth limit
        return _one("the body is nested too deeply")
    if not found:
        return None
    errors = tuple(
        {"in": "body", "path": json_pointer(path), "message": _short(message)} for path, message in found[:MAX_ERRORS]
    )
    if len(found) > MAX_ERRORS:
        message = f"the body does not match the schema (the first {MAX_ERRORS} errors are listed)"
    else:
        message = f"the body does not match the schema ({len(found)} error{'s' if len(found) > 1 else ''})"
    return Invalid(400, "bad_request", message, errors)


def _read_json(path: str, what: str):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SchemaProblem(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SchemaProblem(f"{what} {path} is not JSON: {exc}") from None


def _refs(resource: referencing.Resource, base: str):
    """(base URI, $ref) of every reference in a schema resource and its subschemas (keywords only,
    not values under `properties`, `enum`, `const`...: the specification tells them apart)."""
    stack = [(base, resource)]
    while stack:
        base, res = stack.pop()
        if (rid := res.id()) is not None:
            base = urljoin(base, rid)
        contents = res.contents
        if isinstance(contents, dict) and isinstance(ref := contents.get("$ref"), str):
            yield base, ref
        stack.extend((base, sub) for sub in res.subresources())


def _referenced_files(schema, specification, root_uri: str) -> dict[str, object]:
    """The other files the schema's references name (`file:` URIs, relative ones taken from the
    schema's own URI), read now, by URI; SchemaProblem when a reference does not resolve. Nothing
    is ever fetched from the network."""
    root = specification.create_resource(schema)
    registry = referencing.Registry().with_resource(root_uri, root)
    files: dict[str, object] = {}
    pending = list(_refs(root, root_uri))
    seen = []
    while pending:
        base, ref = pending.pop()
        seen.append((base, ref))
        uri = urldefrag(urljoin(base, ref)).url
        if uri in registry or uri in METASCHEMAS:
            continue
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            continue  # left for the lookup below to refuse
        contents = files[uri] = _read_json(url2pathname(parts.path), f"the schema file referenced as {ref!r},")
        resource = referencing.Resource.from_contents(contents, default_specification=specification)
        registry = registry.with_resource(uri, resource)
        pending += _refs(resource, uri)
    everything = METASCHEMAS.combine(registry.crawl())
    for base, ref in seen:
        try:
            everything.resolver(base_uri=base).lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise SchemaProblem(
                f"$ref {ref!r} does not resolve (references may name the schema's own parts and files beside it; nothing is fetched)"
            ) from None
    return files


class Schema:
    """A JSON Schema compiled for bodies: `errors(document)` yields (path, message) for each error.

    Checked by jsonschema (its validator class for the schema's `$schema`, `check_schema` against
    the metaschema); run by jsonschema-rs, which does not assert `format`."""

    __slots__ = ("errors",)

    def __init__(self, errors):
        self.errors = errors


def load_schema(path: str) -> Schema:
    """The JSON Schema file at `path`, compiled; SchemaProblem says why it cannot be used."""
    schema = _read_json(path, "the schema file")
    if not isinstance(schema, (dict, bool)):
        raise SchemaProblem(f"the schema file {path} holds a JSON {type(schema).__name__}, not a schema (an object)")
    if isinstance(schema, dict) and "$schema" in schema:
        cls = validators.validator_for(schema, default=None)
        if cls is None:
            raise SchemaProblem(
                f"unknown $schema {schema['$schema']!r} (use a JSON Schema draft's URI, e.g. https://json-schema.org/draft/2020-12/schema)"
            )
    else:
        cls = validators.Draft202012Validator
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = json_pointer(exc.path) or "/"
        raise SchemaProblem(
            f"not a valid JSON Schema ({cls.__name__.removesuffix('Validator')}), at {where}: {_short(exc.message)}"
        ) from None
    specification = referencing.jsonschema.specification_with(
        cls.ID_OF(cls.META_SCHEMA), default=referencing.jsonschema.DRAFT202012
    )
    if isinstance(schema, dict):  # its own URI, so that references to files beside it resolve against it
        id_keyword = "id" if cls in (validators.Draft3Validator, validators.Draft4Validator) else "$id"
        schema = {id_keyword: pathlib.Path(path).absolute().as_uri(), **schema}
    root_uri = specification.id_of(schema) or ""
    files = _referenced_files(schema, specification, root_uri)
    try:
        compiled = jsonschema_rs.validator_for(
            schema, registry=jsonschema_rs.Registry(list(files.items())), validate_formats=False, offline=True
        )  # fmt: skip
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaProblem(f"the schema cannot be compiled: {_short(str(exc).splitlines()[0])}") from None
    return Schema(lambda document: ((e.instance_path, e.message) for e in compiled.iter_errors(document)))


# --- the policy ------------------------------------------------------------------------------------


def problems(spec: dict, ctx) -> list[tuple[tuple, str]]:
    """A `json_schema` file that cannot be read or is not a valid JSON Schema; one that no allowed
    content type would ever reach."""
    found = []
    if "json_schema" in spec:
        try:
            load_schema(ctx.path(spec["json_schema"]))
        except SchemaProblem as exc:
            found.append((("json_schema",), str(exc)))
        allowed = spec.get("content_types")
        if allowed and not any(is_json(media_type(t.encode())) for t in allowed):
            found.append(
                (
                    ("json_schema",),
                    "json_schema checks JSON bodies only, and content_types admits no JSON type (application/json or */*+json)",
                )
            )
    return found


def compile_policy(spec: dict, ctx, name: str) -> Effects:
    allowed_names = spec.get("content_types")
    allowed = frozenset(t.lower().encode() for t in allowed_names) if allowed_names else None
    max_body = units.size(spec["max_body"]) if "max_body" in spec else None
    header_names = tuple(spec.get("required_headers", ()))
    required = frozenset(h.lower().encode() for h in header_names)
    needles = query_needles(spec.get("required_query", ()))
    schema = None
    if "json_schema" in spec:
        try:
            schema = load_schema(ctx.path(spec["json_schema"]))
        except SchemaProblem as exc:  # `check` reports it first; a config that got here past it is refused
            raise ValueError(f"policy {name!r}: {exc}") from None
    counted = {reason: REFUSED.labels(name, reason) for reason in ("content_type", "body_too_large", "missing", "body")}
    too_big = too_large(max_body) if max_body is not None else None
    wrong_type = unsupported(allowed_names) if allowed is not None else None

    steps = ()
    if allowed is not None or max_body is not None or required or needles:
        steps = ((VALIDATE, _step(allowed, max_body, header_names, required, needles, too_big, wrong_type, counted)),)
    wraps = ()
    if schema is not None or max_body is not None or allowed is not None:
        server_bound = ctx.max_body_bytes
        wraps = (_wrapper(schema, allowed, max_body, server_bound, too_big, wrong_type, counted),)
    return Effects(steps=steps, wraps=wraps)


def _step(allowed, max_body, header_names, required, needles, too_big, wrong_type, counted):
    """The request step: size by Content-Length, content type, required headers and query parameters.

    One pass over the headers finds the framing headers and the required ones together (measured
    0.3 us less per request than `body.framing` followed by a subset test)."""
    watched = required | {b"content-type", b"content-length", b"transfer-encoding"}
    scan = allowed is not None or max_body is not None or bool(required)
    n_required = len(required)
    bad_type, big, missing = counted["content_type"].inc, counted["body_too_large"].inc, counted["missing"].inc

    def step(ex, now):
        scope = ex.scope
        ctype = length = None
        chunked = False
        seen = set() if n_required else None
        for name, value in scope["headers"] if scan else ():
            if name in watched:
                if name == b"content-type":
                    ctype = value
                elif name == b"content-length":
                    length = value
                elif name == b"transfer-encoding":
                    chunked = True
                if seen is not None and name in required:
                    seen.add(name)
        if length is not None:
            if not length.isdigit():
                length = None  # the servers refuse it before it gets here
            elif max_body is not None and not chunked and (len(length) > 18 or int(length) > max_body):
                big()
                return too_big
        if (
            allowed is not None
            and (chunked or (length is not None and length.strip(b"0")))  # HTTP/2 without a length: the wrapper's
            and (ctype is None or (ctype not in allowed and media_type(ctype) not in allowed))
        ):  # fmt: skip
            bad_type()
            return wrong_type
        lacking = (
            [h for h in header_names if h.lower().encode() not in seen] if n_required and len(seen) < n_required else []
        )
        absent = missing_query(scope["query_string"], needles) if needles else ()
        if lacking or absent:
            missing()
            return missing_answer(lacking, [raw.decode() for raw in absent])
        return None

    return step


def _wrapper(schema, allowed, max_body, server_bound, too_big, wrong_type, counted):
    """The action wrapper: reads the body when a check needs it, and hands it on (see the module's docstring)."""
    bound = max_body if max_body is not None else server_bound
    unbounded_too_big = too_big or too_large(bound)
    bad_type, big, bad_body = counted["content_type"].inc, counted["body_too_large"].inc, counted["body"].inc
    framing, has_body, message_has_body = bodies.framing, bodies.has_body, bodies.message_has_body
    read, replay, whole = bodies.read, bodies.replay, bodies.whole

    def wrap(action, route):
        async def validated(ex) -> None:
            scope = ex.scope
            ctype, length, chunked = framing(scope["headers"])
            body_follows = has_body(length, chunked, scope.get("http_version"))
            if body_follows is False:
                return await action(ex)
            receive = ex.receive
            first = None
            if body_follows is None:  # HTTP/2 or HTTP/3 without Content-Length: the first message tells
                first = await receive()
                if first["type"] != "http.request":
                    return None  # the client is gone
                if not message_has_body(first):
                    ex.receive = replay(first, receive)
                    return await action(ex)
                if allowed is not None and (ctype is None or media_type(ctype) not in allowed):
                    bad_type()
                    return await wrong_type.send(ex)
            check = schema is not None and ctype is not None and is_json(media_type(ctype))
            if not check and (length is not None or max_body is None):
                if first is not None:
                    ex.receive = replay(first, receive)
                return await action(ex)  # streamed by the action as it comes
            try:
                body = await read(receive, length if length is not None else bound, first)
            except bodies.TooLarge:
                big()
                return await unbounded_too_big.send(ex)
            except bodies.Gone:
                return None
            if check and body:
                t = perf_counter_ns()
                answer = body_errors(schema, body)
                if (stages := ex.stages) is not None:
                    _add_stage(stages, perf_counter_ns() - t)
                if answer is not None:
                    bad_body()
                    return await answer.send(ex)
            ex.receive = replay(whole(body), receive)
            return await action(ex)

        return validated

    return wrap


def _add_stage(stages: list, ns: int) -> None:
    """Add `ns` to the request's `validate` Server-Timing entry: the step's, when it is the last one."""
    if stages and stages[-1][0] == b"validate":
        stages[-1] = (b"validate", stages[-1][1] + ns)
    else:
        stages.append((b"validate", ns))
