"""Reload triggers: changes to the config file (watchfiles) and SIGHUP.

The folder is watched rather than the file, because editors and config managers replace a file
by renaming a new one over it, which ends a watch on the old file. The folder is taken as given,
not through symlinks: a Kubernetes ConfigMap swaps a `..data` link inside it on every update and
deletes the folder the link pointed at. Any change in the folder triggers a reload; one that leaves
the config's bytes unchanged costs a read and a hash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from watchfiles import awatch

logging.getLogger("watchfiles").setLevel(logging.WARNING)  # its per-change INFO lines are noise here

from .gateway import Gateway


async def watch_file(gateway: Gateway, stop: asyncio.Event) -> None:
    async for _ in awatch(
        Path(gateway.path).absolute().parent,
        watch_filter=None,
        stop_event=stop,
        recursive=False,
        debounce=100,
        step=20,
    ):
        await gateway.reload("file changed")


def reload_on_sighup(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(gateway.reload("SIGHUP", force=True)))
