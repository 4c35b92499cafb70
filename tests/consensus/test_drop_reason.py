"""`DropReason`: refusal reasons are one enum in the kernel, and a refused forwarded PROPOSE
carries the reason's text on the wire exactly as before the enum (old peers read the same
bytes)."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import DropReason
from kvstore.errors import ProposalDroppedError


@pytest.mark.parametrize("reason", list(DropReason), ids=lambda r: r.name)
def test_every_reason_round_trips_through_the_wire(reason: DropReason) -> None:
    assert DropReason.from_wire(reason.to_wire()) is reason


def test_the_wire_bytes_are_the_old_strings() -> None:
    """The texts leaders sent before the enum, so a mixed-version cluster agrees."""
    assert DropReason.NO_LEADER.to_wire() == b"no leader"
    assert DropReason.TRANSFER.to_wire() == b"leadership transfer in progress"
    assert DropReason.CONF_CHANGE_PENDING.to_wire() == b"a configuration change is already pending"


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe", b"no such reason"])
def test_garbage_from_a_peer_reads_as_not_leader(garbage: bytes) -> None:
    assert DropReason.from_wire(garbage) is DropReason.NOT_LEADER


def test_the_error_message_shows_the_text() -> None:
    error = ProposalDroppedError(DropReason.NO_LEADER)
    assert str(error) == "proposal dropped: no leader"
    assert error.reason is DropReason.NO_LEADER
