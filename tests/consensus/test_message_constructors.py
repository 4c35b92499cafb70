"""Named `Message` constructors (kernel and Paxos) build exactly the message the old
positional/keyword construction built: same fields, hence the same bytes on the wire."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import (
    ConfState,
    DropReason,
    Entry,
    Message,
    MessageType,
    SnapshotMeta,
)
from kvstore.paxos import messages as paxos
from kvstore.transport.codec import FrameKind, encode_frame, encode_message

MT = MessageType
ENTRIES = (Entry(2, 5, data=b"x"), Entry(2, 6, data=b"y"))
TRANSFER_TEXT = b"leadership transfer in progress"
META = SnapshotMeta(9, 2, ConfState(("a", "b", "c")))

CASES = [
    (Message.hup("a"), Message(MT.HUP, "a", "a")),
    (Message.unreachable("a", "b"), Message(MT.UNREACHABLE, "a", "b")),
    (Message.snapshot_status("a", "b", False), Message(MT.SNAPSHOT_STATUS, "a", "b", reject=True)),
    (Message.snapshot_status("a", "b", True), Message(MT.SNAPSHOT_STATUS, "a", "b")),
    (Message.propose("a", "b", ENTRIES), Message(MT.PROPOSE, "a", "b", entries=ENTRIES)),
    (
        Message.propose_refused("b", "a", ENTRIES, DropReason.TRANSFER),
        Message(
            MT.PROPOSE,
            "b",
            "a",
            entries=ENTRIES,
            reject=True,
            context=b"leadership transfer in progress",
        ),
    ),
    (Message.read_index("a", "b", b"r1"), Message(MT.READ_INDEX, "a", "b", context=b"r1")),
    (
        Message.read_index_response("b", "a", 3, 7, b"r1", False),
        Message(MT.READ_INDEX_RESPONSE, "b", "a", 3, index=7, context=b"r1"),
    ),
    (Message.transfer_leader("a", "b", b"c"), Message(MT.TRANSFER_LEADER, "a", "b", context=b"c")),
    (Message.timeout_now("c", "a", 3), Message(MT.TIMEOUT_NOW, "c", "a", 3)),
    (
        Message.entries_batch(MT.ACCEPT, "b", "a", 3, 2, 4, ENTRIES, 4, 8),
        Message(MT.ACCEPT, "b", "a", 3, 2, 4, ENTRIES, 4, False, 8),
    ),
    (
        Message.append("b", "a", 3, 2, 4, ENTRIES, 4),
        Message(MT.APPEND, "b", "a", 3, 2, 4, ENTRIES, 4),
    ),
    (Message.append_response("a", "b", 3, 6), Message(MT.APPEND_RESPONSE, "a", "b", 3, 0, 6)),
    (
        Message.append_rejected("a", "b", 3, 6, 4, 2),
        Message(MT.APPEND_RESPONSE, "a", "b", 3, 2, 6, (), 0, True, 4),
    ),
    (
        Message.vote_request("b", "a", 4, 3, 6, b"transfer", pre=False),
        Message(MT.VOTE, "b", "a", 4, 3, 6, context=b"transfer"),
    ),
    (
        Message.vote_request("b", "a", 4, 3, 6, b"", pre=True),
        Message(MT.PRE_VOTE, "b", "a", 4, 3, 6),
    ),
    (
        Message.vote_response("a", "b", 4, pre=False, reject=True),
        Message(MT.VOTE_RESPONSE, "a", "b", 4, reject=True),
    ),
    (
        Message.vote_response("a", "b", 4, pre=True, reject=False),
        Message(MT.PRE_VOTE_RESPONSE, "a", "b", 4),
    ),
    (
        Message.heartbeat("b", "a", 3, 17, 5, b"round"),
        Message(MT.HEARTBEAT, "b", "a", 3, 0, 17, (), 5, False, 0, b"round"),
    ),
    (
        Message.heartbeat_response("a", "b", 3, 17, b"round"),
        Message(MT.HEARTBEAT_RESPONSE, "a", "b", 3, index=17, context=b"round"),
    ),
    (
        Message.install_snapshot("b", "a", 3, META, 11),
        Message(MT.SNAPSHOT, "b", "a", 3, reject_hint=11, snapshot=META),
    ),
    (
        paxos.prepare("b", "a", 7, 4, b"transfer"),
        Message(MT.PREPARE, "b", "a", 7, index=4, context=b"transfer"),
    ),
    (
        paxos.promise("a", "b", 7, 4, ENTRIES),
        Message(MT.PROMISE, "a", "b", 7, index=4, entries=ENTRIES),
    ),
    (paxos.promise_refused("a", "b", 8), Message(MT.PROMISE, "a", "b", 8, reject=True)),
    (paxos.pre_prepare("b", "a", 7, 4), Message(MT.PRE_PREPARE, "b", "a", 7, index=4)),
    (
        paxos.pre_promise("a", "b", 7, reject=True),
        Message(MT.PRE_PROMISE, "a", "b", 7, reject=True),
    ),
    (paxos.accepted("a", "b", 7, 12), Message(MT.ACCEPTED, "a", "b", 7, index=12)),
    (
        paxos.accept_refused("a", "b", 7, 9, 6),
        Message(MT.ACCEPTED, "a", "b", 7, 0, 9, (), 0, True, 6),
    ),
    (
        paxos.snapshot_refused("a", "b", 7, META, 6),
        Message(MT.ACCEPTED, "a", "b", 7, 0, 9, (), 0, True, 6, snapshot=META),
    ),
]


@pytest.mark.parametrize(("built", "expected"), CASES, ids=lambda m: m.type.name)
def test_named_constructor_builds_the_same_message(built: Message, expected: Message) -> None:
    assert built == expected
    assert type(built) is Message
    assert isinstance(built.type, MessageType)
    if not built.type.is_local():
        assert encode_frame(FrameKind.RAFT, [encode_message(built)]) == encode_frame(
            FrameKind.RAFT, [encode_message(expected)]
        )


def test_every_remote_type_has_a_case() -> None:
    """A new message type needs a constructor and a case here."""
    covered = {built.type for built, _ in CASES}
    missing = {t for t in MessageType if not t.is_local() and t not in covered}
    assert missing <= {MT.CHECK_QUORUM, MT.BEAT}, missing
