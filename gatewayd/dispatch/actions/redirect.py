"""`redirect`: a Location built from precomputed pieces, path params filled in and percent-encoded."""

from __future__ import annotations

import re
from urllib.parse import quote

from ...policies import HeaderEdit

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(to: str) -> list[str]:
    return PLACEHOLDER.findall(to)


def compile_redirect(spec: dict, response_edit: HeaderEdit):
    status = spec.get("status", 302)
    keep_query = spec.get("keep_query", True)
    # "https://x/{id}/y" -> literal pieces and param names, alternating
    pieces = PLACEHOLDER.split(spec["to"])
    literals = [p.encode() for p in pieces[0::2]]
    names = pieces[1::2]
    base = response_edit.apply([(b"content-length", b"0")])
    joiner = b"&" if b"?" in b"".join(literals) else b"?"

    async def redirect(ex) -> None:
        if names:
            params = ex.params
            parts = [literals[0]]
            for name, literal in zip(names, literals[1:]):
                parts.append(quote(params.get(name, ""), safe="").encode())
                parts.append(literal)
            location = b"".join(parts)
        else:
            location = literals[0]
        if keep_query and (qs := ex.scope["query_string"]):
            location = location + joiner + qs
        await ex.respond(status, [*base, (b"location", location)], b"")

    return redirect
