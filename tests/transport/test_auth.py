"""The handshake state machines, sans-I/O: frames are passed by hand (through the real codec)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from kvstore.errors import AuthenticationError, RemoteProtocolError
from kvstore.transport import auth
from kvstore.transport.auth import (
    ROLE_CLIENT,
    ROLE_PEER,
    DialerHandshake,
    ListenerHandshake,
    Outgoing,
    refusal_body,
)
from kvstore.transport.codec import NEED_DATA, FrameDecoder, FrameKind, encode_frame
from kvstore.transport.tcp import PeerTransport, connect_client, connect_peer

SECRET = b"cluster secret"
MEMBERS = ("n1", "n2", "n3")


def wire(frames: Outgoing) -> Outgoing:
    """Send frames through the real encoder and decoder, as the network would."""
    decoder = FrameDecoder(1 << 20)
    for kind, body in frames:
        decoder.receive_data(encode_frame(kind, body))
    out = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        out.append(frame)
    return out


def counter_nonces(start: int) -> Callable[[int], bytes]:
    """Distinct, reproducible nonces for each handshake."""
    counter = itertools.count(start)
    return lambda size: next(counter).to_bytes(size, "big")


def dialer(
    *, secret: bytes | None = SECRET, node_id: str | None = "n1", target: str | None = "n2", **kw
) -> DialerHandshake:
    role = ROLE_PEER if node_id is not None else ROLE_CLIENT
    members = MEMBERS if role == ROLE_PEER else ()
    return DialerHandshake(
        role=role, node_id=node_id, target_id=target, secret=secret, member_ids=members, **kw
    )


def listener(
    *, secret: bytes | None = SECRET, node_id: str = "n2", members=MEMBERS, **kw
) -> ListenerHandshake:
    kw.setdefault("is_member", lambda peer_id: peer_id in members)
    return ListenerHandshake(node_id=node_id, secret=secret, member_ids=members, **kw)


def run(d: DialerHandshake, lis: ListenerHandshake) -> list[Outgoing]:
    """Drive both sides to completion; return the frames each step produced (a transcript)."""
    transcript = []
    to_listener = wire(d.start())
    transcript.append(to_listener)
    while to_listener:
        to_dialer = wire([f for kind, body in to_listener for f in lis.receive(kind, body)])
        transcript.append(to_dialer)
        to_listener = wire([f for kind, body in to_dialer for f in d.receive(kind, body)])
        transcript.append(to_listener)
    return transcript


# --- success ----------------------------------------------------------------------------------


def test_peer_handshake_with_the_same_secret_authenticates_both_sides() -> None:
    d, lis = dialer(), listener()
    transcript = run(d, lis)
    assert d.established and lis.established
    assert d.peer_id == "n2"
    assert lis.role == ROLE_PEER and lis.peer_id == "n1"
    assert d.peer_member_ids == MEMBERS
    kinds = [kind for step in transcript for kind, _ in step]
    assert kinds == [FrameKind.HELLO, FrameKind.CHALLENGE, FrameKind.AUTH, FrameKind.AUTH_OK]


def test_client_handshake_with_the_same_secret() -> None:
    d, lis = dialer(node_id=None, target=None), listener()
    run(d, lis)
    assert d.established and lis.established
    assert lis.role == ROLE_CLIENT and lis.peer_id is None
    assert d.peer_id == "n2"


def test_without_a_secret_only_hello_and_ack_are_exchanged_and_ids_still_checked() -> None:
    d, lis = dialer(secret=None), listener(secret=None)
    transcript = run(d, lis)
    assert d.established and lis.established
    assert [k for step in transcript for k, _ in step] == [FrameKind.HELLO, FrameKind.HELLO_ACK]
    assert lis.peer_id == "n1" and d.peer_id == "n2"
    with pytest.raises(AuthenticationError, match="not a member"):
        run(dialer(secret=None, node_id="intruder"), listener(secret=None))


def test_nonces_are_fresh_and_32_bytes() -> None:
    d1, d2 = dialer(), dialer()
    hello1 = d1.start()[0][1]
    hello2 = d2.start()[0][1]
    assert isinstance(hello1, dict) and isinstance(hello2, dict)
    assert len(hello1["nonce"]) == 32
    assert hello1["nonce"] != hello2["nonce"]


# --- refusals ---------------------------------------------------------------------------------


def test_dialer_with_the_wrong_secret_is_refused_by_the_listener() -> None:
    d, lis = dialer(secret=b"wrong"), listener()
    with pytest.raises(AuthenticationError, match="did not prove"):
        run(d, lis)
    assert not lis.established and not d.established
    # The ERROR frame the I/O layer then sends makes the dialer fail with the same error type.
    with pytest.raises(AuthenticationError, match="refused"):
        d.receive(FrameKind.ERROR, refusal_body(auth.NOT_PROVEN))


def test_listener_with_the_wrong_secret_is_refused_by_the_dialer() -> None:
    # A node without the secret cannot answer AUTH with a valid proof. It gets the dialer's
    # HELLO and AUTH, then answers with a proof made with what it has.
    d = dialer()
    impostor = listener(secret=b"wrong")
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(impostor.receive(FrameKind.HELLO, hello))
    d.receive(FrameKind.CHALLENGE, challenge)  # the dialer's AUTH goes to the impostor, unused
    assert isinstance(hello, dict) and isinstance(challenge, dict)
    auth_ok: dict[str, object] = {"node_id": "n2", "members": list(MEMBERS), "consensus": "raft"}
    key = auth.role_key(b"wrong", ROLE_PEER)
    auth_ok["proof"] = auth._listener_proof(key, hello, challenge["nonce"], auth_ok)
    with pytest.raises(AuthenticationError, match="failed to prove"):
        d.receive(FrameKind.AUTH_OK, auth_ok)
    assert not d.established


def test_listener_proof_garbage_is_refused() -> None:
    d, lis = dialer(), listener()
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    d.receive(FrameKind.CHALLENGE, challenge)
    with pytest.raises(AuthenticationError):
        d.receive(FrameKind.AUTH_OK, {"proof": "not bytes", "node_id": "n2", "members": []})


def test_a_recorded_dialer_proof_replayed_on_a_new_connection_fails() -> None:
    # An eavesdropper records a whole successful handshake ...
    recorded = run(dialer(), listener(urandom=counter_nonces(1)))
    [(_, hello)] = recorded[0]
    [(_, auth_frame)] = recorded[2]
    # ... and replays the dialer's frames to the same node later: fresh listener nonce, no entry.
    lis = listener(urandom=counter_nonces(100))
    lis.receive(FrameKind.HELLO, hello)
    with pytest.raises(AuthenticationError):
        lis.receive(FrameKind.AUTH, auth_frame)
    # Control: had the listener reused its nonce, the replay would have worked, so the
    # freshness of the nonce is what refused it above.
    lis = listener(urandom=counter_nonces(1))
    lis.receive(FrameKind.HELLO, hello)
    lis.receive(FrameKind.AUTH, auth_frame)
    assert lis.established


def test_a_recorded_listener_proof_replayed_to_a_new_dialer_fails() -> None:
    recorded = run(dialer(), listener())
    [(_, challenge)] = recorded[1]
    [(_, auth_ok)] = recorded[3]
    d = dialer()
    d.start()
    d.receive(FrameKind.CHALLENGE, challenge)
    with pytest.raises(AuthenticationError):
        d.receive(FrameKind.AUTH_OK, auth_ok)


def test_a_proof_reflected_back_to_its_sender_fails() -> None:
    # A fake listener echoes the dialer's own proof as its AUTH_OK: the direction label differs.
    d, lis = dialer(), listener()
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    assert isinstance(auth_frame, dict)
    reflected = {**auth_frame, "node_id": "n2", "members": list(MEMBERS), "consensus": "raft"}
    with pytest.raises(AuthenticationError):
        d.receive(FrameKind.AUTH_OK, reflected)


@pytest.mark.parametrize(
    ("field", "value"),
    [("consensus", "paxos"), ("role", ROLE_CLIENT), ("node_id", "n3"), ("target", None)],
)
def test_a_proof_is_bound_to_the_hello_it_answers(field: str, value: object) -> None:
    # A man in the middle rewrites the HELLO (other protocol, other role, other id, no
    # target): the dialer's proof covers what it sent, so the listener refuses it.
    d, lis = dialer(), listener()
    [(_, hello)] = wire(d.start())
    assert isinstance(hello, dict)
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, {**hello, field: value}))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    with pytest.raises(AuthenticationError):
        lis.receive(FrameKind.AUTH, auth_frame)


@pytest.mark.parametrize(
    ("field", "value"), [("members", ["n1", "n2"]), ("node_id", "n3"), ("consensus", "paxos")]
)
def test_the_listeners_proof_covers_what_it_says_about_itself(field: str, value: object) -> None:
    d, lis = dialer(node_id=None, target=None), listener()  # a client: it checks no id
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    [(_, auth_ok)] = wire(lis.receive(FrameKind.AUTH, auth_frame))
    assert isinstance(auth_ok, dict)
    with pytest.raises(AuthenticationError, match="failed to prove"):
        d.receive(FrameKind.AUTH_OK, {**auth_ok, field: value})


def test_dialer_without_a_secret_is_refused_by_a_listener_with_one() -> None:
    d, lis = dialer(secret=None), listener()
    [(_, hello)] = wire(d.start())
    with pytest.raises(AuthenticationError, match="requires"):
        lis.receive(FrameKind.HELLO, hello)
    with pytest.raises(AuthenticationError):
        d.receive(FrameKind.ERROR, refusal_body("this node requires the cluster secret"))


def test_dialer_with_a_secret_is_refused_by_a_listener_without_one() -> None:
    d, lis = dialer(), listener(secret=None)
    [(_, hello)] = wire(d.start())
    with pytest.raises(AuthenticationError, match="has none"):
        lis.receive(FrameKind.HELLO, hello)


def test_dialer_with_a_secret_refuses_a_listener_that_skips_authentication() -> None:
    # A listener without a secret that accepted anyway: its ACK has no nonce.
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="no secret"):
        d.receive(FrameKind.HELLO_ACK, {"node_id": "n2", "nonce": None, "members": list(MEMBERS)})


def test_dialer_without_a_secret_refuses_a_listener_that_wants_one() -> None:
    d = dialer(secret=None)
    d.start()
    with pytest.raises(AuthenticationError, match="requires a secret"):
        d.receive(FrameKind.CHALLENGE, {"nonce": b"\x01" * 32})


# --- ids --------------------------------------------------------------------------------------


def test_listener_checks_the_dialers_claimed_id_with_is_member() -> None:
    asked: list[str] = []

    def is_member(peer_id: str) -> bool:
        asked.append(peer_id)
        return peer_id == "n1"

    run(dialer(), listener(is_member=is_member))
    assert asked == ["n1"]
    with pytest.raises(AuthenticationError, match="not a member"):
        run(dialer(node_id="n7"), listener(is_member=is_member))
    assert asked == ["n1", "n7"]


def test_peer_claiming_the_listeners_own_id_is_refused() -> None:
    with pytest.raises(AuthenticationError):
        run(dialer(node_id="n2", target="n2"), listener())


def test_listener_refuses_a_dialer_that_wants_another_node() -> None:
    with pytest.raises(AuthenticationError, match="wants node 'n3'"):
        run(dialer(target="n3"), listener(node_id="n2"))


def test_dialer_refuses_a_listener_that_is_not_the_node_it_dialed() -> None:
    # Stale address map: the dialer thinks n3 lives here, but n2 answers (here the HELLO's
    # target is stripped in transit, so only the dialer's own check can catch it; with a
    # secret the stripped target breaks the dialer's proof instead, see above).
    d, lis = dialer(target="n3", secret=None), listener(node_id="n2", secret=None)
    [(_, hello)] = wire(d.start())
    assert isinstance(hello, dict)
    [(_, ack)] = wire(lis.receive(FrameKind.HELLO, {**hello, "target": None}))
    with pytest.raises(AuthenticationError, match="dialed node 'n3'"):
        d.receive(FrameKind.HELLO_ACK, ack)


# --- malformed frames -------------------------------------------------------------------------


def test_nothing_but_handshake_frames_is_accepted_before_completion() -> None:
    lis = listener()
    with pytest.raises(RemoteProtocolError):
        lis.receive(FrameKind.RAFT, [])
    lis = listener()
    with pytest.raises(RemoteProtocolError):
        lis.receive(FrameKind.REQUEST, [1, 2])
    d, lis = dialer(), listener()
    [(_, hello)] = wire(d.start())
    lis.receive(FrameKind.HELLO, hello)
    with pytest.raises(RemoteProtocolError):
        lis.receive(FrameKind.REQUEST, [1, 2])  # AUTH expected
    d = dialer()
    d.start()
    with pytest.raises(RemoteProtocolError):
        d.receive(FrameKind.RESPONSE, [1])


@pytest.mark.parametrize(
    "hello",
    [
        None,
        [],
        {"role": "peer"},
        {"role": "admin", "node_id": "n1", "target": None, "nonce": None, "members": []},
        {"role": "peer", "node_id": None, "target": None, "nonce": None, "members": []},
        {"role": "peer", "node_id": 5, "target": None, "nonce": None, "members": []},
        {"role": "peer", "node_id": "n1", "target": None, "nonce": b"short", "members": []},
        {"role": "peer", "node_id": "n1", "target": 7, "nonce": None},
        {"role": "peer", "node_id": "n1", "target": None, "nonce": None, "consensus": 1},
        {"role": ["peer"], "node_id": "n1", "target": None, "nonce": None, "members": []},
    ],
)
def test_malformed_hello_is_a_protocol_error(hello: object) -> None:
    with pytest.raises(RemoteProtocolError):
        listener().receive(FrameKind.HELLO, hello)


def test_a_failed_handshake_stays_failed() -> None:
    d, lis = dialer(secret=b"wrong"), listener()
    with pytest.raises(AuthenticationError):
        run(d, lis)
    # A second AUTH on the same connection does not get a second chance.
    good = dialer()
    [(_, hello)] = wire(good.start())
    with pytest.raises(RemoteProtocolError):
        lis.receive(FrameKind.HELLO, hello)


# --- consensus protocol -----------------------------------------------------------------------


@pytest.mark.parametrize("secret", [SECRET, None])
def test_peers_running_the_same_protocol_connect_and_learn_it(secret: bytes | None) -> None:
    d = dialer(secret=secret, consensus="paxos")
    lis = listener(secret=secret, consensus="paxos")
    run(d, lis)
    assert d.established and lis.established
    assert d.peer_consensus == "paxos" and lis.peer_consensus == "paxos"


def test_mismatch_without_a_secret_is_refused_by_both_sides_naming_both_protocols() -> None:
    d, lis = dialer(secret=None, consensus="raft"), listener(secret=None, consensus="paxos")
    [(_, hello)] = wire(d.start())
    with pytest.raises(auth.ConsensusMismatchError) as refused:
        lis.receive(FrameKind.HELLO, hello)
    message = str(refused.value)
    assert "peer 'n1' runs raft" in message and "('n2') runs paxos" in message
    assert isinstance(refused.value, AuthenticationError)  # the I/O layer's refusal path
    assert not lis.established
    # The ERROR frame the listener's I/O layer sends makes the dialer fail the same way.
    [(kind, body)] = wire([(FrameKind.ERROR, refusal_body(message))])
    with pytest.raises(auth.ConsensusMismatchError, match=r"runs raft.*runs paxos"):
        d.receive(kind, body)


def test_mismatch_with_a_secret_is_refused_only_once_the_dialer_proved_itself() -> None:
    d, lis = dialer(consensus="paxos"), listener(consensus="raft")
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))  # no verdict before the proof
    assert isinstance(challenge, dict) and set(challenge) == {"nonce"}
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    with pytest.raises(auth.ConsensusMismatchError, match=r"runs paxos.*runs raft"):
        lis.receive(FrameKind.AUTH, auth_frame)
    # A stranger without the secret learns nothing about our protocol: the proof fails first.
    stranger, lis = dialer(secret=b"wrong", consensus="paxos"), listener(consensus="raft")
    with pytest.raises(AuthenticationError, match="did not prove") as refused:
        run(stranger, lis)
    assert not isinstance(refused.value, auth.ConsensusMismatchError)
    assert "raft" not in str(refused.value)


def test_dialer_refuses_a_listener_running_another_protocol_without_a_secret() -> None:
    # A listener that does not check (an older build: its HELLO_ACK names no protocol, which
    # means Raft) is still refused by a Paxos dialer.
    d, lis = dialer(secret=None, consensus="paxos"), listener(secret=None, consensus="paxos")
    [(_, hello)] = wire(d.start())
    [(_, ack)] = wire(lis.receive(FrameKind.HELLO, hello))
    assert isinstance(ack, dict)
    legacy_ack = {k: v for k, v in ack.items() if k != "consensus"}
    with pytest.raises(auth.ConsensusMismatchError, match=r"node 'n2' runs raft.*runs paxos"):
        d.receive(FrameKind.HELLO_ACK, legacy_ack)


def test_dialer_refuses_a_listener_running_another_protocol_once_it_proved_itself() -> None:
    # The listener runs Raft and (like an older build) lets a Paxos dialer through: the dialer
    # says nothing about the protocol until the listener's proof verified, then refuses.
    d, lis = dialer(consensus="paxos"), listener(consensus="raft")
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    d.receive(FrameKind.CHALLENGE, challenge)  # no verdict yet
    assert isinstance(hello, dict) and isinstance(challenge, dict)
    auth_ok: dict[str, object] = {"node_id": "n2", "members": list(MEMBERS), "consensus": "raft"}
    key = auth.role_key(SECRET, ROLE_PEER)
    auth_ok["proof"] = auth._listener_proof(key, hello, challenge["nonce"], auth_ok)
    with pytest.raises(auth.ConsensusMismatchError, match=r"node 'n2' runs raft.*runs paxos"):
        d.receive(FrameKind.AUTH_OK, auth_ok)
    assert not d.established


def test_the_proofs_cover_both_protocols() -> None:
    # A man in the middle who rewrites either side's protocol breaks that side's proof.
    d, lis = dialer(consensus="paxos"), listener(consensus="paxos")
    [(_, hello)] = wire(d.start())
    assert isinstance(hello, dict)
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, {**hello, "consensus": "raft"}))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    with pytest.raises(AuthenticationError, match="did not prove"):
        lis.receive(FrameKind.AUTH, auth_frame)
    d, lis = dialer(consensus="paxos"), listener(consensus="paxos")
    [(_, hello)] = wire(d.start())
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    [(_, auth_ok)] = wire(lis.receive(FrameKind.AUTH, auth_frame))
    assert isinstance(auth_ok, dict)
    with pytest.raises(AuthenticationError, match="failed to prove"):
        d.receive(FrameKind.AUTH_OK, {**auth_ok, "consensus": "raft"})


def test_clients_are_never_refused_for_the_protocol() -> None:
    for consensus in ("raft", "paxos"):
        d = dialer(node_id=None, target=None)
        [(_, hello)] = wire(d.start())
        assert isinstance(hello, dict) and hello["consensus"] is None
        run(dialer(node_id=None, target=None), listener(consensus=consensus))
        client = dialer(node_id=None, target=None, consensus="paxos")
        run(client, listener(consensus=consensus))
        assert client.established and client.peer_consensus == consensus


def test_a_hello_without_a_protocol_means_raft() -> None:
    # A peer from before Paxos existed names no protocol: a Raft node accepts it, a Paxos node
    # refuses it.
    for consensus, ok in (("raft", True), ("paxos", False)):
        d, lis = dialer(secret=None), listener(secret=None, consensus=consensus)
        [(_, hello)] = wire(d.start())
        assert isinstance(hello, dict)
        legacy = {k: v for k, v in hello.items() if k != "consensus"}
        if ok:
            lis.receive(FrameKind.HELLO, legacy)
            assert lis.established and lis.peer_consensus == "raft"
        else:
            with pytest.raises(auth.ConsensusMismatchError, match=r"runs raft.*runs paxos"):
                lis.receive(FrameKind.HELLO, legacy)


@pytest.mark.parametrize("value", [5, b"raft", "", "x" * 33, ["raft"]])
def test_malformed_protocol_is_a_protocol_error(value: object) -> None:
    d = dialer(secret=None)
    [(_, hello)] = wire(d.start())
    assert isinstance(hello, dict)
    with pytest.raises(RemoteProtocolError, match="consensus"):
        listener(secret=None).receive(FrameKind.HELLO, {**hello, "consensus": value})
    d2 = dialer(secret=None)
    d2.start()
    ack = {"node_id": "n2", "nonce": None, "members": list(MEMBERS), "consensus": value}
    with pytest.raises(RemoteProtocolError, match="consensus"):
        d2.receive(FrameKind.HELLO_ACK, ack)


def test_over_tcp_a_mismatched_peer_is_refused_and_a_matching_one_connects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real sockets on 127.0.0.1: `connect_peer` to a Paxos node's `PeerTransport` fails with
    `ConsensusMismatchError` for a Raft dialer (the listener logs the refusal, naming both
    protocols) and succeeds for a Paxos one; a client connects either way."""

    async def no_clients(conn: object) -> None:
        return None

    async def scenario() -> None:
        transport = PeerTransport(
            "n2",
            "127.0.0.1:0",
            {"n1": "127.0.0.1:1", "n2": "127.0.0.1:0"},
            secret=SECRET,
            on_message=lambda msg: None,
            on_unreachable=lambda peer: None,
            on_client_connection=no_clients,
            consensus="paxos",
        )
        await transport.start()
        try:
            common = {
                "node_id": "n1",
                "target_id": "n2",
                "secret": SECRET,
                "member_ids": ["n1", "n2"],
                "timeout_s": 5.0,
            }
            with pytest.raises(auth.ConsensusMismatchError, match=r"runs raft.*runs paxos"):
                await connect_peer(transport.address, consensus="raft", **common)
            conn = await connect_peer(transport.address, consensus="paxos", **common)
            conn.close()
            client = await connect_client(transport.address, secret=SECRET, timeout_s=5.0)
            assert client.peer_id == "n2"
            client.close()
        finally:
            await transport.close()

    with caplog.at_level("WARNING", logger="kvstore"):
        asyncio.run(asyncio.wait_for(scenario(), 20.0))
    refusals = [r.getMessage() for r in caplog.records if "consensus mismatch" in r.getMessage()]
    assert refusals and "runs raft" in refusals[0] and "runs paxos" in refusals[0]


# --- role keys, stranger-proofing and frame keys ----------------------------------------------

CLIENT_SECRET = b"client secret"


def test_a_client_secret_never_proves_a_peer() -> None:
    """With separate secrets, a holder of the client secret cannot connect as a member (it
    cannot make a peer proof), while it connects as a client; the member secret proves peers
    only. Fails on the old code, which had one secret for both roles."""
    lis = listener(client_secret=CLIENT_SECRET)
    with pytest.raises(AuthenticationError, match="did not prove"):
        run(dialer(secret=CLIENT_SECRET, node_id="n1"), lis)
    client = dialer(secret=CLIENT_SECRET, node_id=None, target=None)
    lis = listener(client_secret=CLIENT_SECRET)
    run(client, lis)
    assert lis.established and lis.role == ROLE_CLIENT and lis.peer_id is None
    with pytest.raises(AuthenticationError, match="did not prove"):
        run(dialer(node_id=None, target=None), listener(client_secret=CLIENT_SECRET))
    member = dialer()
    run(member, listener(client_secret=CLIENT_SECRET))
    assert member.established


def test_role_keys_differ_even_for_one_secret() -> None:
    assert auth.role_key(SECRET, ROLE_PEER) != auth.role_key(SECRET, ROLE_CLIENT)
    # A proof for the client role (same secret) is not a peer proof.
    d, lis = dialer(node_id=None, target=None), listener()
    [(_, hello)] = wire(d.start())
    assert isinstance(hello, dict)
    [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, hello))
    [(_, auth_frame)] = wire(d.receive(FrameKind.CHALLENGE, challenge))
    peer_lis = listener(urandom=lambda n: challenge["nonce"])  # type: ignore[index]
    peer_hello = {**hello, "role": ROLE_PEER, "node_id": "n1", "target": "n2"}
    peer_lis.receive(FrameKind.HELLO, peer_hello)
    with pytest.raises(AuthenticationError):
        peer_lis.receive(FrameKind.AUTH, auth_frame)


def test_a_stranger_learns_nothing_before_its_proof() -> None:
    """Before the dialer's proof verified, the listener sends its nonce and nothing else, and
    its refusal names neither ids nor protocol. Fails on the old code, whose HELLO_ACK carried
    the node id, the member ids and the protocol."""
    lis = listener(node_id="n2", consensus="paxos")
    stranger = dialer(secret=b"guess", node_id="n1")
    [(_, hello)] = wire(stranger.start())
    answer = wire(lis.receive(FrameKind.HELLO, hello))
    assert [kind for kind, _ in answer] == [FrameKind.CHALLENGE]
    [(_, challenge)] = answer
    assert isinstance(challenge, dict) and set(challenge) == {"nonce"}
    [(_, auth_frame)] = wire(stranger.receive(FrameKind.CHALLENGE, challenge))
    with pytest.raises(AuthenticationError) as refused:
        lis.receive(FrameKind.AUTH, auth_frame)
    text = str(refused.value)
    assert all(word not in text for word in ("n1", "n2", "n3", "paxos", "raft"))
    # Probing for a member id or a target tells nothing either: the same refusal.
    for probe in ({"node_id": "n7"}, {"target": "n9"}):
        lis = listener(node_id="n2")
        stranger = dialer(secret=b"guess")
        [(_, hello)] = wire(stranger.start())
        assert isinstance(hello, dict)
        [(_, challenge)] = wire(lis.receive(FrameKind.HELLO, {**hello, **probe}))
        [(_, auth_frame)] = wire(stranger.receive(FrameKind.CHALLENGE, challenge))
        with pytest.raises(AuthenticationError, match=f"^{auth.NOT_PROVEN}$"):
            lis.receive(FrameKind.AUTH, auth_frame)


def test_both_sides_derive_the_same_frame_keys_one_per_direction_and_connection() -> None:
    d, lis = dialer(), listener()
    run(d, lis)
    d_mac, lis_mac = d.frame_authenticator(), lis.frame_authenticator()
    assert d_mac is not None and lis_mac is not None
    frame = encode_frame(FrameKind.RAFT, [])
    lis_mac.verify(frame, d_mac.seal(frame))  # dialer -> listener
    d_mac.verify(frame, lis_mac.seal(frame))  # listener -> dialer
    # A tag from one direction is not valid in the other (no reflection) ...
    tag = d_mac.seal(frame)
    with pytest.raises(RemoteProtocolError):
        d_mac.verify(frame, tag)
    # ... and another connection has other keys.
    d2, lis2 = dialer(), listener()
    run(d2, lis2)
    other = lis2.frame_authenticator()
    assert other is not None
    with pytest.raises(RemoteProtocolError):
        other.verify(frame, dialer_tag_for_a_fresh_connection(d))


def dialer_tag_for_a_fresh_connection(d: DialerHandshake) -> bytes:
    mac = d.frame_authenticator()
    assert mac is not None
    return mac.seal(encode_frame(FrameKind.RAFT, []))


def test_without_a_secret_there_is_no_frame_authentication() -> None:
    d, lis = dialer(secret=None), listener(secret=None)
    run(d, lis)
    assert d.frame_authenticator() is None and lis.frame_authenticator() is None
    with pytest.raises(RuntimeError):
        dialer().frame_authenticator()
    with pytest.raises(ValueError):
        listener(secret=None, client_secret=CLIENT_SECRET)
