"""`redirect`: a Location built from precomputed pieces, path params filled in and percent-encoded.

Params come from the normalized path (gatewayd.routing.normalize), so they are percent-encoded
already: their escapes are kept as they are, and every other character but the unreserved ones is
encoded (a param may land in the query of `to`)."""

from __future__ import annotations

import re
from urllib.parse import quote

from ...policies import HeaderEdit

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(to: str) -> list[str]:
    return PLACEHOLDER.findall(to)


def compile_location(spec: dict):
    """`location(params, query_string) -> bytes`: the Location a redirect sends, built from pieces made
    once; `gatewayd explain` shows it too."""
    keep_query = spec.get("keep_query", True)
    # "https://x/{id}/y" -> literal pieces and param names, alternating
    pieces = PLACEHOLDER.split(spec["to"])
    literals = [p.encode() for p in pieces[0::2]]
    names = pieces[1::2]
    joiner = b"&" if b"?" in b"".join(literals) else b"?"

    def location(params: dict[str, str], query_string: bytes) -> bytes:
        if names:
            parts = [literals[0]]
            for name, literal in zip(names, literals[1:]):
                parts.append(quote(params.get(name, ""), safe="%").encode())
                parts.append(literal)
            to = b"".join(parts)
        else:
            to = literals[0]
        if keep_query and query_string:
            to = to + joiner + query_string
        return to

    return location


def compile_redirect(spec: dict, response_edit: HeaderEdit):
    status = spec.get("status", 302)
    location = compile_location(spec)
    base = response_edit.apply([(b"content-length", b"0")])
    dated = response_edit.keeps_date

    async def redirect(ex) -> None:
        await ex.respond(status, [*base, (b"location", location(ex.params, ex.scope["query_string"]))], b"", dated)

    return redirect
