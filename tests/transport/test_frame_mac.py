"""Per-frame MACs, sans-I/O: the authenticator alone and inside the codec's decoder."""

from __future__ import annotations

import pytest

from kvstore.errors import RemoteProtocolError
from kvstore.transport.codec import NEED_DATA, FrameDecoder, FrameKind, encode_frame
from kvstore.transport.frame_mac import TAG_BYTES, FrameAuthenticationError, FrameAuthenticator

A_TO_B = bytes(range(32))
B_TO_A = bytes(range(32, 64))


def pair() -> tuple[FrameAuthenticator, FrameAuthenticator]:
    """Two ends of one connection: what a seals, b verifies, and the other way round."""
    a = FrameAuthenticator(send_key=A_TO_B, receive_key=B_TO_A)
    b = FrameAuthenticator(send_key=B_TO_A, receive_key=A_TO_B)
    return a, b


def sealed(mac: FrameAuthenticator, kind: FrameKind, body: object) -> bytes:
    frame = encode_frame(kind, body)
    return frame + mac.seal(frame)


def decoder(mac: FrameAuthenticator) -> FrameDecoder:
    d = FrameDecoder(1 << 20)
    d.authenticate_with(mac)
    return d


def test_frames_in_order_verify_and_decode() -> None:
    a, b = pair()
    d = decoder(b)
    stream = b"".join(sealed(a, FrameKind.REQUEST, [i, b"v" * i]) for i in range(5))
    for byte in range(0, len(stream), 7):  # in dribs: a frame is complete only with its tag
        d.receive_data(stream[byte : byte + 7])
    got = []
    while (frame := d.next_frame()) is not NEED_DATA:
        got.append(frame)
    assert got == [(FrameKind.REQUEST, [i, b"v" * i]) for i in range(5)]
    assert b.frames_received == 5 and a.frames_sent == 5


def test_a_flipped_byte_anywhere_fails_and_the_decoder_stays_broken() -> None:
    a, _ = pair()
    wire = sealed(a, FrameKind.REQUEST, [1, b"good-value-1"])
    for position in range(len(wire)):
        _, b = pair()
        d = FrameDecoder(1 << 20)
        d.authenticate_with(b)
        damaged = bytearray(wire)
        damaged[position] ^= 0x01
        d.receive_data(bytes(damaged))
        # A damaged length prefix may just make the frame look longer (more data needed) or
        # too short; any other byte fails the MAC.
        try:
            result = d.next_frame()
        except RemoteProtocolError:
            with pytest.raises(RemoteProtocolError):
                d.next_frame()
        else:
            assert result is NEED_DATA and position < 4, position


def test_replayed_reordered_and_dropped_frames_fail() -> None:
    a, _ = pair()
    frames = [sealed(a, FrameKind.REQUEST, [i]) for i in range(3)]
    for stream in (
        frames[0] + frames[0],  # replayed
        frames[1] + frames[0],  # reordered
        frames[0] + frames[2],  # one dropped, the stream goes on
    ):
        _, b = pair()
        d = decoder(b)
        d.receive_data(stream)
        with pytest.raises(FrameAuthenticationError):
            d.next_frame()
            d.next_frame()


def test_a_frame_without_a_tag_is_not_accepted() -> None:
    _, b = pair()
    d = decoder(b)
    d.receive_data(b"".join(encode_frame(FrameKind.REQUEST, [i]) for i in range(4)))
    # The first frame's "tag" is the next frames' first 16 bytes: it fails.
    with pytest.raises(FrameAuthenticationError):
        d.next_frame()


def test_keys_are_checked() -> None:
    with pytest.raises(ValueError):
        FrameAuthenticator(send_key=b"short", receive_key=B_TO_A)
    with pytest.raises(ValueError, match="different"):
        FrameAuthenticator(send_key=A_TO_B, receive_key=A_TO_B)
    assert TAG_BYTES == 16


def test_tags_are_standard_hmac_sha256_of_the_sequence_number_and_the_frame() -> None:
    import hashlib
    import hmac
    import struct

    a, _ = pair()
    for seq, size in enumerate((0, 1, 100, 4096, 70_000)):
        frame = bytes(range(256)) * (size // 256) + bytes(size % 256)
        expected = hmac.new(A_TO_B, struct.pack(">Q", seq) + frame, hashlib.sha256).digest()
        assert a.seal(frame) == expected[:TAG_BYTES]
