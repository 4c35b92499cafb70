"""One registered client session applying commands to a `StateMachine`, an entry at a time:
the driver the txn and lease tests share."""

from __future__ import annotations

from kvstore.consensus.types import Entry
from kvstore.storage.commands import (
    TxnCompare,
    TxnOp,
    encode_lease_grant,
    encode_put,
    encode_register,
    encode_txn,
    txn_put,
)
from kvstore.storage.state_machine import StateMachine

SESSION_ID = 1
"""The session the driver registers at index 1 (a session's id is its register entry's index)."""


class Driver:
    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self.index = 1
        self.seq = 0
        sm.apply([Entry(1, 1, data=encode_register(1))])

    def apply(self, data: bytes) -> object:
        """Apply one encoded command as the next entry; its result."""
        self.index += 1
        return self.sm.apply([Entry(1, self.index, data=data)])[0]

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def put(self, key: bytes, value: bytes, lease: int = 0) -> object:
        """A put; with a lease it travels as a one-op txn, as the node sends it."""
        if lease:
            op = txn_put(key, value, lease)
            return self.apply(encode_txn(SESSION_ID, self.next_seq(), [], [op]))
        return self.apply(encode_put(SESSION_ID, self.next_seq(), key, value))

    def txn(
        self,
        compares: list[TxnCompare],
        success: list[TxnOp],
        failure: list[TxnOp] | None = None,
    ) -> object:
        data = encode_txn(SESSION_ID, self.next_seq(), compares, success, failure or [])
        return self.apply(data)

    def grant(self, ttl_ms: int, lease_id: int = 0) -> object:
        return self.apply(encode_lease_grant(SESSION_ID, self.next_seq(), ttl_ms, lease_id))
