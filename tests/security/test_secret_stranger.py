"""A stranger learns nothing about the cluster before it proves the secret (issue 11: "the node
tells strangers its member ids and protocol in the first handshake reply").

The old listener answered HELLO with its node id, its member ids and its protocol before the
dialer proved anything: these tests fail there.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from kvstore.transport.codec import FrameKind, encode_frame
from kvstore.transport.tcp import parse_address

from .conftest import members, read_until_closed, run

IDS = ("alpha-member-7f3a", "bravo-member-91c2")
SECRETS_OF_THE_CLUSTER = (*[i.encode() for i in IDS], b"raft", b"paxos")


def hello(**fields: object) -> bytes:
    # "members" is what the old handshake required in a HELLO: it must not be the reason a
    # stranger is refused.
    body = {
        "role": "peer",
        "node_id": "zulu",
        "target": None,
        "nonce": os.urandom(32),
        "members": [],
    }
    body.update(fields)
    return encode_frame(FrameKind.HELLO, body)


@pytest.mark.parametrize(
    "first_bytes",
    [
        hello(),
        hello(node_id=IDS[1], target=IDS[0]),  # a good guess of the ids
        hello(role="client", node_id=None),
        hello(nonce=None),  # asks for plaintext
        hello() + encode_frame(FrameKind.AUTH, {"proof": os.urandom(32)}),  # a wrong proof
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["peer", "good-guess", "client", "plaintext", "wrong-proof", "http"],
)
def test_nothing_about_the_cluster_reaches_a_stranger(first_bytes: bytes) -> None:
    async def main() -> None:
        async with members(*IDS, consensus="paxos", handshake_timeout_s=0.5) as nodes:
            host, port = parse_address(nodes[IDS[0]].transport.address)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(first_bytes)
            # Whatever it sends, the stranger is refused (or left to time out) ...
            received = await read_until_closed(reader, timeout_s=10)
            writer.close()
            assert received is not None, "the node did not close the stranger's connection"
            # ... and in all it got back, no member id and no protocol name.
            for secret in SECRETS_OF_THE_CLUSTER:
                assert secret not in received, (secret, received)

    run(main())
