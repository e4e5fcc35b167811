"""Request routing: route specs, the compiled router and static route checks."""

from .analysis import Finding, analyze
from .paths import PathError
from .router import NOT_FOUND, Found, MethodNotAllowed, NotFound, Router, RouteSpec

__all__ = [
    "NOT_FOUND",
    "Finding",
    "Found",
    "MethodNotAllowed",
    "NotFound",
    "PathError",
    "RouteSpec",
    "Router",
    "analyze",
]
