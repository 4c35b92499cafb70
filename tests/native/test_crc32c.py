"""The C CRC32C (SSE4.2 path and table fallback) against crcmod's crc-32c."""

from __future__ import annotations

import random

import crcmod.predefined
import pytest
from kvstore._kvwal import ffi, lib

reference = crcmod.predefined.mkCrcFun("crc-32c")
SEED = 20240611

IMPLEMENTATIONS = {
    "dispatch": lib.kvwal_crc32c,
    "portable": lib.kvwal_crc32c_portable,
    "sse42": lib.kvwal_crc32c_hw,
}


def c_crc(impl: str, data: bytes, crc: int = 0, offset: int = 0) -> int:
    """CRC of data[offset:], read through a pointer that starts `offset` bytes into the buffer
    (so the C code sees unaligned starts)."""
    buf = ffi.from_buffer("uint8_t[]", data)
    return int(IMPLEMENTATIONS[impl](crc, buf + offset, len(data) - offset))


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "sse42" and not lib.kvwal_crc32c_hw_available():
        pytest.skip("this CPU has no SSE4.2")
    return name


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),  # the CRC catalogue's check value for CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4: 32 bytes of zeros
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4: 32 bytes of ones
        (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4: incrementing
        (bytes(range(31, -1, -1)), 0x113FDB5C),  # RFC 3720 B.4: decrementing
    ],
)
def test_known_vectors(impl: str, data: bytes, expected: int) -> None:
    assert c_crc(impl, data) == expected


def test_every_length_up_to_4096(impl: str) -> None:
    rng = random.Random(SEED)
    data = rng.randbytes(4096)
    for n in range(4097):
        chunk = data[:n]
        assert c_crc(impl, chunk) == reference(chunk), f"length {n}, seed {SEED}"


def test_unaligned_starts_and_lengths(impl: str) -> None:
    rng = random.Random(SEED + 1)
    for _ in range(300):
        n = rng.randrange(0, 700)
        offset = rng.randrange(0, 8)
        data = rng.randbytes(n + offset)
        assert c_crc(impl, data, offset=offset) == reference(data[offset:]), (
            f"n={n} offset={offset} seed={SEED + 1}"
        )


@pytest.mark.parametrize("size", [1 << 16, (1 << 20) + 3, (5 << 20) + 7])
def test_large_buffers(impl: str, size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert c_crc(impl, data) == reference(data)
    assert c_crc(impl, data, offset=5) == reference(data[5:])


def test_extending_equals_concatenating(impl: str) -> None:
    rng = random.Random(SEED + 2)
    for _ in range(100):
        a = rng.randbytes(rng.randrange(0, 300))
        b = rng.randbytes(rng.randrange(0, 300))
        assert c_crc(impl, b, crc=c_crc(impl, a)) == reference(a + b)
        assert c_crc(impl, b, crc=c_crc(impl, a)) == reference(b, reference(a))


def test_paths_agree_on_random_inputs() -> None:
    if not lib.kvwal_crc32c_hw_available():
        pytest.skip("this CPU has no SSE4.2")
    rng = random.Random(SEED + 3)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 2000))
        crc = rng.getrandbits(32)
        assert c_crc("sse42", data, crc) == c_crc("portable", data, crc) == reference(data, crc)
