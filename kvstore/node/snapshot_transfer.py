"""The snapshot streaming protocol, sans I/O: what to send next, what an acknowledgement means,
when a stream stalled, and which acknowledgement a receiver owes.

A leader streams a snapshot file to a follower in chunks over the snapshot channel of the
transport. The sender keeps at most `SNAPSHOT_WINDOW_CHUNKS` chunks unacknowledged; the
receiver acknowledges every chunk with the next offset it needs, so a lost chunk or a dropped
connection resumes from there rather than from zero. A stream without acknowledged progress for
`SNAPSHOT_STALL_S` resends from the last acknowledged offset, and gives up (the core asks for a
new snapshot later) after `SNAPSHOT_STALLS_MAX` such stalls.

`SnapshotSender` and `SnapshotReceiverState` are pure state machines: they read no clock (the
time is passed in), touch no file and send nothing. They return what to do; the node's thin
asyncio driver (`NodeRuntime._stream_snapshot`, `_on_snapshot_chunk`) reads the file, sends the
frames and waits. Both live on the loop thread (THREADS.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

SNAPSHOT_WINDOW_CHUNKS = 4
"""Snapshot chunks a sender may have sent but not yet seen acknowledged."""
SNAPSHOT_POLL_S = 0.1
"""How long a snapshot sender waits for an acknowledgement before it looks again."""
SNAPSHOT_CHUNK_RETRY_S = 0.005
"""Pause before retrying a snapshot chunk that found the peer's send queue full."""
SNAPSHOT_STALL_S = 2.0
"""A snapshot stream with no acknowledged progress for this long resends from the last ack."""
SNAPSHOT_STALLS_MAX = 3
"""Stalls after which a snapshot stream gives up (the core asks for a new one later)."""

# Acknowledgement statuses of the snapshot stream (receiver -> sender).
ACK_OK = "ok"
"""Chunk stored; `next_offset` is the first byte still missing."""
ACK_GAP = "gap"
"""A chunk or the end came before bytes that are missing: resend from `next_offset`."""
ACK_DONE = "done"
"""Complete, verified and handed to the consensus core."""
ACK_FAILED = "failed"
"""The receiver gave up on this stream (bad checksum, bad message): start a new one."""


@dataclasses.dataclass(frozen=True, slots=True)
class SendChunk:
    """Send `length` bytes of the file from `offset`."""

    offset: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class SendEnd:
    """Send the end frame (checksum and the SNAPSHOT message)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """A data or end frame of a stream, checked."""

    snapshot_id: str
    offset: int
    total_bytes: int
    data: bytes
    end: bool
    """The end frame: it carries the checksum and the SNAPSHOT message too."""


def parse_chunk(body: dict[Any, Any]) -> Chunk:
    """Check a chunk frame from a peer; `ValueError` for anything malformed."""
    snapshot_id = body.get("id")
    data = body.get("data")
    if not isinstance(snapshot_id, str) or not isinstance(data, bytes):
        raise ValueError("snapshot chunk with a bad id or data")
    offset, total = body.get("offset"), body.get("total")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError("snapshot chunk with a bad offset or size")
    if not isinstance(total, int) or isinstance(total, bool):
        raise ValueError("snapshot chunk with a bad offset or size")
    return Chunk(snapshot_id, offset, total, data, "checksum" in body)


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """A receiver's acknowledgement, to be sent to the stream's sender."""

    snapshot_id: str
    next_offset: int
    status: str

    def body(self) -> dict[str, Any]:
        """The frame body on the snapshot channel."""
        return {"id": self.snapshot_id, "next_offset": self.next_offset, "status": self.status}


class SnapshotSender:
    """The sender's side of one stream: offsets, the window, acknowledgements and stalls.

    The driver's round: `begin_round()`; then, while `next_send()` returns something, do it and
    report with `sent(accepted, length)`; then wait up to `wait_s()` for an acknowledgement
    (`on_ack`); then `after_wait(now)`. The stream is over once `outcome` is not None.
    """

    __slots__ = (
        "acked",
        "chunk_bytes",
        "end_sent",
        "offset",
        "outcome",
        "progress_acked",
        "progress_at",
        "queue_full",
        "rewind",
        "snapshot_id",
        "stall_s",
        "stalls",
        "stalls_max",
        "total_bytes",
        "window_bytes",
    )

    def __init__(
        self,
        snapshot_id: str,
        total_bytes: int,
        *,
        chunk_bytes: int,
        now: float,
        window_chunks: int | None = None,
        stall_s: float | None = None,
        stalls_max: int | None = None,
    ) -> None:
        self.snapshot_id = snapshot_id
        self.total_bytes = total_bytes
        self.chunk_bytes = chunk_bytes
        chunks = SNAPSHOT_WINDOW_CHUNKS if window_chunks is None else window_chunks
        self.window_bytes = chunks * chunk_bytes
        # Read at construction (not as defaults), so a test may change the module's values.
        self.stall_s = SNAPSHOT_STALL_S if stall_s is None else stall_s
        self.stalls_max = SNAPSHOT_STALLS_MAX if stalls_max is None else stalls_max
        self.offset = 0
        """The next byte to send."""
        self.acked = 0
        """Bytes the receiver holds (the highest `next_offset` it reported)."""
        self.rewind: int | None = None
        """Set when the receiver reported a gap: resend from there."""
        self.end_sent = False
        self.queue_full = False
        """The transport refused the last frame this round: retry soon."""
        self.outcome: bool | None = None
        """True once the receiver reported the snapshot done, False once it failed or the
        stream gave up; None while it runs."""
        self.stalls = 0
        self.progress_acked = 0
        self.progress_at = now

    def begin_round(self) -> None:
        """Start a round of sending: take a reported gap into account."""
        if self.rewind is not None:
            self.offset, self.rewind, self.end_sent = self.rewind, None, False
        self.queue_full = False

    def next_send(self) -> SendChunk | SendEnd | None:
        """What to send now, or None (window full, all sent, or the queue was full)."""
        if self.queue_full or self.outcome is not None:
            return None
        if self.offset < self.total_bytes:
            if self.offset - self.acked >= self.window_bytes:
                return None
            return SendChunk(self.offset, min(self.chunk_bytes, self.total_bytes - self.offset))
        if not self.end_sent:
            return SendEnd()
        return None

    def sent(self, accepted: bool, length: int = 0) -> None:
        """The driver tried the last `next_send()`: `accepted` by the transport, `length` bytes
        of data (0 for the end frame)."""
        if not accepted:
            self.queue_full = True
        elif self.offset < self.total_bytes:
            self.offset += length
        else:
            self.end_sent = True

    def wait_s(self) -> float:
        """How long to wait for an acknowledgement before the next round."""
        return SNAPSHOT_CHUNK_RETRY_S if self.queue_full else SNAPSHOT_POLL_S

    def on_ack(self, status: object, next_offset: object) -> None:
        """An acknowledgement from the receiver. `ValueError` for a malformed one."""
        if not isinstance(next_offset, int) or isinstance(next_offset, bool) or next_offset < 0:
            raise ValueError(f"bad next_offset {next_offset!r}")
        if status == ACK_OK:
            self.acked = max(self.acked, next_offset)
        elif status == ACK_GAP:
            # The receiver holds exactly `next_offset` bytes (it may have restarted its file).
            self.acked = next_offset
            self.rewind = next_offset
        elif status == ACK_DONE:
            self.outcome = True
        elif status == ACK_FAILED:
            self.outcome = False
        else:
            raise ValueError(f"unknown snapshot ack status {status!r}")

    def after_wait(self, now: float) -> None:
        """After waiting: note progress, or count a stall (resend from the last ack, or give
        up after `stalls_max`)."""
        if self.acked > self.progress_acked:
            self.progress_acked, self.progress_at, self.stalls = self.acked, now, 0
        elif now - self.progress_at > self.stall_s:
            # Chunks or acknowledgements were lost (a dropped connection): resend from what
            # the receiver last said it holds.
            self.stalls += 1
            if self.stalls > self.stalls_max:
                if self.outcome is None:
                    self.outcome = False
                return
            self.offset, self.end_sent, self.progress_at = self.acked, False, now


class SnapshotReceiverState:
    """The receiver's bookkeeping for one peer's streams: which stream is current, which one
    finished last (a resent end is answered "done" again), and which gap was reported (one gap
    is reported once, not once per chunk that finds it)."""

    __slots__ = ("current_id", "finished_id", "gap_reported")

    def __init__(self) -> None:
        self.current_id: str | None = None
        self.finished_id: str | None = None
        self.gap_reported = -1

    def already_done(self, snapshot_id: str, total_bytes: int) -> Ack | None:
        """The "done" to repeat when the sender missed it, else None."""
        if self.finished_id == snapshot_id:
            return Ack(snapshot_id, total_bytes, ACK_DONE)
        return None

    def starts_new_stream(self, snapshot_id: str) -> bool:
        """Whether a frame of `snapshot_id` starts a new stream (dropping the current one)."""
        if self.current_id == snapshot_id:
            return False
        self.current_id, self.gap_reported = snapshot_id, -1
        return True

    def gap(self, next_offset: int) -> Ack | None:
        """A chunk found bytes missing before it: the gap report, unless already made."""
        assert self.current_id is not None
        if self.gap_reported == next_offset:
            return None
        self.gap_reported = next_offset
        return Ack(self.current_id, next_offset, ACK_GAP)

    def stored(self, next_offset: int) -> Ack:
        """A chunk was stored; `next_offset` is the first byte still missing."""
        assert self.current_id is not None
        return Ack(self.current_id, next_offset, ACK_OK)

    def complete(self) -> None:
        """Every byte of the current stream arrived: it leaves for verification (a frame of it
        that comes again starts it over, until it is `finished`)."""
        self.current_id = None

    def finished(self, snapshot_id: str) -> None:
        """The stream was verified and handed to the core."""
        self.finished_id = snapshot_id

    def dropped(self) -> Ack | None:
        """The current stream failed here: the "failed" to send, if there was one."""
        snapshot_id, self.current_id = self.current_id, None
        return None if snapshot_id is None else Ack(snapshot_id, 0, ACK_FAILED)


__all__ = [
    "ACK_DONE",
    "ACK_FAILED",
    "ACK_GAP",
    "ACK_OK",
    "SNAPSHOT_CHUNK_RETRY_S",
    "SNAPSHOT_POLL_S",
    "SNAPSHOT_STALLS_MAX",
    "SNAPSHOT_STALL_S",
    "SNAPSHOT_WINDOW_CHUNKS",
    "Ack",
    "Chunk",
    "SendChunk",
    "SendEnd",
    "SnapshotReceiverState",
    "SnapshotSender",
    "parse_chunk",
]
