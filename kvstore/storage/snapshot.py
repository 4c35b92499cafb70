"""Streaming a snapshot file in chunks, and reassembling it on the receiving side, resumably.

The sender reads the file written by `StateMachine.snapshot(path)` with `iter_chunks` and sends
`(offset, data)` pairs, then the file's SHA-256 (`file_sha256`). The receiver feeds each chunk
to a `SnapshotWriter`, which appends to `<snapshot_id>.<total_bytes>.partial` in its directory:

- a chunk it already has (all or part of it) is accepted again without effect, so a sender may
  resend after a lost acknowledgement;
- a chunk that would leave a hole is refused with `SnapshotTransferError`, which carries
  `next_offset`, the offset the writer needs next, so the sender can resume from there;
- a writer opened again for the same id and size (after a reconnect or a restart) resumes from
  what the partial file already holds.

`finish(sha256)` checks the whole file against the checksum before renaming it to
`<snapshot_id>.snap`. A mismatch (including a partial file damaged by a crash) deletes the
partial file and raises `CorruptionError`: the sender starts again from offset 0.

Files are private (DESIGN §4): the directory is made 0700 and every file 0600, whatever the
umask (`private_dir`, `PRIVATE_FILE_MODE`).

Limits: `total_bytes_max` caps a snapshot's size (checked before anything is written), and at
most `partials_max` partial snapshots are kept in the directory (the least recently written
others are deleted when a new one starts).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from kvstore.closing import ClosingContext
from kvstore.errors import CorruptionError, InvalidArgumentError, KVStoreError

PARTIAL_SUFFIX = ".partial"
SNAPSHOT_SUFFIX = ".snap"

TOTAL_BYTES_MAX = 1 << 34
"""Default cap on one snapshot's size (16 GiB): above any LMDB map a node would configure."""

PARTIALS_MAX = 2
"""Default number of partial snapshots kept in a directory."""

PRIVATE_DIR_MODE = 0o700
"""Mode of every directory a node writes: a snapshot holds every value, so only its owner reads."""

PRIVATE_FILE_MODE = 0o600
"""Mode of every file a node writes (log segments, LMDB files, snapshots)."""

_READ_BYTES = 1 << 20
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SnapshotTransferError(KVStoreError, ValueError):
    """A chunk does not fit the snapshot being assembled (a gap, past the end, or finishing
    early). `next_offset` is the offset the writer needs next: resume sending from there."""

    def __init__(self, message: str, *, next_offset: int) -> None:
        super().__init__(message)
        self.next_offset = next_offset


def iter_chunks(
    path: str | os.PathLike[str], chunk_bytes: int, start_offset: int = 0
) -> Iterator[tuple[int, bytes]]:
    """Yield `(offset, data)` for the file at `path` from `start_offset` to its end, in pieces
    of `chunk_bytes` (the last may be shorter). Nothing is yielded for an empty range."""
    if chunk_bytes < 1:
        raise InvalidArgumentError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    if start_offset < 0:
        raise InvalidArgumentError(f"start_offset must be >= 0, got {start_offset}")
    with open(path, "rb") as file:
        file.seek(start_offset)
        offset = start_offset
        while data := file.read(chunk_bytes):
            yield offset, data
            offset += len(data)


def file_sha256(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 digest (32 bytes) of the whole file at `path`, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while data := file.read(_READ_BYTES):
            digest.update(data)
    return digest.digest()


class SnapshotWriter(ClosingContext):
    """Reassembles one snapshot file from chunks. See the module docstring.

    `snapshot_id` names the snapshot (1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot or
    dash, so it is a safe file name); `total_bytes` is its exact size.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        snapshot_id: str,
        total_bytes: int,
        *,
        total_bytes_max: int = TOTAL_BYTES_MAX,
        partials_max: int = PARTIALS_MAX,
    ) -> None:
        if not isinstance(snapshot_id, str) or not _ID_PATTERN.fullmatch(snapshot_id):
            raise InvalidArgumentError(f"snapshot_id is not a safe file name: {snapshot_id!r}")
        if isinstance(total_bytes, bool) or not isinstance(total_bytes, int):
            raise InvalidArgumentError(f"total_bytes must be an int, got {total_bytes!r}")
        if not 1 <= total_bytes <= total_bytes_max:
            raise InvalidArgumentError(
                f"snapshot of {total_bytes} bytes is outside 1..{total_bytes_max}"
            )
        if partials_max < 1:
            raise InvalidArgumentError(f"partials_max must be >= 1, got {partials_max}")
        self.snapshot_id = snapshot_id
        """The id this writer assembles."""
        self.total_bytes = total_bytes
        """The size the finished file must have."""
        self._directory = Path(directory)
        private_dir(self._directory)
        # The size is part of the name so that a resend with a different size never resumes
        # from a partial file of another length.
        self._partial = self._directory / f"{snapshot_id}.{total_bytes}{PARTIAL_SUFFIX}"
        if not self._partial.exists():
            _prune_partials(self._directory, keep=partials_max - 1)
        self._fd: int | None = os.open(self._partial, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        size = os.fstat(self._fd).st_size
        if size > total_bytes:
            # Cannot come from this writer: start over rather than trust it.
            os.ftruncate(self._fd, 0)
            size = 0
        self._next_offset = size

    @property
    def next_offset(self) -> int:
        """The offset of the first byte still missing (== `total_bytes` once complete)."""
        return self._next_offset

    @property
    def partial_path(self) -> Path:
        """Where the chunks accumulate until `finish()`."""
        return self._partial

    def write_chunk(self, offset: int, data: bytes) -> int:
        """Store `data` at `offset`; return the next offset needed.

        Bytes the writer already holds are skipped (repeated chunks are harmless). Raises
        `SnapshotTransferError` if the chunk starts beyond `next_offset` (a gap) or ends past
        `total_bytes`.
        """
        fd = self._check_open()
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgumentError(f"offset must be an int >= 0, got {offset!r}")
        end = offset + len(data)
        if end > self.total_bytes:
            raise SnapshotTransferError(
                f"chunk [{offset}, {end}) runs past the snapshot's {self.total_bytes} bytes",
                next_offset=self._next_offset,
            )
        if offset > self._next_offset:
            raise SnapshotTransferError(
                f"chunk at offset {offset} would leave a gap: next needed offset is "
                f"{self._next_offset}",
                next_offset=self._next_offset,
            )
        if end <= self._next_offset:
            return self._next_offset
        view = memoryview(data)[self._next_offset - offset :]
        position = self._next_offset
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]
        self._next_offset = end
        return end

    def finish(self, sha256: bytes) -> Path:
        """Verify the complete file against `sha256` (32 bytes) and move it to
        `<snapshot_id>.snap`; return that path. The writer is closed afterwards.

        Raises `SnapshotTransferError` if bytes are still missing (the writer stays usable),
        `CorruptionError` on a checksum mismatch (the partial file is deleted).
        """
        fd = self._check_open()
        if not isinstance(sha256, bytes) or len(sha256) != hashlib.sha256().digest_size:
            raise InvalidArgumentError("sha256 must be a 32-byte digest")
        if self._next_offset != self.total_bytes:
            raise SnapshotTransferError(
                f"snapshot incomplete: {self._next_offset} of {self.total_bytes} bytes",
                next_offset=self._next_offset,
            )
        os.fsync(fd)
        actual = file_sha256(self._partial)
        if actual != sha256:
            self.abort()
            raise CorruptionError(
                f"snapshot {self.snapshot_id} checksum mismatch over its {self.total_bytes} bytes",
                path=str(self._partial),
                offset=0,
            )
        self.close()
        final = self._directory / f"{self.snapshot_id}{SNAPSHOT_SUFFIX}"
        os.replace(self._partial, final)
        fsync_dir(self._directory)
        return final

    def close(self) -> None:
        """Stop writing but keep the partial file, so a later writer can resume. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Close and delete the partial file. Idempotent."""
        self.close()
        try:
            self._partial.unlink()
        except FileNotFoundError:
            pass

    def _check_open(self) -> int:
        if self._fd is None:
            raise SnapshotTransferError(
                f"snapshot writer {self.snapshot_id} is closed", next_offset=self._next_offset
            )
        return self._fd


def _prune_partials(directory: Path, *, keep: int) -> None:
    # Least recently written first; the name breaks ties so the choice is repeatable.
    partials = sorted(
        (path.stat().st_mtime_ns, path.name, path)
        for path in directory.glob(f"*{PARTIAL_SUFFIX}")
        if path.is_file()
    )
    for _mtime, _name, path in partials[: max(len(partials) - keep, 0)]:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def private_dir(directory: str | os.PathLike[str]) -> Path:
    """Create `directory` (and missing parents) if needed and make it 0700; return it as a Path.

    An existing directory with group or other bits (made by an older version, or by hand) is
    narrowed; the umask can only narrow the mode of a new one further.
    """
    path = Path(directory)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    make_private(path, PRIVATE_DIR_MODE)
    return path


def make_private(path: str | os.PathLike[str], mode: int = PRIVATE_FILE_MODE) -> None:
    """Take the group and other bits off an existing file or directory (`mode` gives the bits
    kept, 0600 for files). Nothing happens if it is already private."""
    current = os.stat(path).st_mode & 0o7777
    if current & 0o077:
        os.chmod(path, current & mode)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, making renames and creations in it durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
