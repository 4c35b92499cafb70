"""The event loops kvstore runs on its own threads: uvloop when it is installed, else asyncio's.

uvloop is an optional speed-up (`pip install 'kvstore-raft[fast]'`), never a requirement:
every loop kvstore creates for itself (a `Node`'s, a blocking `Client`'s) comes from
`new_event_loop()` here, and an application's own loop (`kvstore.aio.Client`) is whatever the
application runs.

Measured on the project's 2-core machine, 3 `kvstore serve` processes plus a client, with
uvloop in every process against asyncio in every process (alternating runs): pipelined puts
15.6k/19.1k -> 22.3k/20.5k per s, sequential puts 583/543 -> 701/749 per s, sequential
linearizable reads 1,324/1,158 -> 1,589/1,739 per s.

Set `KVSTORE_EVENT_LOOP=asyncio` in the environment to use asyncio's loop even where uvloop is
installed (to tell a uvloop problem from a kvstore one).
"""

from __future__ import annotations

import asyncio
import importlib
import os

ENV_VAR = "KVSTORE_EVENT_LOOP"
"""Environment variable: "asyncio" forces asyncio's own loop; anything else (or unset) means
uvloop when it can be imported."""


def uvloop_available() -> bool:
    """Whether `new_event_loop()` returns a uvloop loop in this process."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "asyncio":
        return False
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop (not set as current): uvloop's when available, else asyncio's."""
    if uvloop_available():
        uvloop = importlib.import_module("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


__all__ = ["ENV_VAR", "new_event_loop", "uvloop_available"]
