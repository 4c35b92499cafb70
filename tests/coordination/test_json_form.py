"""The JSON form of a transaction (the CLI's `kvstore txn`) and of coordination results."""

from __future__ import annotations

import json

import pytest

from kvstore import Compare, KeyValue, Lease, Op, RangeResult, TxnResult, WatchEvent
from kvstore.coordination import jsonable, parse_txn_json
from kvstore.errors import InvalidArgumentError

DOCUMENT = """
{"compare": [{"key": "acct/a", "target": "value", "op": "==", "value": "100"},
             {"key": "acct/a", "target": "version", "op": ">", "value": 0},
             {"key": "lock", "target": "exists", "op": "==", "value": false}],
 "success": [{"op": "put", "key": "acct/a", "value": "90", "lease": 7},
             {"op": "delete", "key": "k"},
             {"op": "delete_range", "key": "a", "end": "b"},
             {"op": "get", "key": "acct/b"},
             {"op": "range", "key": "acct/", "prefix": true, "limit": 10},
             {"op": "get", "key": "é"}],
 "failure": [{"op": "range", "key": "a", "end": "z"}]}
"""


def test_the_documented_form_parses() -> None:
    document = json.loads(DOCUMENT)
    compare, success, failure = parse_txn_json(document)
    assert compare == [
        Compare(b"acct/a", "value", "==", b"100"),
        Compare(b"acct/a", "version", ">", 0),
        Compare(b"lock", "exists", "==", False),
    ]
    assert success == [
        Op.put(b"acct/a", b"90", lease=7),
        Op.delete(b"k"),
        Op.delete_range(b"a", b"b"),
        Op.get(b"acct/b"),
        Op.range(b"acct/", prefix=True, limit=10),
        Op.get("é".encode()),
    ]
    assert failure == [Op.range(b"a", b"z")]
    assert parse_txn_json({}) == ([], [], [])


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"compares": []},
        {"compare": {}},
        {"compare": [{"key": "k", "target": "value", "op": "=="}]},
        {"compare": [{"key": "k", "target": "value", "op": "==", "value": 1}]},
        {"compare": [{"key": "k", "target": "version", "op": "==", "value": "1"}]},
        {"compare": [{"key": "k", "target": "size", "op": "==", "value": 1}]},
        {"compare": [{"key": "k", "target": "exists", "op": "<", "value": True}]},
        {"compare": [{"key": "k", "target": "value", "op": "==", "value": "", "x": 1}]},
        {"success": [{"op": "rename", "key": "k"}]},
        {"success": [{"op": "put", "key": "k"}]},
        {"success": [{"op": "put", "key": "k", "value": "v", "lease": "7"}]},
        {"success": [{"op": "get", "key": "k", "limit": 3}]},
        {"success": [{"op": "delete_range", "key": "a"}]},
        {"success": [{"op": "range", "key": "a", "end": "b", "prefix": True}]},
        {"success": [{"op": "get", "key": ""}]},
        {"success": [{"op": "get", "key": 5}]},
        {"success": [{"op": "get", "key": "k"}] * 129},
        {"success": ["get k"]},
    ],
)
def test_bad_documents_are_refused(document: object) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_txn_json(document)


def test_results_have_a_json_form() -> None:
    kv = KeyValue(b"k", b"\xff\x00v", 2, 3, 1, None)
    result = TxnResult(True, [None, True, 2, kv, RangeResult([kv], False, 1, 3)], 3)
    data = jsonable(result)
    text = json.dumps(data)
    assert json.loads(text) == data
    assert data["results"][3]["value"] == "\\xff\x00v"  # type: ignore[index]
    assert jsonable(WatchEvent("delete", KeyValue(b"k", b"", 0, 4, 0), kv))["prev_kv"]["key"] == "k"  # type: ignore[index]
    assert jsonable(Lease(5, 2.0)) == {"id": 5, "ttl_s": 2.0}
    with pytest.raises(TypeError):
        jsonable(object())
