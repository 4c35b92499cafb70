"""Power-loss images: what a disk may hold after a power cut, built from a recorded run.

`shim.c` (an LD_PRELOAD library) records every change a process makes under one directory.
`Recording` reads that log and `Recording.image(crash_at, choice, target)` writes one crash image
of the directory as it may be after a power cut just after record `crash_at`:

- File data (writes, truncates, fallocates) at the granularity of 4 KiB pages. A change is
  durable once an fsync or fdatasync of its file that STARTED after the change has ENDED (the
  shim performs and records a change under one lock, so "recorded before the sync's start"
  means "completed before the sync began"); a write through an O_DSYNC descriptor is durable
  for its own pages when it returns. Each page of the image independently holds one of the
  versions it had between its last durable version and the crash (none of the later ones, all
  of them, or a random one per page), and the file's size likewise: the kernel writes dirty
  pages back in any order, and a page holds one of its states as a whole.
- Names (creates, renames, unlinks, mkdir) per directory: those before the start of the last
  completed fsync of the directory are durable; of the later ones the image keeps a prefix
  (journalled filesystems commit a directory's changes in order), none, all, or a random one.

Files named `lock.mdb` (LMDB's lock file, rebuilt at open) and the workload's acknowledgement
file (`ACKS`: one line per acknowledged write, written by the workload) are not part of images.
"""

from __future__ import annotations

import os
import random
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_BYTES = 4096

ACKS_NAME = "ACKS"
"""The workload appends `<n>\\n` here after write n was acknowledged (recorded like any write)."""

_SKIPPED_NAMES = frozenset({"lock.mdb", ACKS_NAME})

(
    OP_OPEN,
    OP_CLOSE,
    OP_DUP,
    OP_WRITE,
    OP_TRUNCATE,
    OP_FALLOCATE,
    OP_RENAME,
    OP_UNLINK,
    OP_MKDIR,
    OP_RMDIR,
    OP_SYNC_BEGIN,
    OP_SYNC_END,
    OP_UNSUPPORTED,
) = range(1, 14)

_HEADER = struct.Struct("<IIiiqqqQQIIII")

_FALLOC_FL_KEEP_SIZE = 1
_O_TRUNC = os.O_TRUNC
_DSYNC_RANGE = 2
"""SYNC_BEGIN flags of the sync an O_DSYNC write implies (its own range only)."""

CHOICES = ("none", "all", "random")
"""How an image treats changes that were not durable: drop them all, keep them all, or pick."""


@dataclass(slots=True)
class Record:
    """One recorded operation (see shim.c's `struct record`)."""

    seq: int
    op: int
    fd: int
    flags: int
    offset: int
    length: int
    result: int
    dev: int
    ino: int
    mode: int
    tid: int
    path: str
    path2: str
    data: bytes
    obj: int = -1
    """The file (or directory) the operation applies to, assigned by `Recording`."""


class UnsupportedRecordingError(Exception):
    """The process did something the image model cannot represent (e.g. a writable mmap)."""


def read_records(log_path: Path) -> list[Record]:
    """Parse a shim log."""
    raw = log_path.read_bytes()
    records: list[Record] = []
    at = 0
    while at < len(raw):
        (total, op, fd, flags, offset, length, result, dev, ino, mode, tid, p1, p2) = (
            _HEADER.unpack_from(raw, at)
        )
        body = at + _HEADER.size
        path = raw[body : body + p1].decode()
        path2 = raw[body + p1 : body + p1 + p2].decode()
        data = raw[body + p1 + p2 : at + total]
        records.append(
            Record(
                len(records),
                op,
                fd,
                flags,
                offset,
                length,
                result,
                dev,
                ino,
                mode,
                tid,
                path,
                path2,
                data,
            )
        )
        at += total
    return records


class Recording:
    """A parsed shim log of a run under `root`: builds crash images of `root`."""

    def __init__(self, log_path: Path, root: Path) -> None:
        self.root = str(root)
        self.records = read_records(log_path)
        self._paths: dict[int, str] = {}
        """obj -> the path it was created or first opened at (for diagnostics and ACKS)."""
        self._dirs: dict[str, int] = {self.root: 0}
        """directory path -> obj."""
        self._paths[0] = self.root
        self._assign_objects()

    def _assign_objects(self) -> None:
        inodes: dict[tuple[int, int], int] = {}
        next_obj = 1
        for record in self.records:
            if record.op == OP_UNSUPPORTED:
                if os.path.basename(record.path) in _SKIPPED_NAMES:
                    continue  # LMDB maps its lock file; it is rebuilt at open
                raise UnsupportedRecordingError(
                    f"record {record.seq}: {record.path or 'an operation'} cannot be modelled"
                )
            if record.op == OP_MKDIR:
                self._dirs[record.path] = next_obj
                self._paths[next_obj] = record.path
                record.obj = next_obj
                next_obj += 1
            elif record.op == OP_OPEN:
                key = (record.dev, record.ino)
                if stat.S_ISDIR(record.mode):
                    obj = self._dirs.get(record.path)
                    if obj is None:  # a directory that existed before the recording
                        obj = self._dirs[record.path] = next_obj
                        self._paths[obj] = record.path
                        next_obj += 1
                    inodes[key] = obj
                elif record.result == 1 or key not in inodes:
                    inodes[key] = next_obj
                    self._paths[next_obj] = record.path
                    next_obj += 1
                record.obj = inodes[key]
            elif record.op in (
                OP_WRITE,
                OP_TRUNCATE,
                OP_FALLOCATE,
                OP_SYNC_BEGIN,
                OP_SYNC_END,
                OP_DUP,
            ):
                obj = inodes.get((record.dev, record.ino))
                if obj is None:
                    raise UnsupportedRecordingError(f"record {record.seq}: unknown file")
                record.obj = obj

    # --- what the workload was told --------------------------------------------------------

    def acknowledged(self, crash_at: int) -> list[int]:
        """The write numbers the workload had acknowledged before record `crash_at`."""
        acks_path = os.path.join(self.root, ACKS_NAME)
        acked: list[int] = []
        objs = {obj for obj, path in self._paths.items() if path == acks_path}
        for record in self.records[:crash_at]:
            if record.op == OP_WRITE and record.obj in objs:
                acked.extend(int(line) for line in record.data.split())
        return acked

    def crash_points(self, rng: random.Random, count: int) -> list[int]:
        """`count` crash points (record counts), drawn from the interesting ones: just after a
        sync ends, a write is acknowledged, or a name changes; and always the end of the run."""
        acks_path = os.path.join(self.root, ACKS_NAME)
        acks = {obj for obj, path in self._paths.items() if path == acks_path}
        interesting = [
            record.seq + 1
            for record in self.records
            if record.op in (OP_SYNC_END, OP_RENAME, OP_UNLINK)
            or (record.op == OP_WRITE and record.obj in acks)
        ]
        picked = rng.sample(interesting, min(count - 1, len(interesting)))
        return sorted({*picked, len(self.records)})

    # --- images ------------------------------------------------------------------------------

    def image(self, crash_at: int, choice: str, rng: random.Random, target: Path) -> None:
        """Write to `target` (a new directory) what `root` may hold after a power cut just
        after record `crash_at - 1`. `choice` is one of `CHOICES`."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        records = self.records[:crash_at]
        durable_from = self._durable_boundaries(records)
        names = self._names(records, durable_from, choice, rng)
        target.mkdir(parents=True)
        for path, obj in sorted(names.items()):
            relative = os.path.relpath(path, self.root)
            if obj in self._dirs.values():
                (target / relative).mkdir(parents=True, exist_ok=True)
                continue
            if os.path.basename(path) in _SKIPPED_NAMES:
                continue
            content = self._content(obj, records, durable_from.get(obj, -1), choice, rng)
            out = target / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(content)

    @staticmethod
    def _durable_boundaries(records: list[Record]) -> dict[int, int]:
        """obj -> seq of the start of its last completed full sync: changes recorded before it
        are durable."""
        begun: dict[tuple[int, int], Record] = {}
        boundary: dict[int, int] = {}
        for record in records:
            if record.op == OP_SYNC_BEGIN:
                begun[(record.tid, record.obj)] = record
            elif record.op == OP_SYNC_END:
                start = begun.pop((record.tid, record.obj))
                if record.result == 0 and start.flags != _DSYNC_RANGE:
                    boundary[record.obj] = max(boundary.get(record.obj, -1), start.seq)
        return boundary

    def _names(
        self,
        records: list[Record],
        durable_from: dict[int, int],
        choice: str,
        rng: random.Random,
    ) -> dict[str, int]:
        """path -> obj of every name in the image."""
        per_dir: dict[str, list[Record]] = {}
        for record in records:
            if record.op in (OP_MKDIR, OP_RMDIR, OP_UNLINK) or (
                record.op == OP_OPEN and record.result == 1
            ):
                per_dir.setdefault(os.path.dirname(record.path), []).append(record)
            elif record.op == OP_RENAME:
                parent = os.path.dirname(record.path)
                if os.path.dirname(record.path2) != parent:
                    raise UnsupportedRecordingError(f"record {record.seq}: rename across dirs")
                per_dir.setdefault(parent, []).append(record)
        kept: set[int] = set()
        for parent, ops in per_dir.items():
            boundary = durable_from.get(self._dirs.get(parent, -2), -1)
            durable = sum(1 for op in ops if op.seq < boundary)
            if choice == "none":
                keep = durable
            elif choice == "all":
                keep = len(ops)
            else:
                keep = rng.randint(durable, len(ops))
            kept.update(op.seq for op in ops[:keep])
        names: dict[str, int] = {self.root: 0}
        for record in records:
            if record.seq not in kept:
                continue
            if record.op == OP_MKDIR or record.op == OP_OPEN:
                names[record.path] = record.obj
            elif record.op == OP_RENAME:
                if record.path in names:
                    names[record.path2] = names.pop(record.path)
            else:
                names.pop(record.path, None)
        # A name whose directory is not in the image is not either.
        return {
            path: obj
            for path, obj in names.items()
            if path == self.root or _ancestors_present(path, self.root, names)
        }

    @staticmethod
    def _content(
        obj: int, records: list[Record], boundary: int, choice: str, rng: random.Random
    ) -> bytes:
        """The bytes of file `obj` in the image."""
        current = bytearray()
        base: bytes | None = None
        versions: dict[int, list[tuple[int, bytes]]] = {}
        """page -> [(seq, content)] from the durable version on."""
        sizes: list[tuple[int, int]] = []
        floor_seq: dict[int, int] = {}
        """page -> seq of a version made durable by an O_DSYNC write."""
        size_floor = -1

        def page(data: bytes | bytearray, number: int) -> bytes:
            chunk = bytes(data[number * PAGE_BYTES : (number + 1) * PAGE_BYTES])
            return chunk + bytes(PAGE_BYTES - len(chunk))

        for record in records:
            if record.obj != obj or record.op not in (
                OP_WRITE,
                OP_TRUNCATE,
                OP_FALLOCATE,
                OP_OPEN,
                OP_SYNC_BEGIN,
            ):
                continue
            if record.op == OP_SYNC_BEGIN:
                if record.flags == _DSYNC_RANGE and base is not None:
                    first = record.offset // PAGE_BYTES
                    last = (record.offset + record.length - 1) // PAGE_BYTES
                    for number in range(first, last + 1):
                        floor_seq[number] = record.seq
                    size_floor = record.seq
                continue
            if base is None and record.seq >= boundary:
                base = bytes(current)
                sizes.append((-1, len(base)))
            old_size = len(current)
            touched: range
            if record.op == OP_WRITE:
                end = record.offset + len(record.data)
                if end > len(current):
                    current.extend(bytes(end - len(current)))
                current[record.offset : end] = record.data
                touched = range(record.offset // PAGE_BYTES, (end - 1) // PAGE_BYTES + 1)
            elif record.op == OP_TRUNCATE or (record.op == OP_OPEN and record.flags & _O_TRUNC):
                new_size = record.length if record.op == OP_TRUNCATE else 0
                if new_size < old_size:
                    del current[new_size:]
                    touched = range(new_size // PAGE_BYTES, (old_size - 1) // PAGE_BYTES + 1)
                else:
                    current.extend(bytes(new_size - old_size))
                    touched = range(0)
            elif record.op == OP_FALLOCATE:
                end = record.offset + record.length
                if not record.flags & _FALLOC_FL_KEEP_SIZE and end > old_size:
                    current.extend(bytes(end - old_size))
                touched = range(0)
            else:
                continue
            if base is None:
                continue
            for number in touched:
                history = versions.setdefault(number, [(-1, page(base, number))])
                history.append((record.seq, page(current, number)))
            if len(current) != old_size:
                sizes.append((record.seq, len(current)))
        if base is None:
            return bytes(current)

        def pick(history: Sequence[tuple[int, object]], floor: int) -> int:
            lowest = max((k for k, (seq, _) in enumerate(history) if seq <= floor), default=0)
            if choice == "none":
                return lowest
            if choice == "all":
                return len(history) - 1
            return rng.randint(lowest, len(history) - 1)

        size = sizes[pick(sizes, size_floor)][1]
        out = bytearray(base[:size]) + bytearray(max(0, size - len(base)))
        for number, history in sorted(versions.items()):
            start = number * PAGE_BYTES
            if start >= size:
                continue
            chosen = history[pick(history, floor_seq.get(number, -1))][1]
            out[start : min(size, start + PAGE_BYTES)] = chosen[: size - start]
        return bytes(out)


def _ancestors_present(path: str, root: str, names: dict[str, int]) -> bool:
    parent = os.path.dirname(path)
    while parent != root:
        if parent not in names:
            return False
        parent = os.path.dirname(parent)
    return True
