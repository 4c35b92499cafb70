"""ReadIndex reads on the leader, batched into heartbeat rounds (thesis §6.4).

A read request records the commit index when it arrives; it may be served once the leader has
confirmed, after that moment, that it was still the leader (a quorum answered a heartbeat sent
after the request). Requests that arrive while a round is in flight wait for the next round, so
any number of them share one round of heartbeats: one HEARTBEAT per follower carries one round
id in its `context`, and the followers echo it back.

A quorum answering round k confirms every earlier round too (the leader was leader at a later
moment), so rounds are answered in order, up to the one that completed.
"""

from __future__ import annotations

from typing import NamedTuple


class ReadRequest(NamedTuple):
    """One read waiting for its index: who asked (None: the local application) and its id."""

    context: bytes
    sender: str | None


class ReadRound:
    """One heartbeat round: the read index it confirms, its requests and who answered."""

    __slots__ = ("acks", "index", "requests")

    def __init__(self, index: int, requests: list[ReadRequest], leader_id: str) -> None:
        self.index = index
        self.requests = requests
        self.acks = {leader_id}


class ReadOnly:
    """The leader's pending ReadIndex requests: a queue for the next round and rounds in flight."""

    __slots__ = ("_leader_id", "_pending_max", "_queue", "_rounds", "_seq")

    def __init__(self, leader_id: str, pending_max: int) -> None:
        self._leader_id = leader_id
        self._pending_max = pending_max
        self._queue: list[ReadRequest] = []
        self._rounds: dict[bytes, ReadRound] = {}
        self._seq = 0

    def pending_count(self) -> int:
        """Requests queued or in flight."""
        return len(self._queue) + sum(len(r.requests) for r in self._rounds.values())

    def has_room(self) -> bool:
        """Whether one more request fits under the limit."""
        return self.pending_count() < self._pending_max

    def enqueue(self, request: ReadRequest) -> None:
        """Queue a request for the next round."""
        self._queue.append(request)

    def has_queued(self) -> bool:
        """Whether requests wait for a round."""
        return bool(self._queue)

    def in_flight(self) -> bool:
        """Whether a round is waiting for its quorum."""
        return bool(self._rounds)

    def start_round(self, commit: int) -> bytes:
        """Put every queued request into a new round confirming `commit`; returns its id."""
        self._seq += 1
        ctx = self._seq.to_bytes(8, "big")
        self._rounds[ctx] = ReadRound(commit, self._queue, self._leader_id)
        self._queue = []
        return ctx

    def latest_round(self) -> bytes:
        """The id of the newest round in flight (b"" if none), to repeat in heartbeats."""
        return next(reversed(self._rounds)) if self._rounds else b""

    def ack(self, ctx: bytes, sender: str) -> ReadRound | None:
        """Record `sender`'s answer to round `ctx`; returns the round (None if unknown)."""
        round_ = self._rounds.get(ctx)
        if round_ is not None:
            round_.acks.add(sender)
        return round_

    def release_through(self, ctx: bytes) -> list[ReadRound]:
        """Remove and return, oldest first, every round up to and including `ctx`."""
        done: list[ReadRound] = []
        for key in list(self._rounds):
            done.append(self._rounds.pop(key))
            if key == ctx:
                break
        return done

    def drain(self) -> list[ReadRequest]:
        """Remove and return every request, queued or in flight (the leader stepped down)."""
        requests = [r for round_ in self._rounds.values() for r in round_.requests]
        requests.extend(self._queue)
        self._rounds.clear()
        self._queue = []
        return requests
