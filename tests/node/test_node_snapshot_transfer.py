"""The snapshot streaming protocol as pure state machines (kvstore/node/snapshot_transfer.py):
windows, acknowledgements, rewinds, stalls, and the receiver's acknowledgements, with the time
passed in and nothing sent."""

from __future__ import annotations

import pytest

from kvstore.node.snapshot_transfer import (
    ACK_DONE,
    ACK_FAILED,
    ACK_GAP,
    ACK_OK,
    SNAPSHOT_CHUNK_RETRY_S,
    SNAPSHOT_POLL_S,
    Ack,
    SendChunk,
    SendEnd,
    SnapshotReceiverState,
    SnapshotSender,
    parse_chunk,
)

CHUNK = 10


def _round(sender: SnapshotSender, refuse_after: int | None = None) -> list[object]:
    """One sending round; the transport refuses frames after `refuse_after` accepted ones."""
    sender.begin_round()
    sent: list[object] = []
    while (action := sender.next_send()) is not None:
        accepted = refuse_after is None or len(sent) < refuse_after
        if isinstance(action, SendChunk):
            sender.sent(accepted, action.length)
        else:
            sender.sent(accepted)
        if accepted:
            sent.append(action)
    return sent


def test_the_window_bounds_what_is_unacknowledged_and_the_end_follows_the_data() -> None:
    sender = SnapshotSender("s", 95, chunk_bytes=CHUNK, now=0.0, window_chunks=4)
    assert _round(sender) == [SendChunk(o, CHUNK) for o in (0, 10, 20, 30)]
    sender.on_ack(ACK_OK, 20)
    sender.after_wait(0.1)
    assert _round(sender) == [SendChunk(40, CHUNK), SendChunk(50, CHUNK)]
    sender.on_ack(ACK_OK, 90)
    after = [SendChunk(60, CHUNK), SendChunk(70, CHUNK), SendChunk(80, CHUNK), SendChunk(90, 5)]
    assert _round(sender) == [*after, SendEnd()]
    assert _round(sender) == []
    sender.on_ack(ACK_DONE, 95)
    assert sender.outcome is True


def test_a_gap_rewinds_to_the_offset_the_receiver_holds() -> None:
    sender = SnapshotSender("s", 100, chunk_bytes=CHUNK, now=0.0, window_chunks=4)
    _round(sender)
    sender.on_ack(ACK_GAP, 10)
    assert _round(sender)[0] == SendChunk(10, CHUNK)


def test_a_full_queue_stops_the_round_and_retries_soon() -> None:
    sender = SnapshotSender("s", 100, chunk_bytes=CHUNK, now=0.0)
    assert _round(sender, refuse_after=1) == [SendChunk(0, CHUNK)]
    assert sender.wait_s() == SNAPSHOT_CHUNK_RETRY_S
    assert _round(sender)[0] == SendChunk(10, CHUNK)  # the refused chunk, again
    assert sender.wait_s() == SNAPSHOT_POLL_S


def test_a_stall_resends_from_the_last_ack_then_gives_up() -> None:
    sender = SnapshotSender(
        "s", 100, chunk_bytes=CHUNK, now=0.0, window_chunks=4, stall_s=1.0, stalls_max=2
    )
    _round(sender)
    sender.on_ack(ACK_OK, 10)
    sender.after_wait(0.5)  # progress
    _round(sender)
    sender.after_wait(1.0)  # no progress, not yet a stall
    assert sender.offset == 50
    sender.after_wait(1.6)  # stall 1: back to what the receiver holds
    assert sender.offset == 10 and sender.outcome is None
    sender.after_wait(2.7)  # stall 2
    sender.after_wait(3.8)  # stall 3 > stalls_max
    assert sender.outcome is False


def test_malformed_acks_are_refused() -> None:
    sender = SnapshotSender("s", 100, chunk_bytes=CHUNK, now=0.0)
    for status, offset in ((ACK_OK, -1), (ACK_OK, True), (ACK_OK, "1"), ("what", 0)):
        with pytest.raises(ValueError):
            sender.on_ack(status, offset)
    sender.on_ack(ACK_FAILED, 0)
    assert sender.outcome is False


def test_the_receiver_reports_a_gap_once_and_repeats_done() -> None:
    receiver = SnapshotReceiverState()
    assert receiver.starts_new_stream("a")
    assert not receiver.starts_new_stream("a")
    assert receiver.stored(10) == Ack("a", 10, ACK_OK)
    assert receiver.gap(10) == Ack("a", 10, ACK_GAP)
    assert receiver.gap(10) is None  # the chunks after a lost one find the same gap
    receiver.complete()
    receiver.finished("a")
    assert receiver.already_done("a", 40) == Ack("a", 40, ACK_DONE)
    assert receiver.already_done("b", 40) is None
    assert receiver.starts_new_stream("b")
    assert receiver.dropped() == Ack("b", 0, ACK_FAILED)
    assert receiver.dropped() is None


def test_chunk_frames_are_checked() -> None:
    chunk = parse_chunk({"id": "a", "offset": 0, "total": 5, "data": b"x"})
    assert (chunk.snapshot_id, chunk.end) == ("a", False)
    end = parse_chunk({"id": "a", "offset": 5, "total": 5, "data": b"", "checksum": b"c"})
    assert end.end
    for bad in (
        {"id": 1, "offset": 0, "total": 5, "data": b""},
        {"id": "a", "offset": True, "total": 5, "data": b""},
        {"id": "a", "offset": 0, "total": "5", "data": b""},
        {"id": "a", "offset": 0, "total": 5, "data": "x"},
    ):
        with pytest.raises(ValueError):
            parse_chunk(bad)
