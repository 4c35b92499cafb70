"""The consensus kernel: what every protocol in kvstore speaks, and the machinery they share.

Vocabulary (`types.py`): `Entry`, `HardState`, `Message` (with named constructors) and
`MessageType`, `Ready`, `LogView`, `ConfState`, `ConfChange`, `SnapshotMeta`, `SoftState`,
`ReadState`, `Role`, and `DropReason`, why a proposal or a read was refused. The redo log, the
state machine, the transport and the node speak only these; none of them knows which protocol
runs. `MessageType` stays one enum with Paxos's types in it: the wire carries the type as one
integer, checked against this enum before any core sees it; the Paxos-only field layouts are
built in kvstore/paxos/messages.py.

Machinery, shared by composition (each core holds these objects): the log a core keeps over its
`LogView` (`log.py`: `RaftLog`; `memory.py`: an in-memory `LogView`), the Ready assembly and
outbox (`ready.py`: `ReadyAssembler`), the leader's per-member `Progress` with its in-flight
window (`progress.py`: `ProgressTracker`), majority arithmetic (`quorum.py`), batched ReadIndex
rounds (`read_only.py`), the tunables and the membership rule (`config.py`), and the
`ConsensusCore` Protocol with `make_core` (`protocol.py`). What is still shared by inheritance
is `CoreBase` (`core_base.py`): the leader's flush loop, read rounds, forwarded requests and
role plumbing, with hooks each core fills in.

Protocols live beside it, each in its own package: kvstore/raft/ and kvstore/paxos/ import the
kernel and never each other; the kernel imports neither (make_core loads them by name). Like
the cores, nothing here does I/O, reads a clock or uses the global `random`; tests enforce it
(tests/test_import_rules.py, tests/raft/test_imports.py).
"""

from kvstore.consensus.protocol import (
    CONSENSUS_KINDS,
    ConsensusCore,
    ConsensusKind,
    CoreStatus,
    make_core,
)
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DroppedProposal,
    DropReason,
    Entry,
    EntryType,
    HardState,
    LogView,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "CONSENSUS_KINDS",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "ConsensusCore",
    "ConsensusKind",
    "CoreStatus",
    "DropReason",
    "DroppedProposal",
    "Entry",
    "EntryType",
    "HardState",
    "LogView",
    "Message",
    "MessageType",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "make_core",
]
