"""Every argument checked, in the library too: nan, inf, negative, zero and absurdly long
timeouts raise `InvalidArgumentError` from `Node`, `kvstore.Client` and `kvstore.aio.Client`
before anything is sent or written (the write is NOT applied), and `Options.validate()` refuses
nan, inf, negative floats and non-int ints for every field."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kvstore
import kvstore.aio
from kvstore.options import TIMEOUT_S_MAX

BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, -1.0, 0, 0.0, TIMEOUT_S_MAX * 2, True, "1", None]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kvstore.Node]:
    data_dir = tmp_path_factory.mktemp("args")
    with kvstore.Node("n1", data_dir / "n1", {"n1": "127.0.0.1:0"}) as member:
        member.wait_for_leader(timeout_s=15)
        yield member


def _node_calls(node: kvstore.Node, t: Any) -> dict[str, Callable[[], object]]:
    return {
        "put": lambda: node.put(b"k", b"v", timeout_s=t),
        "delete": lambda: node.delete(b"k", timeout_s=t),
        "cas": lambda: node.cas(b"k", None, b"v", timeout_s=t),
        "get": lambda: node.get(b"k", timeout_s=t),
        "get-stale": lambda: node.get(b"k", consistency="stale", timeout_s=t),
        "scan": lambda: node.scan(timeout_s=t),
        "wait_for_leader": lambda: node.wait_for_leader(timeout_s=t),
        "add_member": lambda: node.add_member("n9", "127.0.0.1:1", timeout_s=t),
        "remove_member": lambda: node.remove_member("n9", timeout_s=t),
        "transfer_leadership": lambda: node.transfer_leadership("n1", timeout_s=t),
    }


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_node_refuses_bad_timeouts_before_writing(node: kvstore.Node, timeout: Any) -> None:
    for name, call in _node_calls(node, timeout).items():
        with pytest.raises(kvstore.InvalidArgumentError, match="timeout_s"):
            call()
        assert node.get(b"k", consistency="stale") is None, f"{name} wrote"
    assert set(node.status().members) == {"n1"}  # add_member was not proposed


def _client_calls(client: kvstore.Client, t: Any) -> dict[str, Callable[[], object]]:
    return {
        "put": lambda: client.put(b"k", b"v", timeout_s=t),
        "delete": lambda: client.delete(b"k", timeout_s=t),
        "cas": lambda: client.cas(b"k", None, b"v", timeout_s=t),
        "get": lambda: client.get(b"k", timeout_s=t),
        "scan": lambda: client.scan(timeout_s=t),
        "status": lambda: client.status(timeout_s=t),
        "add_member": lambda: client.add_member("n9", "127.0.0.1:1", timeout_s=t),
        "remove_member": lambda: client.remove_member("n9", timeout_s=t),
        "transfer_leadership": lambda: client.transfer_leadership("n1", timeout_s=t),
    }


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_client_refuses_bad_timeouts_before_sending(node: kvstore.Node, timeout: Any) -> None:
    with kvstore.Client([node.address]) as client:
        for name, call in _client_calls(client, timeout).items():
            if timeout is None and name in ("scan", "status"):
                continue  # None means "the client's default" there
            with pytest.raises(kvstore.InvalidArgumentError, match="timeout_s"):
                call()
            assert node.get(b"k", consistency="stale") is None, f"{name} wrote"
    if timeout is not None:
        with pytest.raises(kvstore.InvalidArgumentError, match="timeout_s"):
            kvstore.Client([node.address], timeout_s=timeout)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 0.0], ids=repr)
def test_aio_client_refuses_bad_timeouts_before_sending(node: kvstore.Node, timeout: Any) -> None:
    async def main() -> None:
        async with kvstore.aio.Client([node.address]) as client:
            for call in (
                client.put(b"k", b"v", timeout_s=timeout),
                client.delete(b"k", timeout_s=timeout),
                client.cas(b"k", None, b"v", timeout_s=timeout),
                client.get(b"k", timeout_s=timeout),
                client.scan(timeout_s=timeout),
                client.status(timeout_s=timeout),
                client.add_member("n9", "127.0.0.1:1", timeout_s=timeout),
                client.remove_member("n9", timeout_s=timeout),
                client.transfer_leadership("n1", timeout_s=timeout),
            ):
                with pytest.raises(kvstore.InvalidArgumentError, match="timeout_s"):
                    await call
        with pytest.raises(kvstore.InvalidArgumentError, match="timeout_s"):
            kvstore.aio.Client([node.address], timeout_s=timeout)

    asyncio.run(main())
    assert node.get(b"k", consistency="stale") is None


def test_a_good_timeout_still_works(node: kvstore.Node) -> None:
    with kvstore.Client([node.address]) as client:
        client.put(b"ok", b"1", timeout_s=TIMEOUT_S_MAX)
        assert client.get(b"ok", timeout_s=1) == b"1"
    assert node.get(b"ok", timeout_s=2) == b"1"
    node.delete(b"ok")


def _fields(kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(kvstore.Options) if f.type == kind]


@pytest.mark.parametrize("name", _fields("float"))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, "1", None, True])
def test_options_refuse_bad_floats(name: str, value: Any) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match=name):
        kvstore.Options(**{name: value}).validate()


@pytest.mark.parametrize("name", _fields("int"))
@pytest.mark.parametrize("value", [1.5, math.nan, math.inf, "8", None, True])
def test_options_refuse_ints_that_are_not_ints(name: str, value: Any) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match=name):
        kvstore.Options(**{name: value}).validate()


@pytest.mark.parametrize("name", _fields("bool"))
def test_options_refuse_bools_that_are_not_bools(name: str) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match=name):
        kvstore.Options(**{name: 1}).validate()


def test_node_refuses_bad_options_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match="tick_s"):
        kvstore.Node(
            "n1", tmp_path / "n1", {"n1": "127.0.0.1:0"}, options=kvstore.Options(tick_s=math.nan)
        )
    assert not (tmp_path / "n1").exists()


def test_defaults_validate() -> None:
    kvstore.Options().validate()
    assert _fields("float") and _fields("int") and _fields("bool")


def test_two_ids_on_one_address_are_refused(tmp_path: Path) -> None:
    peers = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7001", "n3": "127.0.0.1:7003"}
    with pytest.raises(kvstore.InvalidArgumentError, match="'n1' and 'n2' have the same address"):
        kvstore.Node("n1", tmp_path / "n1", peers)
    assert not (tmp_path / "n1").exists()


@pytest.mark.parametrize("name", ["", "x" * 129, 5, None])
def test_options_refuse_a_bad_cluster_name(name: Any) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match="cluster_name"):
        kvstore.Options(cluster_name=name).validate()


@pytest.mark.parametrize("weight", [math.nan, math.inf, -1.0, 0, True])
def test_clients_refuse_bad_endpoint_weights(weight: Any) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match="weight"):
        kvstore.Client({"127.0.0.1:1": weight})
    with pytest.raises(kvstore.InvalidArgumentError, match="weight"):
        kvstore.aio.Client({"127.0.0.1:1": weight})
