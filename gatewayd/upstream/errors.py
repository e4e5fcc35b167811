"""How an exchange with an upstream can fail (h1_connection.py, over TCP or TLS), and what the proxy
makes of each failure.

    UpstreamError               the upstream failed us; `kind` is what the proxy reports and answers
    ├── Unreachable             no connection (refused, reset, unresolvable): 502
    ├── ConnectTimeout          no connection within `timeouts.connect`: 504
    ├── ResponseTimeout         no response head within `timeouts.response` of the request's end: 504;
    │                           nothing of its body for `timeouts.read` once it started: cut off
    ├── BadResponse             an answer that is not HTTP/1.1 as RFC 9112 frames it: 502
    └── Closed                  the connection ended before the answer did: 502 before the head,
                                a cut-off response after it. `stale` says no byte of an answer came
                                on a connection that had served requests before: the upstream had
                                closed it while it was idle, and a request without a body may be
                                sent again on a fresh one.

Failures of the client's side (its body broke off, or grew past the limit) are the request's, not
the upstream's: the proxy raises them from the body it forwards (proxy.ClientDisconnected,
proxy.BodyTooLarge) and they pass through the clients unchanged.
"""

from __future__ import annotations

UNAVAILABLE = "unavailable"
TIMEOUT = "timeout"


class UpstreamError(Exception):
    kind = UNAVAILABLE


class Unreachable(UpstreamError):
    pass


class ConnectTimeout(UpstreamError):
    kind = TIMEOUT


class ResponseTimeout(UpstreamError):
    kind = TIMEOUT


class BadResponse(UpstreamError):
    pass


class Closed(UpstreamError):
    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale
