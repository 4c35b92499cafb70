"""Which event loop kvstore creates for its own threads (uvloop is optional)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

import kvstore.client.client as client_module
from kvstore import eventloop

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _assert_plain_asyncio() -> None:
    """uvloop counts as unavailable and new loops are asyncio's own."""
    assert not eventloop.uvloop_available()
    loop = eventloop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_the_environment_variable_forces_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "asyncio")
    _assert_plain_asyncio()


@pytest.mark.skipif(
    not HAS_UVLOOP, reason="uvloop is not installed (pip install 'kvstore-raft[fast]')"
)
def test_uvloop_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.uvloop_available()
    loop = eventloop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
        # It is a working loop, not just the right type.
        assert loop.run_until_complete(asyncio.sleep(0, result=42)) == 42
    finally:
        loop.close()


def test_without_uvloop_asyncio_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    real_import = eventloop.importlib.import_module

    def no_uvloop(name: str) -> object:
        if name == "uvloop":
            raise ImportError("pretend uvloop is missing")
        return real_import(name)

    monkeypatch.setattr(eventloop.importlib, "import_module", no_uvloop)
    _assert_plain_asyncio()


def test_the_blocking_client_runs_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "asyncio")
    with client_module.Client(["127.0.0.1:1"]) as client:
        assert type(client._loop).__module__.startswith("asyncio")
