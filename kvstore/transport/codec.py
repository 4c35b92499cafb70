"""The wire codec, sans-I/O (h11 style): frames, msgpack bodies and Raft messages.

A frame is a 4-byte big-endian length N of what follows, then one byte of protocol version
(`PROTOCOL_VERSION`), one byte of `FrameKind`, then N - 2 bytes of msgpack body. `N` is at most
the receiver's `frame_bytes_max`. Bodies are plain msgpack (bin for bytes, str for text); nothing
received is ever turned into anything but None, bool, int, float, str, bytes, list and dict.

After a shared-secret handshake, every frame is followed by a MAC tag that is not counted in N
(`kvstore.transport.frame_mac`); `FrameDecoder.authenticate_with()` turns that on, and the tag is
checked before the body is decoded.

Before the handshake completes, a listener's decoder is limited to `HANDSHAKE_FRAME_BYTES_MAX`:
a bigger length prefix fails as soon as the 6-byte header is in, before the body is read.

This module does no I/O: feed bytes to `FrameDecoder.receive_data()`, pull frames with
`FrameDecoder.next_frame()` until it returns `NEED_DATA`, and send what `encode_frame()` returns.

The wire form of a Raft `Message` is its fields in declaration order as one array (msgpack packs
the `NamedTuple`s as arrays, so encoding costs no per-field Python work); entries are
`[term, index, type, data]`, a snapshot is `[index, term, [voters, learners]]`.
`decode_message()` checks every field's type and range before it builds the `Message`, so
garbage raises `RemoteProtocolError` and never reaches the Raft core.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from typing import Final, Literal, NoReturn

import msgpack

from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)
from kvstore.errors import RemoteProtocolError
from kvstore.transport.frame_mac import TAG_BYTES, FrameAuthenticator

PROTOCOL_VERSION: Final = 2
"""The version byte of every frame this code writes and the only one it reads.

It changes whenever two builds could no longer talk: a frame kind's body, the handshake or its
key labels, what follows a frame (the MAC), or a new frame that a peer must answer. Version 2:
the secret handshake with a CHALLENGE and role-labelled keys, a MAC after every later frame,
and the IDENTITY exchange between peers (version 1 had none of them). A frame of another
version closes the connection with a message naming both versions."""

HEADER_BYTES: Final = 6
"""Length prefix (4) + version (1) + kind (1)."""

_PREFIX_BYTES: Final = 4
_KIND_AND_VERSION_BYTES: Final = 2
_LENGTH_MAX: Final = (1 << 32) - 1
_HEADER = struct.Struct(">IBB")

ARRAY_ITEMS_MAX: Final = 1 << 20
"""Most items in one msgpack array or map that the decoder accepts (bounds memory per frame)."""

NODE_ID_CHARS_MAX: Final = 256
"""Longest node id accepted from the wire."""

MESSAGES_PER_BATCH_MAX: Final = 1 << 16
"""Most Raft messages in one RAFT frame."""

MEMBERS_MAX: Final = 1024
"""Most node ids in a configuration received from the wire."""

_U64_MAX: Final = (1 << 64) - 1

HANDSHAKE_FRAME_BYTES_MAX: Final = 4 << 10
"""Largest frame a listener accepts before the other side is authenticated: the handshake's
frames are a few hundred bytes, and a stranger must not make us buffer or decode more."""

DIALER_HANDSHAKE_FRAME_BYTES_MAX: Final = 64 << 10
"""Largest handshake frame a dialer accepts (the listener's answer names its members)."""


class FrameKind(enum.IntEnum):
    """What a frame's body holds."""

    HELLO = 1
    """Handshake, dialer -> listener: role, claimed node id, target, nonce (see `auth`)."""
    HELLO_ACK = 2
    """Handshake without a secret, listener -> dialer: its node id, members and protocol."""
    AUTH = 3
    """Handshake with a secret, dialer -> listener: the dialer's proof."""
    AUTH_OK = 4
    """Handshake with a secret, listener -> dialer: its proof, node id, members and protocol."""
    CHALLENGE = 5
    """Handshake with a secret, listener -> dialer: the listener's nonce, nothing else."""
    IDENTITY = 9
    """Peers only, right after the handshake, both ways: the sender's cluster id and
    incarnation (`kvstore.transport.identity`)."""
    RAFT = 10
    """A batch of Raft messages: a list of `encode_message()` results."""
    SNAPSHOT_CHUNK = 11
    """A chunk of a snapshot stream; the node defines the body."""
    REQUEST = 20
    """Client -> node; the body is defined by `kvstore.client.protocol`."""
    RESPONSE = 21
    """Node -> client."""
    ERROR = 30
    """`{"code": str, "message": str}`, sent before closing when it helps the other side."""


_KINDS: Final[dict[int, FrameKind]] = {int(k): k for k in FrameKind}


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by `FrameDecoder.next_frame()` when more bytes are needed for the next frame."""

NeedData = Literal[_NeedData.NEED_DATA]
"""The type of `NEED_DATA`, for annotations."""


def encode_frame(kind: FrameKind, body: object, *, frame_bytes_max: int | None = None) -> bytes:
    """Return the bytes of one frame of `kind` carrying `body` (anything msgpack packs).

    Raises `ValueError` if the frame would exceed `frame_bytes_max` (when given) or the 4-byte
    length, and `TypeError` if msgpack cannot pack `body`: both are the caller's mistakes.
    """
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    size = len(payload) + _KIND_AND_VERSION_BYTES
    limit = _LENGTH_MAX if frame_bytes_max is None else min(frame_bytes_max, _LENGTH_MAX)
    if size > limit:
        raise ValueError(f"{kind.name} frame of {size} bytes exceeds the limit of {limit}")
    return _HEADER.pack(size, PROTOCOL_VERSION, kind) + payload


def decode_body(payload: bytes | bytearray | memoryview) -> object:
    """Decode one msgpack body with limits; raise `RemoteProtocolError` if it does not decode.

    No ext types are accepted (`max_ext_len=0`), so nothing but plain values comes out.
    """
    size = len(payload)
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=min(size, ARRAY_ITEMS_MAX),
            max_map_len=min(size, ARRAY_ITEMS_MAX),
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers truncation, extra data, bad UTF-8 and too-deep nesting; TypeError an
        # unhashable map key.
        raise RemoteProtocolError(f"frame body does not decode: {exc!r}") from exc


class FrameDecoder:
    """Turns a byte stream into frames. One per connection and direction.

    Checks happen as early as the bytes allow: an oversized length, a bad version or an unknown
    kind raise as soon as the 6-byte header is in, before any body is buffered. After it raised
    `RemoteProtocolError` once, the decoder is broken and raises on every call.
    """

    def __init__(self, frame_bytes_max: int) -> None:
        """`frame_bytes_max` bounds N, the length in the prefix (version + kind + body)."""
        if frame_bytes_max < _KIND_AND_VERSION_BYTES:
            raise ValueError(f"frame_bytes_max must be >= 2, got {frame_bytes_max}")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._authenticator: FrameAuthenticator | None = None
        self._tag_bytes = 0

    def authenticate_with(self, authenticator: FrameAuthenticator) -> None:
        """From the next frame on, expect a tag after every frame and verify it (with
        `authenticator.verify`) before the body is decoded. Call once, right after the
        handshake's last frame was returned."""
        if self._authenticator is not None:
            raise RuntimeError("the decoder already authenticates frames")
        self._authenticator = authenticator
        self._tag_bytes = TAG_BYTES

    @property
    def eof(self) -> bool:
        """Whether `receive_data(b"")` has been called."""
        return self._eof

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the connection; `b""` means the other side closed it (EOF)."""
        if self._eof:
            if data:
                raise ValueError("receive_data after EOF")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_frame(self) -> tuple[FrameKind, object] | NeedData:
        """Return the next complete frame as `(kind, body)`, or `NEED_DATA`.

        Raises `RemoteProtocolError` on a frame the other side should not have sent, and
        `ConnectionError` once EOF was received and no complete frame is left (a frame cut short
        by EOF is a lost connection, not garbage).
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        available = len(buffer)
        if available >= HEADER_BYTES:
            size, version, kind_byte = _HEADER.unpack_from(buffer)
            if size > self.frame_bytes_max:
                self._fail(f"frame of {size} bytes exceeds the limit of {self.frame_bytes_max}")
            if size < _KIND_AND_VERSION_BYTES:
                self._fail(f"frame length {size} is too short")
            if version != PROTOCOL_VERSION:
                self._fail(
                    f"unknown protocol version {version} (this build speaks {PROTOCOL_VERSION}:"
                    " a member or client of another release?)"
                )
            kind = _KINDS.get(kind_byte)
            if kind is None:
                self._fail(f"unknown frame kind {kind_byte}")
            end = _PREFIX_BYTES + size
            if available >= end + self._tag_bytes:
                # Decode in place (no copy of the payload); the views must be released before
                # the buffer may shrink.
                with memoryview(buffer) as view, view[HEADER_BYTES:end] as payload:
                    try:
                        if self._authenticator is not None:
                            with view[:end] as frame, view[end : end + TAG_BYTES] as tag:
                                self._authenticator.verify(frame, tag)
                        body = decode_body(payload)
                    except RemoteProtocolError as exc:
                        self._error = exc
                        raise
                # Deleting from the front of a bytearray is O(1) amortised in CPython.
                del buffer[: end + self._tag_bytes]
                return kind, body
        if self._eof:
            if available:
                raise ConnectionError(f"connection closed in the middle of a frame ({available} B)")
            raise ConnectionError("connection closed by the other side")
        return NEED_DATA

    def _fail(self, reason: str) -> NoReturn:
        self._error = RemoteProtocolError(reason)
        raise self._error


# --- Raft messages --------------------------------------------------------------------------


def encode_message(msg: Message) -> list[object]:
    """Return the msgpack-able wire form of `msg`: its fields in order, as a list.

    Local message types never cross the network: encoding one raises `ValueError`.
    """
    if msg.type < MessageType.PROPOSE:
        raise ValueError(f"local message type {msg.type!r} cannot be sent")
    return list(msg)


def encode_batch(messages: Sequence[Message]) -> Sequence[Message]:
    """Return the body of a RAFT frame for `messages` (checked, not copied).

    Messages are `NamedTuple`s, which msgpack packs as arrays exactly like `encode_message()`'s
    lists, so the batch goes to msgpack as it is. Raises `ValueError` on a local message type.
    """
    for msg in messages:
        if msg.type < MessageType.PROPOSE:
            raise ValueError(f"local message type {msg.type!r} cannot be sent")
    return messages


_MESSAGE_TYPES: Final[dict[int, MessageType]] = {int(t): t for t in MessageType if not t.is_local()}
_ENTRY_TYPES: Final[dict[int, EntryType]] = {int(t): t for t in EntryType}
_MESSAGE_FIELDS: Final = len(Message._fields)
_new_tuple: Final = tuple.__new__


def _bad(what: str, value: object) -> RemoteProtocolError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return RemoteProtocolError(f"bad {what} in Raft message: {text}")


def _node_id(value: object, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= NODE_ID_CHARS_MAX:
        raise _bad(what, value)
    return value


def _u64(value: object, what: str) -> int:
    # `type(...) is int` also rejects bool, which msgpack decodes separately.
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise _bad(what, value)
    return value


def _node_ids(value: object, what: str) -> tuple[str, ...]:
    if type(value) is not list or len(value) > MEMBERS_MAX:
        raise _bad(what, value)
    return tuple(_node_id(v, what) for v in value)


def _decode_entries(value: object) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise _bad("entries", value)
    if not value:
        return ()
    entries: list[Entry] = []
    append = entries.append
    entry_types = _ENTRY_TYPES
    for item in value:
        # The hot path: one APPEND carries many entries, so checks stay inline.
        if type(item) is not list or len(item) != 4:
            raise _bad("entry", item)
        term, index, kind, data = item
        if (
            type(term) is not int
            or type(index) is not int
            or type(data) is not bytes
            or not 0 <= term <= _U64_MAX
            or not 0 <= index <= _U64_MAX  # 0: a forwarded proposal has no index yet
        ):
            raise _bad("entry", item)
        entry_type = entry_types.get(kind) if type(kind) is int else None
        if entry_type is None:
            raise _bad("entry type", kind)
        # tuple.__new__ skips the NamedTuple's Python-level __new__: a quarter of the cost here.
        append(_new_tuple(Entry, (term, index, entry_type, data)))
    return tuple(entries)


def _decode_snapshot(value: object) -> SnapshotMeta | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 3:
        raise _bad("snapshot", value)
    index, term, conf = value
    if type(conf) is not list or len(conf) != 2:
        raise _bad("snapshot configuration", conf)
    voters = _node_ids(conf[0], "snapshot voters")
    learners = _node_ids(conf[1], "snapshot learners")
    return SnapshotMeta(
        _u64(index, "snapshot index"), _u64(term, "snapshot term"), ConfState(voters, learners)
    )


def decode_message(obj: object) -> Message:
    """Build a `Message` from its wire form, checking every field's type and range.

    Raises `RemoteProtocolError` on anything `encode_message()` would not have produced,
    including local message types.
    """
    if type(obj) is not list or len(obj) != _MESSAGE_FIELDS:
        raise _bad("message", obj)
    (
        type_,
        recipient,
        sender,
        term,
        log_term,
        index,
        entries,
        commit,
        reject,
        reject_hint,
        context,
        snapshot,
    ) = obj
    msg_type = _MESSAGE_TYPES.get(type_) if type(type_) is int else None
    if msg_type is None:
        raise _bad("message type", type_)
    if type(reject) is not bool:
        raise _bad("reject", reject)
    if type(context) is not bytes:
        raise _bad("context", context)
    return Message(
        msg_type,
        _node_id(recipient, "recipient"),
        _node_id(sender, "sender"),
        _u64(term, "term"),
        _u64(log_term, "log_term"),
        _u64(index, "index"),
        _decode_entries(entries),
        _u64(commit, "commit"),
        reject,
        _u64(reject_hint, "reject_hint"),
        context,
        _decode_snapshot(snapshot),
    )


def decode_batch(obj: object) -> list[Message]:
    """Decode the body of a RAFT frame; raises `RemoteProtocolError` on garbage."""
    if type(obj) is not list or len(obj) > MESSAGES_PER_BATCH_MAX:
        raise _bad("batch", obj)
    return [decode_message(item) for item in obj]


def encode_raft_frame(messages: Iterable[Message], *, frame_bytes_max: int | None = None) -> bytes:
    """Shortcut: one RAFT frame carrying `messages` (see `encode_batch`)."""
    return encode_frame(
        FrameKind.RAFT, encode_batch(tuple(messages)), frame_bytes_max=frame_bytes_max
    )
