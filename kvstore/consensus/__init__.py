"""The consensus kernel: what every protocol in kvstore speaks, and the machinery they share.

Vocabulary (`types.py`): `Entry`, `HardState`, `Message` and `MessageType`, `Ready`, `LogView`,
`ConfState`, `ConfChange`, `SnapshotMeta`, `SoftState`, `ReadState`, `Role`. The redo log,
the state machine, the transport and the node speak only these; none of them knows which
protocol runs. Machinery: the log a core keeps over its `LogView` (`log.py`), the leader's
per-peer `Progress` and in-flight window (`progress.py`), majority arithmetic (`quorum.py`),
batched ReadIndex rounds (`read_only.py`), the tunables and the membership rule
(`config.py`), and the `ConsensusCore` Protocol with `make_core` (`protocol.py`).

Protocols live beside it, each in its own package: kvstore/raft/ and kvstore/paxos/ import the
kernel and never each other; the kernel imports neither (make_core loads them by name). Like
the cores, nothing here does I/O, reads a clock or uses the global `random`; a test enforces
it (tests/test_import_rules.py).
"""

from kvstore.consensus.protocol import (
    CONSENSUS_KINDS,
    ConsensusCore,
    ConsensusKind,
    CoreStatus,
    make_core,
)

__all__ = ["CONSENSUS_KINDS", "ConsensusCore", "ConsensusKind", "CoreStatus", "make_core"]
