"""Command and result encoding: round trips, argument checks, and that every byte string
either decodes to exactly one canonical command or raises `ValueError`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.errors import InvalidArgumentError
from kvstore.storage.commands import (
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
    encode_register,
    encode_results,
)

CID = 0x0807060504030201

client_ids = st.integers(min_value=1, max_value=SEQ_MAX)
stamps = st.integers(min_value=0, max_value=SEQ_MAX)
seqs = st.integers(min_value=1, max_value=SEQ_MAX)
keys = st.binary(min_size=1, max_size=511)
values = st.binary(max_size=300)
optional_values = st.none() | values


def header(op: int, session_id: int, seq: int, key_len: int, stamp_ms: int = 0) -> bytes:
    """A command header laid out by hand, as the module docstring documents it."""
    return (
        bytes([op])
        + session_id.to_bytes(8, "little")
        + seq.to_bytes(8, "little")
        + stamp_ms.to_bytes(8, "little")
        + key_len.to_bytes(2, "little")
    )


def encode(command: Command) -> bytes:
    c = command
    if c.op == Op.REGISTER:
        return encode_register(c.seq, c.stamp_ms)
    if c.op == Op.PUT:
        assert c.value is not None
        return encode_put(c.session_id, c.seq, c.key, c.value, c.stamp_ms)
    if c.op == Op.DELETE:
        return encode_delete(c.session_id, c.seq, c.key, c.stamp_ms)
    return encode_cas(c.session_id, c.seq, c.key, c.expected, c.new, c.stamp_ms)


@given(client_ids, seqs, keys, values, stamps)
def test_put_round_trip(client_id: int, seq: int, key: bytes, value: bytes, stamp: int) -> None:
    data = encode_put(client_id, seq, key, value, stamp)
    assert decode_command(data) == Command(Op.PUT, client_id, seq, key, value, stamp_ms=stamp)
    assert decode_session(data) == (client_id, seq)
    assert data[:27] == header(Op.PUT, client_id, seq, len(key), stamp)


@given(seqs, stamps)
def test_register_round_trip(nonce: int, stamp: int) -> None:
    data = encode_register(nonce, stamp)
    assert data == header(Op.REGISTER, 0, nonce, 0, stamp)
    assert decode_command(data) == Command(Op.REGISTER, 0, nonce, b"", stamp_ms=stamp)
    assert decode_session(data) == (0, nonce)


@given(client_ids, seqs, keys)
def test_delete_round_trip(client_id: int, seq: int, key: bytes) -> None:
    data = encode_delete(client_id, seq, key)
    assert decode_command(data) == Command(Op.DELETE, client_id, seq, key)


@given(client_ids, seqs, keys, optional_values, optional_values)
def test_cas_round_trip(
    client_id: int, seq: int, key: bytes, expected: bytes | None, new: bytes | None
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
    client_id: int,
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
        (header(9, CID, 1, 1) + b"k", "op"),
        (header(1, CID, 0, 1) + b"k", "seq"),
        (header(1, 0, 1, 1) + b"k", "session_id"),
        (header(1, CID, 1, 0), "key length"),
        (header(1, CID, 1, 512), "key length"),
        (header(1, CID, 1, 5) + b"k", "trunc"),
        (header(4, 0, 0, 0), "register"),  # a register needs a nonce
        (header(4, CID, 1, 0), "register"),  # and no session
        (header(4, 0, 1, 1) + b"k", "register"),  # and no key
        (encode_register(1) + b"x", "register"),
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
        lambda: encode_put(b"\x01" * 8, 1, b"k", b"v"),
        lambda: encode_put(0, 1, b"k", b"v"),
        lambda: encode_put(CID, 1, b"k", b"v", -1),
        lambda: encode_put(CID, 1, b"k", b"v", SEQ_MAX + 1),
        lambda: encode_register(0),
        lambda: encode_register(1, -5),
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
    results = [True, False, None, CommandRejected(ResultCode.STALE, "old"), True, 17]
    data = encode_results(results)
    assert len(data) == len(results)
    assert decode_results(data) == [
        True,
        False,
        None,
        CommandRejected(ResultCode.STALE),
        True,
        True,  # a registration: its session id is its entry's index, not in the byte
    ]
    assert decode_results(encode_results([CommandRejected(ResultCode.MALFORMED)])) == [
        CommandRejected(ResultCode.MALFORMED)
    ]
    with pytest.raises(ValueError):
        decode_results(bytes([200]))


def test_rejection_is_falsy() -> None:
    """A caller doing bool(result) must never read a rejection as "existed" or "swapped"."""
    assert not CommandRejected(ResultCode.STALE, "x")
    assert not CommandRejected(ResultCode.MALFORMED)
