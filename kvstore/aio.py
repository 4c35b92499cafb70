"""kvstore for asyncio applications: `kvstore.aio.Client` has the methods of `kvstore.Client`
as coroutines, and runs on the caller's own event loop."""

from kvstore.client.aio_client import Client

__all__ = ["Client"]
