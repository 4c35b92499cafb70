"""The sans-I/O codec: framing, limits, msgpack bodies, Raft message validation."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)
from kvstore.errors import RemoteProtocolError
from kvstore.transport.codec import (
    NEED_DATA,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameKind,
    decode_batch,
    decode_message,
    encode_batch,
    encode_frame,
    encode_message,
    encode_raft_frame,
)

REMOTE_TYPES = [t for t in MessageType if not t.is_local()]
LOCAL_TYPES = [t for t in MessageType if t.is_local()]
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
NODE_IDS = st.text(min_size=1, max_size=12)

entries_st = st.lists(
    st.builds(
        Entry,
        U64,
        st.integers(min_value=1, max_value=(1 << 64) - 1),
        st.sampled_from(list(EntryType)),
        st.binary(max_size=64),
    ),
    max_size=8,
).map(tuple)

snapshot_st = st.none() | st.builds(
    SnapshotMeta,
    U64,
    U64,
    st.builds(
        ConfState,
        st.lists(NODE_IDS, max_size=5).map(tuple),
        st.lists(NODE_IDS, max_size=3).map(tuple),
    ),
)

message_st = st.builds(
    Message,
    st.sampled_from(REMOTE_TYPES),
    NODE_IDS,
    NODE_IDS,
    U64,
    U64,
    U64,
    entries_st,
    U64,
    st.booleans(),
    U64,
    st.binary(max_size=32),
    snapshot_st,
)


def decode_all(decoder: FrameDecoder) -> list[tuple[FrameKind, object]]:
    frames = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        frames.append(frame)
    return frames


def sample_message() -> Message:
    return Message(
        MessageType.APPEND,
        "n2",
        "n1",
        term=7,
        log_term=6,
        index=41,
        entries=(Entry(7, 42, EntryType.NORMAL, b"x" * 10), Entry(7, 43, EntryType.CONF_CHANGE)),
        commit=40,
        context=b"ctx",
        snapshot=SnapshotMeta(30, 5, ConfState(("n1", "n2"), ("n9",))),
    )


# --- Raft messages ----------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message_st, max_size=6))
def test_raft_batch_round_trips_through_a_frame(messages: list[Message]) -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(encode_raft_frame(messages))
    [(kind, body)] = decode_all(decoder)
    assert kind is FrameKind.RAFT
    decoded = decode_batch(body)
    assert decoded == messages
    # Enum-typed fields come back as enums, not bare ints.
    for msg in decoded:
        assert type(msg.type) is MessageType
        assert all(type(e.type) is EntryType for e in msg.entries)


@given(message_st)
def test_message_wire_form_is_the_same_for_single_and_batch_encoding(msg: Message) -> None:
    # encode_batch hands NamedTuples to msgpack directly; that must equal encode_message's list.
    assert msgpack.packb(encode_message(msg), use_bin_type=True) == msgpack.packb(
        encode_batch([msg])[0], use_bin_type=True
    )
    wire = msgpack.unpackb(msgpack.packb(encode_message(msg), use_bin_type=True), raw=False)
    assert decode_message(wire) == msg


@pytest.mark.parametrize("msg_type", REMOTE_TYPES, ids=lambda t: t.name)
def test_every_remote_message_type_round_trips(msg_type: MessageType) -> None:
    msg = sample_message()._replace(type=msg_type)
    wire = msgpack.unpackb(msgpack.packb(encode_message(msg), use_bin_type=True), raw=False)
    assert decode_message(wire) == msg


@pytest.mark.parametrize("msg_type", LOCAL_TYPES, ids=lambda t: t.name)
def test_local_message_types_are_neither_sent_nor_accepted(msg_type: MessageType) -> None:
    msg = Message(msg_type, "n2", "n1")
    with pytest.raises(ValueError):
        encode_message(msg)
    with pytest.raises(ValueError):
        encode_batch([msg])
    wire = encode_message(sample_message())
    wire[0] = int(msg_type)
    with pytest.raises(RemoteProtocolError):
        decode_message(wire)


def _wire() -> list[object]:
    return msgpack.unpackb(msgpack.packb(encode_message(sample_message())), raw=False)


# (field position, bad value): every field with a wrong type or an out-of-range value.
BAD_FIELDS = [
    (0, 99),  # unknown type
    (0, "APPEND"),
    (0, True),
    (1, ""),  # empty recipient
    (1, 7),
    (1, b"n2"),
    (1, "x" * 300),
    (2, None),
    (3, -1),  # term
    (3, 1 << 64),
    (3, 1.5),
    (3, True),  # bool is not an int on the wire
    (3, "7"),
    (4, -5),
    (5, None),
    (6, None),  # entries
    (6, {}),
    (6, [[7, 42, 0]]),  # entry too short
    (6, [[7, 42, 0, b"", 1]]),  # too long
    (6, [[7, 2**64, 0, b""]]),  # index beyond u64 (0 is allowed: a forwarded proposal)
    (6, [[7, 42, 5, b""]]),  # unknown entry type
    (6, [[7, 42, 0, "text"]]),  # data must be bytes
    (6, [[-1, 42, 0, b""]]),
    (6, [[7, 42, False, b""]]),
    (6, [7, 42, 0, b""]),  # not nested
    (7, -1),  # commit
    (8, 0),  # reject must be a bool
    (8, None),
    (9, 2.0),  # reject_hint
    (10, "ctx"),  # context must be bytes
    (10, None),
    (11, [30, 5]),  # snapshot too short
    (11, [30, 5, [["n1"], ["n9"]], 1]),
    (11, [30, 5, [["n1"]]]),
    (11, [30, 5, [["n1", ""], []]]),
    (11, [30, 5, [[1], []]]),
    (11, [30, -5, [[], []]]),
    (11, [30, 5, "n1"]),
    (11, b""),
]


@pytest.mark.parametrize(("position", "value"), BAD_FIELDS)
def test_wrong_field_types_and_ranges_are_refused(position: int, value: object) -> None:
    wire = _wire()
    decode_message(wire)  # the unmodified form is fine
    wire[position] = value
    with pytest.raises(RemoteProtocolError):
        decode_message(wire)


@pytest.mark.parametrize("obj", [None, 1, b"", {}, [], _wire()[:-1], [*_wire(), None], "msg"])
def test_malformed_messages_are_refused(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(obj)


@pytest.mark.parametrize("obj", [None, {}, b"x", 3, [None], [_wire(), 5]])
def test_malformed_batches_are_refused(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_batch(obj)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300)
@given(msgpack_values)
def test_arbitrary_values_decode_to_a_message_or_raise_remote_protocol_error(obj: object) -> None:
    try:
        msg = decode_message(obj)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


# --- frames -----------------------------------------------------------------------------------


def test_frame_layout_matches_the_wire_contract() -> None:
    body = {"code": "x", "message": "y"}
    frame = encode_frame(FrameKind.ERROR, body)
    payload = msgpack.packb(body, use_bin_type=True)
    # 4-byte big-endian length of what follows, version 2, kind, msgpack body.
    assert frame == struct.pack(">IBB", len(payload) + 2, 2, 30) + payload


def _stream() -> tuple[bytes, list[tuple[FrameKind, object]]]:
    frames: list[tuple[FrameKind, object]] = [
        (FrameKind.HELLO, {"role": "peer", "nonce": b"\x00" * 32}),
        (FrameKind.RAFT, [encode_message(sample_message())]),
        (FrameKind.REQUEST, [1, 2, b"key", b"v" * 300]),
        (FrameKind.RESPONSE, None),
        (FrameKind.SNAPSHOT_CHUNK, {"offset": 0, "data": bytes(range(256)) * 3}),
    ]
    data = b"".join(encode_frame(kind, body) for kind, body in frames)
    return data, frames


def _expected(frames: list[tuple[FrameKind, object]]) -> list[tuple[FrameKind, object]]:
    # What msgpack gives back: lists for tuples.
    return [(k, msgpack.unpackb(msgpack.packb(b, use_bin_type=True), raw=False)) for k, b in frames]


def test_stream_split_at_every_byte_boundary_decodes_the_same() -> None:
    data, frames = _stream()
    expected = _expected(frames)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder(1 << 16)
        got = []
        for part in (data[:cut], data[cut:]):
            if part:  # b"" would mean EOF
                decoder.receive_data(part)
                got += decode_all(decoder)
        assert got == expected, f"split at byte {cut}"
        assert decoder.buffered_bytes == 0


def test_stream_fed_one_byte_at_a_time() -> None:
    data, frames = _stream()
    decoder = FrameDecoder(1 << 16)
    got = []
    for i in range(len(data)):
        decoder.receive_data(data[i : i + 1])
        got += decode_all(decoder)
    assert got == _expected(frames)


def test_frame_at_the_limit_is_accepted_and_one_byte_more_is_refused() -> None:
    body = b"z" * 1000
    frame = encode_frame(FrameKind.REQUEST, body)
    size = len(frame) - 4
    decoder = FrameDecoder(size)
    decoder.receive_data(frame)
    assert decoder.next_frame() == (FrameKind.REQUEST, body)
    decoder = FrameDecoder(size - 1)
    decoder.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()


def test_oversized_length_prefix_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(1 << 20)
    # Claims 4 GiB; only the 6-byte header ever arrives. No waiting for a body that big.
    decoder.receive_data(struct.pack(">IBB", 0xFFFFFFFF, PROTOCOL_VERSION, int(FrameKind.RAFT)))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    # The decoder stays broken: the stream cannot be resynchronised.
    decoder.receive_data(encode_frame(FrameKind.RAFT, []))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_encoder_refuses_a_frame_over_the_limit() -> None:
    with pytest.raises(ValueError):
        encode_frame(FrameKind.REQUEST, b"x" * 100, frame_bytes_max=50)
    assert len(encode_frame(FrameKind.REQUEST, b"x" * 100, frame_bytes_max=200)) > 100


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (struct.pack(">IBB", 3, PROTOCOL_VERSION + 1, 10), "version"),
        (struct.pack(">IBB", 3, 0, 10), "version"),
        (struct.pack(">IBB", 3, PROTOCOL_VERSION, 0), "kind"),
        (struct.pack(">IBB", 3, PROTOCOL_VERSION, 99), "kind"),
        (struct.pack(">IBB", 1, PROTOCOL_VERSION, 10), "short"),
        (struct.pack(">IBB", 0, PROTOCOL_VERSION, 10), "short"),
    ],
)
def test_bad_header_is_refused(header: bytes, reason: str) -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(header + b"\x90")
    with pytest.raises(RemoteProtocolError, match=reason):
        decoder.next_frame()


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb([1, 2, 3])[:-1],  # truncated array
        msgpack.packb(b"abcdef", use_bin_type=True)[:-2],  # truncated bin
        msgpack.packb({"a": 1}) + b"\x01",  # trailing bytes
        b"\xc1",  # the one never-used msgpack byte
        b"",  # no body at all
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\xd4\x01\x01",  # ext type: never accepted
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext: never accepted either
        b"\x81\x91\x01\x01",  # map with a list key (unhashable)
        b"\x91" * 5000 + b"\x01",  # nesting deeper than the decoder's stack
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
    ],
)
def test_undecodable_body_is_refused(payload: bytes) -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(struct.pack(">IBB", len(payload) + 2, PROTOCOL_VERSION, 20) + payload)
    with pytest.raises(RemoteProtocolError, match="does not decode"):
        decoder.next_frame()


def test_eof_between_frames_and_in_the_middle_of_one() -> None:
    frame = encode_frame(FrameKind.RESPONSE, [1, 2])
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(frame)
    decoder.receive_data(b"")
    assert decoder.eof
    assert decoder.next_frame() == (FrameKind.RESPONSE, [1, 2])
    with pytest.raises(ConnectionError, match="closed by the other side"):
        decoder.next_frame()

    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(frame[:-1])
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(ConnectionError, match="middle of a frame"):
        decoder.next_frame()


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=50))
def test_random_bytes_only_ever_give_frames_need_data_or_remote_protocol_error(
    data: bytes, step: int
) -> None:
    decoder = FrameDecoder(1 << 10)
    try:
        for i in range(0, len(data), step):
            decoder.receive_data(data[i : i + step])
            decode_all(decoder)
    except RemoteProtocolError:
        pass


def test_a_frame_of_another_protocol_version_is_refused_naming_both() -> None:
    """A member or client of the previous release (version 1: no CHALLENGE, no frame MACs, no
    IDENTITY) is told apart at its first frame, not by a confusing handshake failure."""
    decoder = FrameDecoder(1 << 16)
    decoder.receive_data(struct.pack(">IBB", 3, 1, FrameKind.HELLO) + b"\xc0")
    with pytest.raises(RemoteProtocolError, match=r"version 1 \(this build speaks 2"):
        decoder.next_frame()
