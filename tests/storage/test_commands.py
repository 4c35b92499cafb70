"""Command and result encoding: round trips, argument checks, and that every byte string
either decodes to exactly one canonical command or raises `ValueError`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.errors import InvalidArgumentError
from kvstore.storage.commands import (
    CLIENT_ID_BYTES,
    SEQ_MAX,
    Command,
    CommandRejected,
    Op,
    ResultCode,
    decode_command,
    decode_results,
    decode_session,
    encode_cas,
    encode_delete,
    encode_put,
    encode_results,
)

CID = bytes(range(16))

client_ids = st.binary(min_size=CLIENT_ID_BYTES, max_size=CLIENT_ID_BYTES)
seqs = st.integers(min_value=1, max_value=SEQ_MAX)
keys = st.binary(min_size=1, max_size=511)
values = st.binary(max_size=300)
optional_values = st.none() | values


def encode(command: Command) -> bytes:
    if command.op == Op.PUT:
        assert command.value is not None
        return encode_put(command.client_id, command.seq, command.key, command.value)
    if command.op == Op.DELETE:
        return encode_delete(command.client_id, command.seq, command.key)
    return encode_cas(command.client_id, command.seq, command.key, command.expected, command.new)


@given(client_ids, seqs, keys, values)
def test_put_round_trip(client_id: bytes, seq: int, key: bytes, value: bytes) -> None:
    data = encode_put(client_id, seq, key, value)
    assert decode_command(data) == Command(Op.PUT, client_id, seq, key, value)
    assert decode_session(data) == (client_id, seq)


@given(client_ids, seqs, keys)
def test_delete_round_trip(client_id: bytes, seq: int, key: bytes) -> None:
    data = encode_delete(client_id, seq, key)
    assert decode_command(data) == Command(Op.DELETE, client_id, seq, key)


@given(client_ids, seqs, keys, optional_values, optional_values)
def test_cas_round_trip(
    client_id: bytes, seq: int, key: bytes, expected: bytes | None, new: bytes | None
) -> None:
    data = encode_cas(client_id, seq, key, expected, new)
    assert decode_command(data) == Command(Op.CAS, client_id, seq, key, None, expected, new)


def test_cas_distinguishes_absent_from_empty() -> None:
    """None ("absent" / "delete") and b"" (an empty value) must not collapse into each other."""
    variants = [(None, None), (b"", None), (None, b""), (b"", b"")]
    encoded = {encode_cas(CID, 1, b"k", e, n) for e, n in variants}
    assert len(encoded) == len(variants)
    for expected, new in variants:
        decoded = decode_command(encode_cas(CID, 1, b"k", expected, new))
        assert (decoded.expected, decoded.new) == (expected, new)


@settings(max_examples=400)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_canonically_or_raise(data: bytes) -> None:
    """Every member must reach the same verdict on any entry: decoding is total (ValueError or
    a command), and a decoded command re-encodes to exactly the same bytes."""
    try:
        command = decode_command(data)
    except ValueError:
        return
    assert encode(command) == data


@given(client_ids, seqs, keys, optional_values, optional_values, st.data())
def test_truncated_cas_and_delete_raise(
    client_id: bytes,
    seq: int,
    key: bytes,
    expected: bytes | None,
    new: bytes | None,
    data: st.DataObject,
) -> None:
    """Cutting a delete anywhere, or a cas before its new value, must fail, never decode."""
    delete = encode_delete(client_id, seq, key)
    cut = data.draw(st.integers(0, len(delete) - 1))
    with pytest.raises(ValueError):
        decode_command(delete[:cut])
    cas = encode_cas(client_id, seq, key, expected, new)
    new_start = len(cas) - len(new or b"")
    cut = data.draw(st.integers(0, new_start - 1))
    with pytest.raises(ValueError):
        decode_command(cas[:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (bytes([9]) + CID + (1).to_bytes(8, "little") + (1).to_bytes(2, "little") + b"k", "op"),
        (bytes([1]) + CID + (0).to_bytes(8, "little") + (1).to_bytes(2, "little") + b"k", "seq"),
        (bytes([1]) + CID + (1).to_bytes(8, "little") + (0).to_bytes(2, "little"), "key length"),
        (bytes([1]) + CID + (1).to_bytes(8, "little") + (512).to_bytes(2, "little"), "key length"),
        (bytes([1]) + CID + (1).to_bytes(8, "little") + (5).to_bytes(2, "little") + b"k", "trunc"),
        (encode_delete(CID, 1, b"k") + b"x", "trailing"),
        (encode_cas(CID, 1, b"k", None, None) + b"x", "trailing"),
        (encode_cas(CID, 1, b"k", None, None)[:-5] + bytes([4]) + bytes(4), "flags"),
        (encode_cas(CID, 1, b"k", None, None)[:-4] + (1).to_bytes(4, "little") + b"e", "expected"),
    ],
)
def test_malformed_commands_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_command(data)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_put(b"short", 1, b"k", b"v"),
        lambda: encode_put(CID, 0, b"k", b"v"),
        lambda: encode_put(CID, SEQ_MAX + 1, b"k", b"v"),
        lambda: encode_put(CID, True, b"k", b"v"),
        lambda: encode_put(CID, 1, b"", b"v"),
        lambda: encode_put(CID, 1, b"k" * 512, b"v"),
        lambda: encode_put(CID, 1, "k", b"v"),
        lambda: encode_put(CID, 1, b"k", "v"),
        lambda: encode_delete(CID, -1, b"k"),
        lambda: encode_cas(CID, 1, b"k", "e", None),
        lambda: encode_cas(CID, 1, b"k", None, 3),
    ],
)
def test_encoders_check_arguments(call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidArgumentError):
        call()


def test_decode_session_ignores_non_commands() -> None:
    assert decode_session(b"") is None
    assert decode_session(b"\x00" * 40) is None  # op 0 is no command
    assert decode_session(encode_delete(CID, 7, b"k")) == (CID, 7)


def test_results_round_trip_one_byte_each() -> None:
    results = [True, False, None, CommandRejected(ResultCode.STALE, "old"), True]
    data = encode_results(results)
    assert len(data) == len(results)
    assert decode_results(data) == [True, False, None, CommandRejected(ResultCode.STALE), True]
    assert decode_results(encode_results([CommandRejected(ResultCode.MALFORMED)])) == [
        CommandRejected(ResultCode.MALFORMED)
    ]
    with pytest.raises(ValueError):
        decode_results(bytes([200]))


def test_rejection_is_falsy() -> None:
    """A caller doing bool(result) must never read a rejection as "existed" or "swapped"."""
    assert not CommandRejected(ResultCode.STALE, "x")
    assert not CommandRejected(ResultCode.MALFORMED)
