"""Named constructors for the messages only Multi-Paxos sends (PMS = "Paxos Made Simple").

Their types stay in the kernel's one `MessageType` enum (the wire carries one integer type),
but which `Message` field means what for them is Paxos's business, so the shapes are built
here; the field use is documented in kvstore/paxos/core.py. `term` is always a ballot. Like
the kernel's constructors they build the tuple directly, without NamedTuple's `__new__`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

from kvstore.consensus.types import Entry, Message, MessageType, SnapshotMeta

_message = cast("Callable[[tuple[object, ...]], Message]", partial(tuple.__new__, Message))

_PREPARE = MessageType.PREPARE
_PROMISE = MessageType.PROMISE
_ACCEPTED = MessageType.ACCEPTED
_PRE_PREPARE = MessageType.PRE_PREPARE
_PRE_PROMISE = MessageType.PRE_PROMISE


def prepare(to: str, sender: str, ballot: int, commit: int, context: bytes) -> Message:
    """Phase 1a: promise `ballot` for every slot after the proposer's `commit`; `context` is
    CAMPAIGN_TRANSFER for a leadership transfer."""
    return _message((_PREPARE, to, sender, ballot, 0, commit, (), 0, False, 0, context, None))


def promise(to: str, sender: str, ballot: int, commit: int, entries: tuple[Entry, ...]) -> Message:
    """Phase 1b: the acceptor promises `ballot`; `commit` is its chosen prefix and `entries`
    the values the proposer needs (see `PaxosCore._promise_entries`)."""
    return _message((_PROMISE, to, sender, ballot, 0, commit, entries, 0, False, 0, b"", None))


def promise_refused(to: str, sender: str, ballot: int) -> Message:
    """Phase 1b refused: the acceptor promised the higher `ballot`."""
    return _message((_PROMISE, to, sender, ballot, 0, 0, (), 0, True, 0, b"", None))


def pre_prepare(to: str, sender: str, ballot: int, commit: int) -> Message:
    """Would you promise `ballot`? Non-binding."""
    return _message((_PRE_PREPARE, to, sender, ballot, 0, commit, (), 0, False, 0, b"", None))


def pre_promise(to: str, sender: str, ballot: int, *, reject: bool) -> Message:
    """The answer to a PRE_PREPARE (a refusal carries the acceptor's higher promise)."""
    return _message((_PRE_PROMISE, to, sender, ballot, 0, 0, (), 0, reject, 0, b"", None))


def accepted(to: str, sender: str, ballot: int, run_end: int) -> Message:
    """Phase 2b: the acceptor's run (slots accepted in `ballot`) reaches `run_end`."""
    return _message((_ACCEPTED, to, sender, ballot, 0, run_end, (), 0, False, 0, b"", None))


def accept_refused(to: str, sender: str, ballot: int, after: int, from_slot: int) -> Message:
    """Phase 2b refused: the batch after slot `after` cannot be placed; the acceptor takes a
    batch after `from_slot`. From a stale ballot both are 0 and `ballot` is the higher promise."""
    return _message((_ACCEPTED, to, sender, ballot, 0, after, (), 0, True, from_slot, b"", None))


def snapshot_refused(
    to: str, sender: str, ballot: int, meta: SnapshotMeta, run_end: int
) -> Message:
    """The acceptor refuses to install `meta`: it holds values after it that may still be
    chosen; its run reaches `run_end`."""
    return _message((_ACCEPTED, to, sender, ballot, 0, meta.index, (), 0, True, run_end, b"", meta))
