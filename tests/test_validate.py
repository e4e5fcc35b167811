"""The `validate` policy's decisions, without a server: media types, the query scan (against
urllib's parser), JSON Pointers, schema errors, schema files and `check`, the compiled step on
headers and query strings, and the body wrapper on ASGI message sequences."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.dispatch.exchange import Exchange
from gatewayd.policies import CompileContext, body
from gatewayd.policies import validate as v
from gatewayd.policies.effects import VALIDATE

FIXTURES = Path(__file__).parent / "fixtures" / "validate"
ORDER = {"customer": "acme", "items": [{"name": "bolt", "quantity": 3}]}


# --- media types and the query string ---------------------------------------------------------------


@pytest.mark.parametrize("value, media", [
    (b"application/json", b"application/json"),
    (b"Application/JSON; charset=UTF-8", b"application/json"),
    (b"  text/plain ;format=flowed", b"text/plain"),
    (b"application/vnd.acme+json;v=2", b"application/vnd.acme+json"),
    (b"", b""),
])  # fmt: skip
def test_media_type_drops_parameters_and_case(value, media):
    assert v.media_type(value) == media


def test_is_json():
    assert v.is_json(b"application/json") and v.is_json(b"application/problem+json")
    assert not v.is_json(b"text/json5") and not v.is_json(b"application/jsonx") and not v.is_json(b"text/plain")


@pytest.mark.parametrize("qs, missing", [
    (b"version=2&limit=1", []),
    (b"version&limit", []),
    (b"a=1&version=&limit=", []),
    (b"", [b"version", b"limit"]),
    (b"xversion=1&limit=2", [b"version"]),
    (b"a=version&limit", [b"version"]),
    (b"vers%69on=1&limit=1", []),  # decoded only when the literal scan misses
    (b"limit+=1&version=2", [b"limit"]),  # "limit " is not "limit"
])  # fmt: skip
def test_missing_query(qs, missing):
    assert v.missing_query(qs, v.query_needles(["version", "limit"])) == missing


def test_query_names_that_must_be_encoded():
    needles = v.query_needles(["a b", "x=y", "é"])
    assert [n[1] for n in needles] == [None, None, b"&\xc3\xa9="]
    assert v.missing_query(b"a+b=1&x%3Dy=2&%C3%A9=3", needles) == []
    assert v.missing_query(b"a%20b&\xc3\xa9", needles) == [b"x=y"]


_QUERY_PARTS = st.lists(
    st.sampled_from(["a", "b", "ab", "a b", "%61", "a+", "+", "=", "&", "%", "%2", "é", "x", "1", ";"]), max_size=12
)


@given(
    st.lists(_QUERY_PARTS.map("".join), max_size=6).map("&".join),
    st.lists(st.sampled_from(["a", "b", "ab", "a b", "é", "a=", "1"]), min_size=1, max_size=4, unique=True),
)
def test_missing_query_agrees_with_parse_qsl(query, required):
    raw = query.encode()
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    names = {k.encode("latin-1") for k, _ in pairs}
    expected = [n.encode() for n in required if n.encode() not in names]
    assert v.missing_query(raw, v.query_needles(required)) == expected


# --- schema errors ------------------------------------------------------------------------------------


def test_json_pointer_escapes():
    assert v.json_pointer([]) == ""
    assert v.json_pointer(["items", 0, "name"]) == "/items/0/name"
    assert v.json_pointer(["a/b", "m~n"]) == "/a~1b/m~0n"


@pytest.fixture
def order_validator():
    return v.load_schema(str(FIXTURES / "order.schema.json"))


def test_a_valid_body_passes(order_validator):
    assert v.body_errors(order_validator, json.dumps(ORDER).encode()) is None


def test_every_error_is_listed_with_its_pointer(order_validator):
    bad = {"customer": "", "items": [{"name": 7, "quantity": 0}, {"quantity": 2}], "colour": "red"}
    answer = v.body_errors(order_validator, json.dumps(bad).encode())
    assert (answer.status, answer.error) == (400, "bad_request")
    got = {(e["path"], e["message"]) for e in answer.errors}
    assert {e["in"] for e in answer.errors} == {"body"}
    quote = '"'
    empty = '"" is shorter than 1 character'
    assert got == {
        ("", "Additional properties are not allowed ('colour' was unexpected)"),
        ("/customer", empty),
        ("/items/0/name", f"7 is not of type {quote}string{quote}"),
        ("/items/0/quantity", "0 is less than the minimum of 1"),
        ("/items/1", f"{quote}name{quote} is a required property"),
    }
    assert answer.message == "the body does not match the schema (5 errors)"


@pytest.mark.parametrize("raw, why", [
    (b"{", "Expecting property name"),
    (b"", "Expecting value"),
    (b"NaN", "NaN is not JSON"),
    (b'{"a": -Infinity}', "-Infinity is not JSON"),
    (b"\xff\xfe\xfa", "decode"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])  # fmt: skip
def test_a_body_that_is_not_json(order_validator, raw, why):
    answer = v.body_errors(order_validator, raw)
    assert answer.status == 400 and len(answer.errors) == 1 and why in answer.errors[0]["message"]


def test_errors_are_capped_and_messages_cut(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "array", "items": {"type": "integer"}}))
    validator = v.load_schema(str(schema))
    answer = v.body_errors(validator, json.dumps(["x"] * 500).encode())
    assert len(answer.errors) == v.MAX_ERRORS and "first 100" in answer.message
    answer = v.body_errors(validator, json.dumps(["y" * 10_000]).encode())
    assert len(answer.errors[0]["message"]) == v.MAX_MESSAGE


# --- schema files ---------------------------------------------------------------------------------------


def _schema(tmp_path, doc, name="s.json") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("doc, problem", [
    ("{not json", "is not JSON"),
    ([1, 2], "holds a JSON list"),
    ({"type": "objekt"}, "not a valid JSON Schema (Draft202012), at /type"),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "minimum": "1"}, "(Draft7), at /minimum"),
    ({"$schema": "https://example.com/my-dialect"}, "unknown $schema"),
    ({"$ref": "#/$defs/nowhere"}, "'#/$defs/nowhere' does not resolve"),
    ({"$ref": "https://example.com/remote.json"}, "does not resolve"),
    ({"properties": {"a": {"$ref": "missing.json"}}}, "cannot read the schema file referenced as 'missing.json'"),
])  # fmt: skip
def test_unusable_schema_files(tmp_path, doc, problem):
    with pytest.raises(v.SchemaProblem) as info:
        v.load_schema(_schema(tmp_path, doc))
    assert problem in str(info.value)


def test_a_missing_schema_file(tmp_path):
    with pytest.raises(v.SchemaProblem, match="cannot read the schema file .*nope.json: No such file"):
        v.load_schema(str(tmp_path / "nope.json"))


def test_refs_to_files_beside_it_and_to_metaschemas_are_read_at_load(tmp_path):
    _schema(
        tmp_path,
        {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}},
        "sub/part.json",
    )
    path = _schema(tmp_path, {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {"part": {"$ref": "sub/part.json"}, "schema": {"$ref": "http://json-schema.org/draft-07/schema#"}},
        "enum": [{"$ref": "not a reference: a value"}, {"part": {"n": 1}}, {"schema": {"type": 1}}, {"part": {"n": "x"}}],
    })  # fmt: skip
    validator = v.load_schema(path)
    (tmp_path / "sub" / "part.json").unlink()  # read at load: validation does not touch the disk
    assert v.body_errors(validator, b'{"part": {"n": 1}}') is None
    assert [e["path"] for e in v.body_errors(validator, b'{"part": {"n": "x"}}').errors] == ["/part/n"]
    assert [e["path"] for e in v.body_errors(validator, b'{"schema": {"type": 1}}').errors] == ["/schema/type"]


_CONFIG = """\
version: 1
policies:
  checked:
    validate:
      content_types: [{types}]
      json_schema: {schema}
routes:
  - match: {{path: /x}}
    policies: [checked]
    respond: {{body: x}}
"""


def _load(tmp_path, schema: str, types: str = "application/json"):
    return load_bytes(_CONFIG.format(schema=schema, types=types).encode(), str(tmp_path / "gateway.yaml"))


def test_check_locates_schema_file_problems(tmp_path):
    _schema(tmp_path, {"type": 3}, "schemas/bad.json")
    for name, message in (("schemas/nope.json", "No such file"), ("schemas/bad.json", "not a valid JSON Schema")):
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, name)
        (problem,) = info.value.problems
        assert (problem.location.line, problem.location.column) == (6, 20) and message in problem.message
    _schema(tmp_path, {"type": "object"}, "schemas/good.json")
    assert _load(tmp_path, "schemas/good.json").policies["checked"]["validate"]["json_schema"] == "schemas/good.json"


def test_check_refuses_a_schema_that_no_content_type_reaches(tmp_path):
    _schema(tmp_path, {"type": "object"}, "schemas/good.json")
    with pytest.raises(ConfigError, match="content_types admits no JSON type"):
        _load(tmp_path, "schemas/good.json", "text/plain, application/xml")
    assert _load(tmp_path, "schemas/good.json", "text/plain, application/ld+json")


# --- the compiled step -------------------------------------------------------------------------------------


SPEC = {
    "content_types": ["application/json", "Text/Plain"],
    "max_body": "1KiB",
    "required_headers": ["X-Tenant", "X-Trace"],
    "required_query": ["version"],
    "json_schema": "order.schema.json",
}


def compiled(spec=SPEC):
    return v.compile_policy(spec, CompileContext(base_dir=str(FIXTURES)), "orders")


def step_of(spec=SPEC):
    ((phase, step),) = compiled(spec).steps
    assert phase == VALIDATE
    return step


def request(headers=(), qs=b"version=1", method="POST", http_version="1.1"):
    base = [(b"host", b"gw"), (b"x-tenant", b"acme"), (b"x-trace", b"1")]
    return SimpleNamespace(scope={
        "type": "http", "method": method, "path": "/orders", "query_string": qs, "http_version": http_version,
        "headers": base + [(n.lower().encode(), val.encode()) for n, val in headers],
    })  # fmt: skip


def test_a_passing_request_continues():
    step = step_of()
    assert step(request([("Content-Type", "application/json"), ("Content-Length", "20")]), 0.0) is None
    assert step(request([("Content-Type", "TEXT/plain; charset=utf-8"), ("Transfer-Encoding", "chunked")]), 0.0) is None
    assert step(request([("Content-Length", "1024")]), 0.0) is not None  # a body needs a type


def test_content_length_over_max_body():
    answer = step_of()(request([("Content-Type", "application/json"), ("Content-Length", "1025")]), 0.0)
    assert (answer.status, answer.error, answer.message) == (
        413,
        "body_too_large",
        "the request body exceeds 1024 bytes",
    )
    assert step_of()(request([("Content-Length", "9" * 40)]), 0.0).status == 413


@pytest.mark.parametrize("headers", [
    [("Content-Type", "application/xml"), ("Content-Length", "3")],
    [("Content-Type", "application/json-seq"), ("Transfer-Encoding", "chunked")],
    [("Content-Length", "3")],
])  # fmt: skip
def test_a_body_of_another_type(headers):
    answer = step_of()(request(headers), 0.0)
    assert (answer.status, answer.error) == (415, "unsupported_media_type")
    assert "application/json, Text/Plain" in answer.message


@pytest.mark.parametrize(
    "headers", [[], [("Content-Length", "0")], [("Content-Type", "image/png"), ("Content-Length", "000")]]
)
def test_a_request_without_a_body_is_not_checked_for_type(headers):
    assert step_of()(request(headers, method="GET"), 0.0) is None


def test_every_missing_header_and_parameter_in_one_answer():
    ex = request(qs=b"versions=2")
    ex.scope["headers"] = [(b"host", b"gw"), (b"x-other", b"1")]
    answer = step_of()(ex, 0.0)
    assert (answer.status, answer.error) == (400, "bad_request")
    assert answer.message == "missing header X-Tenant, header X-Trace, query parameter version"
    assert [(e["in"], e["name"]) for e in answer.errors] == [
        ("header", "X-Tenant"),
        ("header", "X-Trace"),
        ("query", "version"),
    ]
    ex.scope["headers"] = [(b"x-trace", b"1"), (b"x-trace", b"2")]  # twice is still one of the two
    assert [e["name"] for e in step_of()(ex, 0.0).errors] == ["X-Tenant", "version"]


def test_what_is_compiled_for_what_is_set():
    only_schema = compiled({"json_schema": "order.schema.json"})
    assert only_schema.steps == () and len(only_schema.wraps) == 1
    only_headers = compiled({"required_headers": ["X-Tenant"]})
    assert len(only_headers.steps) == 1 and only_headers.wraps == ()
    with pytest.raises(ValueError, match="policy 'orders': cannot read"):
        compiled({"json_schema": "nope.json"})


# --- the body wrapper ----------------------------------------------------------------------------------------


class Client:
    """An ASGI server's side of one request: the messages `receive` returns, what `send` got."""

    def __init__(self, messages):
        self.messages = list(messages)
        self.received = 0
        self.sent = []

    async def receive(self):
        self.received += 1
        if self.messages:
            return self.messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.sent.append(message)

    def answer(self):
        start, *bodies = self.sent
        return start["status"], b"".join(m.get("body", b"") for m in bodies)


class Upstream:
    """An action that reads the body as the proxy does, and remembers it."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, ex):
        chunks = []
        while True:
            message = await ex.receive()
            assert message["type"] == "http.request"
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(b"".join(chunks))
        await ex.respond(200, [(b"content-length", b"2")], b"ok")


def run(spec, headers, messages, http_version="1.1", stages=None):
    """Run the policy's wrapper around an Upstream: (status, body, what the upstream got, the client)."""
    (wrap,) = compiled(spec).wraps
    upstream = Upstream()
    client = Client(messages)
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "http_version": http_version,
             "headers": [(n.lower().encode(), val.encode()) for n, val in headers]}  # fmt: skip
    ex = Exchange(scope, client.receive, client.send, 0, b"rid", False)
    ex.stages = stages
    asyncio.run(wrap(upstream, None)(ex))
    return (*client.answer(), upstream.bodies, client)


def chunks(*parts):
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


JSON = ("Content-Type", "application/json")
GOOD = json.dumps(ORDER).encode()


def test_a_valid_json_body_reaches_the_action_whole():
    status, _, got, client = run(SPEC, [JSON, ("Content-Length", str(len(GOOD)))], chunks(GOOD[:10], GOOD[10:]))
    assert status == 200 and got == [GOOD] and client.received == 2


def test_an_invalid_json_body_never_reaches_the_action():
    bad = json.dumps({"customer": 1, "items": []}).encode()
    status, answer, got, _ = run(SPEC, [JSON, ("Transfer-Encoding", "chunked")], chunks(bad))
    doc = json.loads(answer)
    assert status == 400 and got == [] and doc["error"] == "bad_request" and doc["request_id"] == "rid"
    assert [e["path"] for e in doc["errors"]] == ["/customer", "/items"]
    status, answer, got, _ = run(SPEC, [JSON, ("Transfer-Encoding", "chunked")], chunks(b"not json"))
    assert status == 400 and got == [] and json.loads(answer)["message"] == "the body is not valid JSON"


def test_a_chunked_body_over_max_body_is_refused_before_the_action():
    status, answer, got, client = run(SPEC, [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")],
                                      chunks(b"x" * 1000, b"x" * 1000, b"x" * 1000))  # fmt: skip
    assert status == 413 and got == [] and json.loads(answer)["error"] == "body_too_large"
    assert client.received == 2  # the rest is not read
    status, _, got, _ = run(
        SPEC, [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")], chunks(b"x" * 1000, b"x" * 24)
    )
    assert status == 200 and got == [b"x" * 1024]


def test_without_max_body_a_body_is_bounded_by_the_servers_limit():
    spec = {"json_schema": "order.schema.json"}
    big = b" " * (CompileContext().max_body_bytes // 2)
    status, _, got, _ = run(spec, [JSON, ("Transfer-Encoding", "chunked")], chunks(big, big, b" "))
    assert status == 413 and got == []


def test_bodies_that_need_no_reading_are_streamed():
    status, _, got, client = run(
        SPEC, [("Content-Type", "text/plain"), ("Content-Length", "6")], chunks(b"abc", b"def")
    )
    assert status == 200 and got == [b"abcdef"] and client.received == 2  # read by the action itself
    status, _, got, _ = run(
        {"json_schema": "order.schema.json"},
        [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")],
        chunks(b"[1,"),
    )
    assert status == 200 and got == [b"[1,"]  # not JSON by its type: not validated


def test_http2_without_content_length():
    status, _, got, _ = run(SPEC, [JSON], chunks(GOOD[:5], GOOD[5:]), http_version="2")
    assert status == 200 and got == [GOOD]
    status, _, got, _ = run(SPEC, [("Content-Type", "image/png")], chunks(b"\x89PNG"), http_version="2")
    assert status == 415 and got == []
    status, _, got, _ = run(SPEC, [("Content-Type", "image/png")], chunks(b""), http_version="2")
    assert status == 200 and got == [b""]  # no body: no type check
    status, _, got, _ = run(SPEC, [("Content-Type", "text/plain")], chunks(b"y" * 1025), http_version="3")
    assert status == 413 and got == []


def test_the_replayed_receive_delegates_after_the_body():
    async def go():
        client = Client([{"type": "http.disconnect"}])
        receive = body.replay(body.whole(b"abc"), client.receive)
        return await receive(), await receive()

    assert asyncio.run(go()) == (
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"},
    )


def test_a_client_that_leaves_mid_body_gets_no_answer():
    messages = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    (wrap,) = compiled(SPEC).wraps
    client = Client(messages)
    upstream = Upstream()
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "http_version": "1.1",
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]}  # fmt: skip
    asyncio.run(wrap(upstream, None)(Exchange(scope, client.receive, client.send, 0, b"rid", False)))
    assert client.sent == [] and upstream.bodies == []


def test_validation_time_joins_the_steps_server_timing_entry():
    stages = [(b"auth", 5), (b"validate", 100)]
    status, *_ = run(SPEC, [JSON, ("Content-Length", str(len(GOOD)))], chunks(GOOD), stages=stages)
    assert status == 200 and [name for name, _ in stages] == [b"auth", b"validate"] and stages[1][1] > 100
    stages = [(b"auth", 5)]
    run({"json_schema": "order.schema.json"}, [JSON, ("Content-Length", str(len(GOOD)))], chunks(GOOD), stages=stages)
    assert [name for name, _ in stages] == [b"auth", b"validate"]


def test_framing():
    assert body.framing([(b"content-length", b"12"), (b"content-type", b"a/b")]) == (b"a/b", 12, False)
    assert body.framing([(b"content-length", b"12"), (b"transfer-encoding", b"chunked")]) == (None, None, True)
    assert body.has_body(None, False, "2") is None and body.has_body(None, False, "1.1") is False
    assert body.has_body(0, False, "2") is False and body.has_body(None, True, "1.1") is True
