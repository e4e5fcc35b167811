"""The `headers` policy: set, add and remove headers on the request to the upstream and on the response.

Compiled into `HeaderEdit`s: `set` is a remove of the name followed by an add, so the request path
does one filtering pass and one extend, whatever the number of rules.
"""

from __future__ import annotations

from .effects import Effects, HeaderEdit


def _edit(spec: dict) -> HeaderEdit:
    set_ = {k.lower().encode(): v.encode() for k, v in spec.get("set", {}).items()}
    add = tuple((k.lower().encode(), v.encode()) for k, v in spec.get("add", {}).items())
    drop = frozenset(name.lower().encode() for name in spec.get("remove", ())) | frozenset(set_)
    return HeaderEdit(drop, tuple(set_.items()) + add)


def compile_policy(spec: dict, ctx=None, name: str = "") -> Effects:
    return Effects(request_headers=_edit(spec.get("request", {})), response_headers=_edit(spec.get("response", {})))
