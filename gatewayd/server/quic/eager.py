"""Running a coroutine at once, outside any task, and finishing it in a task only if it must wait.

A QUIC connection's events go to Hypercorn's HTTP/3 protocol, whose `handle` is a coroutine that
almost never waits: it starts each request's task, and waits only when a request body arrives faster
than the app reads it and fills the app's queue. Starting it where the datagram arrives saves a
queue, a task switch and a loop iteration per datagram (Python 3.12's eager tasks do the same; 3.11
has none).
"""

from __future__ import annotations

import types
from collections.abc import Coroutine
from typing import Any


def start(coro: Coroutine) -> tuple[bool, Any]:
    """Run `coro` until it ends or waits: `(True, None)` if it ended, else `(False, what it waits on)`,
    both to be passed to `finish` in a task."""
    try:
        return False, coro.send(None)
    except StopIteration:
        return True, None


@types.coroutine
def finish(coro: Coroutine, waiting: Any):
    """Await the rest of `coro`, which `start` left waiting on `waiting` (a future, or None for the
    bare yield of `asyncio.sleep(0)`): the calling task waits on it, then runs `coro` as its own."""
    while True:
        try:
            yield waiting
        except BaseException as exc:  # cancelled while waiting: `coro` gets it where it waits
            step, arg = coro.throw, exc
        else:
            step, arg = coro.send, None  # asyncio resumes a coroutine with None, whatever woke it
        try:
            waiting = step(arg)
        except StopIteration as stop:
            return stop.value
