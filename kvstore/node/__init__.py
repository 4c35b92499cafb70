"""The node package: one member of a cluster, where the core, the redo log, LMDB and the
transport meet.

- `facade.py`: `Node`, the public API (argument checks, lifecycle, the calls that hop onto the
  loop).
- `runtime.py`: `NodeRuntime`, the work on the loop (Ready path, writes, reads, checkpoints,
  snapshots) and the client backend; it owns the core, the log, LMDB and the transport.
- `ready.py`: the rule that decides where a Ready's fsync runs (the one Ready path,
  `NodeRuntime._ready_steps`, follows it).
- `waiters.py`: deadlines and waiting (for an index to be applied, for a leader change).
- `membership.py`: add and remove members, transfer leadership; the address checks.
- `snapshot_transfer.py`: the snapshot streaming protocol as sans-I/O sender and receiver
  state machines (the asyncio driver is in runtime.py).
- `service.py`: the node's side of the client protocol (one coroutine per client connection).

Which thread owns which state, and which calls may run where: `THREADS.md` in this folder.
"""

from kvstore.node.facade import Node, NodeFailedError, describe_failure
from kvstore.node.runtime import _NeverAppliedError, _rejection_error

__all__ = ["Node", "NodeFailedError", "describe_failure"]

# Private names some tests reach for (kept importable from `kvstore.node` as before).
_PRIVATE_FOR_TESTS = (_NeverAppliedError, _rejection_error)
