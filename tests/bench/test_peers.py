"""The peer harnesses: the etcd gateway's HTTP client, and short runs of each peer when installed.

The short runs start real 3-process clusters on 127.0.0.1 and check that every operation of
every workload succeeded; they skip, saying why, where the peer is not installed.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from benchmarks.peers import etcd, pysyncobj_peer
from kvstore.bench.recorder import (
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchSettings,
    OperationError,
    QuietProgress,
    bench_key,
)


def _parse(raw: bytes) -> tuple[int, bytes]:
    async def main() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await etcd.read_response(reader)

    return asyncio.run(main())


def test_http_response_with_content_length() -> None:
    body = b'{"header":{"revision":"7"}}'
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    assert _parse(raw % (len(body), body) + b"HTTP/1.1 next response") == (200, body)


def test_http_response_chunked() -> None:
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    )
    assert _parse(raw) == (503, b"hello, world")


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",  # neither length nor chunked
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    ],
)
def test_http_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(OperationError):
        _parse(raw)


def test_http_truncated_body_is_an_error() -> None:
    with pytest.raises(EOFError):  # asyncio.IncompleteReadError, counted as a failed operation
        _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")


def test_gateway_bodies_are_base64_json() -> None:
    key, value_b64 = bench_key(5), base64.b64encode(b"v" * 100)
    put = json.loads(etcd.put_body(key, value_b64))
    assert base64.b64decode(put["key"]) == key and put["value"] == value_b64.decode()
    ranged = json.loads(etcd.range_body(key, serializable=True))
    assert base64.b64decode(ranged["key"]) == key and ranged["serializable"] is True
    assert "serializable" not in json.loads(etcd.range_body(key, serializable=False))
    found = json.dumps({"kvs": [{"key": put["key"], "value": put["value"]}]}).encode()
    etcd.check_range(found, key, value_b64)
    with pytest.raises(OperationError):
        etcd.check_range(b'{"header":{}}', key, value_b64)


SMALL = BenchSettings(ops=40, concurrency=8, duration_s_max=20.0, concurrent_rounds_min=10)


@pytest.mark.skipif(etcd.available() is not None, reason=str(etcd.available()))
def test_etcd_cluster_runs_every_workload_without_errors() -> None:
    results = etcd.run(SMALL, QuietProgress())
    assert [r.workload for r in results][:2] == [PUT_SEQUENTIAL, PUT_CONCURRENT]
    assert len(results) == 6
    for result in results:
        ops = SMALL.concurrent_ops if result.concurrency > 1 else SMALL.ops
        assert (result.ops, result.errors, result.note) == (ops, 0, ""), result
        assert result.ops_per_s > 0 and 0 < result.p50_ms <= result.p99_ms


@pytest.mark.skipif(pysyncobj_peer.available() is not None, reason=str(pysyncobj_peer.available()))
def test_pysyncobj_cluster_runs_both_workloads_without_errors() -> None:
    # A PySyncObj sync=True set takes about one 100 ms heartbeat: keep the sequential run short.
    settings = BenchSettings(ops=10, concurrency=4, duration_s_max=20.0, concurrent_rounds_min=5)
    results = pysyncobj_peer.run(settings, QuietProgress())
    assert [(r.workload, r.concurrency) for r in results] == [
        (PUT_SEQUENTIAL, 1),
        (PUT_CONCURRENT, 4),
    ]
    for result in results:
        ops = settings.concurrent_ops if result.concurrency > 1 else settings.ops
        assert (result.ops, result.errors, result.note) == (ops, 0, ""), result
