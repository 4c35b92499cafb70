"""Snapshot streaming: chunking, resumable reassembly, gaps, checksums and limits."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from kvstore.errors import CorruptionError, InvalidArgumentError
from kvstore.storage.snapshot import (
    SnapshotTransferError,
    SnapshotWriter,
    file_sha256,
    iter_chunks,
)

SEED = 20240611


def make_file(path: Path, size: int, seed: int = SEED) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def test_iter_chunks_covers_the_file_exactly(tmp_path: Path) -> None:
    data = make_file(tmp_path / "f", 10_000)
    chunks = list(iter_chunks(tmp_path / "f", 3_000))
    assert [offset for offset, _ in chunks] == [0, 3_000, 6_000, 9_000]
    assert [len(chunk) for _, chunk in chunks] == [3_000, 3_000, 3_000, 1_000]
    assert b"".join(chunk for _, chunk in chunks) == data
    resumed = list(iter_chunks(tmp_path / "f", 4_000, start_offset=6_500))
    assert resumed == [(6_500, data[6_500:10_000])]
    assert list(iter_chunks(tmp_path / "f", 10, start_offset=10_000)) == []
    with pytest.raises(InvalidArgumentError):
        list(iter_chunks(tmp_path / "f", 0))
    with pytest.raises(InvalidArgumentError):
        list(iter_chunks(tmp_path / "f", 10, start_offset=-1))


def test_chunks_reassemble_into_an_identical_verified_file(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 50_001)
    with SnapshotWriter(tmp_path / "in", "n1-40-3", len(data)) as writer:
        for offset, chunk in iter_chunks(tmp_path / "src", 4096):
            assert writer.write_chunk(offset, chunk) == offset + len(chunk)
        assert writer.next_offset == len(data)
        final = writer.finish(file_sha256(tmp_path / "src"))
    assert final == tmp_path / "in" / "n1-40-3.snap"
    assert final.read_bytes() == data
    assert not writer.partial_path.exists()
    assert file_sha256(final) == hashlib.sha256(data).digest()


def test_repeated_and_overlapping_chunks_are_harmless(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 1000)
    writer = SnapshotWriter(tmp_path / "in", "s", len(data))
    assert writer.write_chunk(0, data[:400]) == 400
    assert writer.write_chunk(0, data[:400]) == 400  # a resend after a lost ack
    assert writer.write_chunk(100, data[100:300]) == 400  # wholly inside what we have
    assert writer.write_chunk(300, data[300:700]) == 700  # overlaps: only the new part is used
    assert writer.write_chunk(700, b"") == 700
    assert writer.write_chunk(700, data[700:]) == 1000
    assert writer.finish(hashlib.sha256(data).digest()).read_bytes() == data


def test_a_gap_is_refused_with_the_offset_to_resume_from(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 1000)
    writer = SnapshotWriter(tmp_path / "in", "s", len(data))
    writer.write_chunk(0, data[:300])
    with pytest.raises(SnapshotTransferError, match="gap") as caught:
        writer.write_chunk(500, data[500:600])
    assert caught.value.next_offset == 300
    with pytest.raises(SnapshotTransferError, match="past") as caught:
        writer.write_chunk(300, data[300:] + b"extra")
    assert caught.value.next_offset == 300
    # Nothing was written by the refused chunks: the sender resumes from next_offset.
    for offset, chunk in iter_chunks(tmp_path / "src", 128, start_offset=caught.value.next_offset):
        writer.write_chunk(offset, chunk)
    assert writer.finish(hashlib.sha256(data).digest()).read_bytes() == data


def test_finishing_early_is_refused_and_the_writer_stays_usable(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 100)
    writer = SnapshotWriter(tmp_path / "in", "s", len(data))
    writer.write_chunk(0, data[:60])
    with pytest.raises(SnapshotTransferError, match="incomplete") as caught:
        writer.finish(hashlib.sha256(data).digest())
    assert caught.value.next_offset == 60
    writer.write_chunk(60, data[60:])
    assert writer.finish(hashlib.sha256(data).digest()).read_bytes() == data


def test_a_new_writer_resumes_from_the_partial_file(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 9_000)
    first = SnapshotWriter(tmp_path / "in", "snap-7", len(data))
    for offset, chunk in iter_chunks(tmp_path / "src", 1_000):
        if offset >= 4_000:
            break
        first.write_chunk(offset, chunk)
    first.close()  # the connection dropped
    second = SnapshotWriter(tmp_path / "in", "snap-7", len(data))
    assert second.next_offset == 4_000
    for offset, chunk in iter_chunks(tmp_path / "src", 1_000, start_offset=second.next_offset):
        second.write_chunk(offset, chunk)
    assert second.finish(hashlib.sha256(data).digest()).read_bytes() == data


def test_same_id_with_another_size_does_not_resume(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 500)
    writer = SnapshotWriter(tmp_path / "in", "s", len(data))
    writer.write_chunk(0, data[:200])
    writer.close()
    assert SnapshotWriter(tmp_path / "in", "s", 800).next_offset == 0


def test_checksum_mismatch_is_refused_and_the_partial_deleted(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 2_000)
    writer = SnapshotWriter(tmp_path / "in", "s", len(data))
    damaged = bytearray(data)
    damaged[1234] ^= 0x01
    writer.write_chunk(0, bytes(damaged))
    with pytest.raises(CorruptionError, match="checksum"):
        writer.finish(hashlib.sha256(data).digest())
    assert not writer.partial_path.exists()
    assert not (tmp_path / "in" / "s.snap").exists()
    # The sender starts over from 0 and succeeds.
    again = SnapshotWriter(tmp_path / "in", "s", len(data))
    assert again.next_offset == 0
    again.write_chunk(0, data)
    assert again.finish(hashlib.sha256(data).digest()).read_bytes() == data


def test_only_a_bounded_number_of_partials_is_kept(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    for n, name in enumerate(["a", "b"]):
        writer = SnapshotWriter(directory, name, 100, partials_max=2)
        writer.write_chunk(0, b"x" * 10)
        writer.close()
        # Distinct, ordered write times without waiting on the clock.
        os.utime(writer.partial_path, ns=(n * 10**9, n * 10**9))
    SnapshotWriter(directory, "c", 100, partials_max=2).close()
    names = sorted(path.name.split(".")[0] for path in directory.glob("*.partial"))
    assert names == ["b", "c"]  # "a" was the least recently written
    # Reopening an existing partial does not count as a new one.
    SnapshotWriter(directory, "b", 100, partials_max=2).close()
    assert len(list(directory.glob("*.partial"))) == 2


def test_limits_and_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        SnapshotWriter(tmp_path, "s", 1001, total_bytes_max=1000)
    with pytest.raises(InvalidArgumentError):
        SnapshotWriter(tmp_path, "s", 0)
    for bad in ["", "../escape", ".hidden", "-dash", "a/b", "x" * 129]:
        with pytest.raises(InvalidArgumentError):
            SnapshotWriter(tmp_path, bad, 10)
    writer = SnapshotWriter(tmp_path, "s", 10)
    with pytest.raises(InvalidArgumentError):
        writer.write_chunk(-1, b"x")
    with pytest.raises(InvalidArgumentError):
        writer.finish(b"short")
    writer.abort()
    writer.abort()
    assert not writer.partial_path.exists()
    with pytest.raises(SnapshotTransferError, match="closed"):
        writer.write_chunk(0, b"x")


@pytest.mark.parametrize("seed", [SEED + n for n in range(8)])
def test_lossy_reordered_delivery_converges(tmp_path: Path, seed: int) -> None:
    """A sender on a bad link: chunks are duplicated, reordered, dropped, and the connection
    restarts; it always resumes from the writer's next_offset and the file comes out whole."""
    rng = random.Random(seed)
    print(f"seed={seed}")
    data = make_file(tmp_path / "src", rng.randrange(1, 40_000), seed)
    digest = hashlib.sha256(data).digest()
    chunk_bytes = rng.randrange(1, 5_000)
    writer = SnapshotWriter(tmp_path / "in", "lossy", len(data))
    for _attempt in range(10_000):
        if writer.next_offset == len(data):
            break
        if rng.random() < 0.1:  # reconnect: a fresh writer resumes from the partial file
            writer.close()
            writer = SnapshotWriter(tmp_path / "in", "lossy", len(data))
        window = list(iter_chunks(tmp_path / "src", chunk_bytes, start_offset=writer.next_offset))
        window = window[:4]
        sent = [c for c in window if rng.random() > 0.2] + rng.sample(window, k=len(window) // 2)
        rng.shuffle(sent)
        for offset, chunk in sent:
            try:
                writer.write_chunk(offset, chunk)
            except SnapshotTransferError as error:
                assert error.next_offset == writer.next_offset
                assert offset > writer.next_offset
    assert writer.finish(digest).read_bytes() == data, f"seed={seed}"
