"""`respond`: a fixed status, headers and body, all encoded when the config compiles."""

from __future__ import annotations

import json

from ...policies import HeaderEdit


def compile_respond(spec: dict, response_edit: HeaderEdit):
    status = spec.get("status", 200)
    headers = [(k.lower().encode(), v.encode()) for k, v in spec.get("headers", {}).items()]
    names = {k for k, _ in headers}
    if "json" in spec:
        body = json.dumps(spec["json"], separators=(",", ":")).encode()
        default_type = b"application/json"
    else:
        body = spec.get("body", "").encode()
        default_type = b"text/plain; charset=utf-8"
    if b"content-type" not in names and (body or "json" in spec):
        headers.append((b"content-type", default_type))
    headers = response_edit.apply(h for h in headers if h[0] != b"content-length")
    if status in (204, 304) or status < 200:  # these carry no body and no length (RFC 9110 8.6)
        body = b""
    else:
        headers.append((b"content-length", b"%d" % len(body)))
    frozen = tuple(headers)
    dated = response_edit.keeps_date

    async def respond(ex) -> None:
        await ex.respond(status, list(frozen), body, dated)

    return respond
