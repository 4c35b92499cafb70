"""Peer and client transport: a sans-I/O codec under a thin asyncio TCP layer."""
