"""The connection handshake, sans-I/O: who is on the other side, and do they know the secret.

Every connection starts with it; no other frame is accepted until it is complete.

With a secret (the shared-secret mode):

    dialer                                               listener
    HELLO {role, node_id, target, nonce, consensus}  ->
                                                     <- CHALLENGE {nonce}
    AUTH {proof}                                     ->
                                                     <- AUTH_OK {proof, node_id, members, consensus}
    ... every later frame, both ways, carries a MAC tag (`kvstore.transport.frame_mac`) ...

Without a secret (plaintext, for demos on one machine) the listener answers HELLO with
HELLO_ACK {node_id, members, consensus} and nothing is proven or MACed; the ids are still checked.

**Nothing before the proof.** Until the dialer's AUTH has verified, the listener sends nothing but
its fresh nonce: not its node id, not its members, not its protocol, and a refusal says only that
the secret was not proven. Every check that needs the cluster's view (is the claimed id a member,
is this the node the dialer meant, does it run our protocol) runs once the proof verified, so a
stranger can neither read the cluster's ids nor probe them.

**Role keys.** Peers and clients prove different secrets: a member connection proves the member
secret, a client connection the client secret (the member secret when the node has no separate
client secret). Neither is used directly: each proof and frame key is derived from
`role_key = HMAC-SHA256(secret, b"kvstore peer v2" | b"kvstore client v2")`, so a proof made for
one role never verifies for the other, and a holder of only the client secret cannot produce a
peer proof when the secrets differ. A connection's role is fixed by its handshake: the I/O layer
never accepts peer frames on a client connection.

**Proofs.** The dialer's proof is HMAC-SHA256(role_key, transcript) over a direction label,
the role, its claimed id, the id it means to reach (`target`), its protocol and both 32-byte
nonces; the listener's proof covers all of that plus its own id, members and protocol, under
another direction label (so a proof cannot be reflected back). Transcripts are msgpack arrays:
every field has a type and a length, so two transcripts never serialise alike. Proofs are
compared with `hmac.compare_digest`. The dialer proves first: the listener is the node we
protect, it checks the dialer before it computes anything a stranger could use, and it sees (and
logs) every wrong secret itself. The dialer checks the listener's proof, so a node without the
secret cannot pose as a member.

**Frame keys.** Once both proofs verified, each side derives two 32-byte keys from the role key
and the listener's whole transcript: HMAC-SHA256(role_key, msgpack(["frames dialer->listener" |
"frames listener->dialer", transcript])). Fresh nonces make them unique to this connection, the
labels to one direction; `frame_authenticator()` returns them as a `FrameAuthenticator`, which
MACs every later frame (see `kvstore.transport.frame_mac`).

Members know each other by id, not by address: a peer dialer names the id it meant to reach
(`target`), and checks that the listener proves exactly that id. The listener checks that a peer
dialer's claimed id is a member (`is_member`, asked at handshake time as membership changes). A
side configured with a secret refuses one that is not, and the other way round.

Every member of a cluster runs the same consensus protocol ("raft" or "paxos",
`kvstore.consensus.CONSENSUS_KINDS`): a peer dialer names its protocol in HELLO, the listener
its own in AUTH_OK (HELLO_ACK without a secret), and each side refuses a peer running another
one with `ConsensusMismatchError`, whose message names both protocols. With a secret the check
runs once the other side is proven, so a stranger neither learns our protocol nor makes us blame
a mismatch, and the proofs cover both protocols. A HELLO or HELLO_ACK without the field comes
from a build that only knew Raft. Clients do not name a protocol and are never refused for it.

Refusals raise `AuthenticationError` (the I/O layer answers with an ERROR frame whose code is
`ERROR_UNAUTHENTICATED` and closes; a mismatch is its subclass `ConsensusMismatchError`, whose
message starts with `CONSENSUS_MISMATCH`, so the other side raises the same type from the ERROR
frame); malformed handshake frames raise `RemoteProtocolError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

import msgpack

from kvstore.errors import AuthenticationError, RemoteProtocolError
from kvstore.transport.codec import MEMBERS_MAX, NODE_ID_CHARS_MAX, FrameKind
from kvstore.transport.frame_mac import FrameAuthenticator

NONCE_BYTES: Final = 32
PROOF_BYTES: Final = 32  # SHA-256

ROLE_PEER: Final = "peer"
ROLE_CLIENT: Final = "client"
_ROLES: Final = (ROLE_PEER, ROLE_CLIENT)

ERROR_UNAUTHENTICATED: Final = "unauthenticated"
"""ERROR code sent by a listener that refuses a dialer during the handshake."""

CONSENSUS_MISMATCH: Final = "consensus mismatch"
"""How the message of every `ConsensusMismatchError` starts (also inside ERROR frames)."""

DEFAULT_CONSENSUS: Final = "raft"
"""The protocol of a peer whose handshake does not name one (it predates Paxos)."""

NOT_PROVEN: Final = "the dialer did not prove the secret"
"""What a listener tells a dialer that failed to prove the secret (and nothing more)."""

_CONSENSUS_CHARS_MAX: Final = 32


class ConsensusMismatchError(AuthenticationError):
    """A peer runs another consensus protocol than this node: the two cannot form a cluster.

    Raised by both sides of the handshake; the message names both protocols.
    """


_LABEL: Final = "kvstore-handshake/2"
_FROM_LISTENER: Final = "listener"
_FROM_DIALER: Final = "dialer"
_KEY_DIALER_TO_LISTENER: Final = "frames dialer->listener"
_KEY_LISTENER_TO_DIALER: Final = "frames listener->dialer"
_ROLE_LABELS: Final = {ROLE_PEER: b"kvstore peer v2", ROLE_CLIENT: b"kvstore client v2"}

Outgoing = list[tuple[FrameKind, object]]
"""Frames a handshake step asks the I/O layer to send, in order."""


class _State(enum.Enum):
    START = "start"
    WAIT_HELLO = "wait-hello"
    WAIT_ANSWER = "wait-answer"  # dialer: CHALLENGE (secret) or HELLO_ACK (plaintext)
    WAIT_AUTH = "wait-auth"
    WAIT_AUTH_OK = "wait-auth-ok"
    DONE = "done"
    FAILED = "failed"


def role_key(secret: bytes, role: str) -> bytes:
    """The key a connection of `role` proves and derives its frame keys from."""
    return hmac.new(secret, _ROLE_LABELS[role], hashlib.sha256).digest()


def _mac(key: bytes, fields: list[object]) -> bytes:
    # msgpack gives every field a type and a length, so two different transcripts never
    # serialise to the same bytes.
    return hmac.new(key, msgpack.packb(fields, use_bin_type=True), hashlib.sha256).digest()


def _dialer_transcript(hello: dict[str, object], listener_nonce: bytes) -> list[object]:
    return [
        _LABEL,
        hello["role"],
        hello["node_id"],
        hello["target"],
        hello.get("consensus"),
        hello["nonce"],
        listener_nonce,
    ]


def _listener_transcript(
    hello: dict[str, object], listener_nonce: bytes, auth_ok: dict[str, object]
) -> list[object]:
    return [
        *_dialer_transcript(hello, listener_nonce),
        auth_ok["node_id"],
        auth_ok["members"],
        auth_ok.get("consensus"),
    ]


def _dialer_proof(key: bytes, hello: dict[str, object], listener_nonce: bytes) -> bytes:
    return _mac(key, [_FROM_DIALER, _dialer_transcript(hello, listener_nonce)])


def _listener_proof(
    key: bytes, hello: dict[str, object], listener_nonce: bytes, auth_ok: dict[str, object]
) -> bytes:
    return _mac(key, [_FROM_LISTENER, _listener_transcript(hello, listener_nonce, auth_ok)])


def _frame_keys(
    key: bytes, hello: dict[str, object], listener_nonce: bytes, auth_ok: dict[str, object]
) -> tuple[bytes, bytes]:
    """(dialer -> listener, listener -> dialer) frame keys of one connection."""
    transcript = _listener_transcript(hello, listener_nonce, auth_ok)
    return (
        _mac(key, [_KEY_DIALER_TO_LISTENER, transcript]),
        _mac(key, [_KEY_LISTENER_TO_DIALER, transcript]),
    )


def _check_members(value: object, what: str) -> list[str]:
    if type(value) is not list or len(value) > MEMBERS_MAX:
        raise RemoteProtocolError(f"bad {what} in handshake")
    for item in value:
        _check_id(item, what, optional=False)
    return value


def _check_id(value: object, what: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str or not 0 < len(value) <= NODE_ID_CHARS_MAX:
        raise RemoteProtocolError(f"bad {what} in handshake: {str(value)[:80]!r}")
    return value


def _check_nonce(value: object, what: str) -> bytes | None:
    if value is None:
        return None
    if type(value) is not bytes or len(value) != NONCE_BYTES:
        raise RemoteProtocolError(f"bad {what} in handshake")
    return value


def _check_consensus(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not 0 < len(value) <= _CONSENSUS_CHARS_MAX:
        raise RemoteProtocolError(f"bad consensus in handshake: {str(value)[:40]!r}")
    return value


def _check_proof(value: object, expected: bytes) -> bool:
    return type(value) is bytes and hmac.compare_digest(value, expected)


def _mismatch(ours: str, theirs: str, who: str, us: str) -> ConsensusMismatchError:
    return ConsensusMismatchError(
        f"{CONSENSUS_MISMATCH}: {who} runs {theirs}, {us} runs {ours}; every member of a "
        f"cluster must run the same protocol (--consensus)"
    )


def _check_body(body: object, keys: tuple[str, ...], frame: str) -> dict[str, object]:
    if type(body) is not dict or any(key not in body for key in keys):
        raise RemoteProtocolError(f"malformed {frame} frame")
    return body


def _check_secret(secret: bytes | None, name: str = "secret") -> bytes | None:
    if secret is not None and (not isinstance(secret, bytes) or not secret):
        raise ValueError(f"{name} must be non-empty bytes or None")
    return secret


class _Handshake:
    """What both sides share: the state, `receive()` that feeds a frame to the step the
    current state expects (`_steps`) and fails the handshake for good if that step raises,
    and the frame keys once it is done."""

    _state: _State
    _steps: ClassVar[dict[tuple[_State, FrameKind], Callable[[Any, object], Outgoing]]]
    _authenticator: FrameAuthenticator | None = None

    @property
    def established(self) -> bool:
        """True once both sides have accepted each other."""
        return self._state is _State.DONE

    def frame_authenticator(self) -> FrameAuthenticator | None:
        """The MAC state for every frame after the handshake (None without a secret). Call once
        `established`; the I/O layer hands it to its connection."""
        if self._state is not _State.DONE:
            raise RuntimeError("the handshake is not complete")
        return self._authenticator

    def receive(self, kind: FrameKind, body: object) -> Outgoing:
        """Take one frame from the other side; return the frames to send in answer.

        Raises `AuthenticationError` if the other side refused us or failed to prove itself
        (a listener then sends an ERROR frame with code `ERROR_UNAUTHENTICATED` and closes),
        `RemoteProtocolError` on a frame that does not belong in the handshake.
        """
        try:
            if kind is FrameKind.ERROR:
                raise _refusal(body)
            step = self._steps.get((self._state, kind))
            if step is None:
                raise RemoteProtocolError(
                    f"unexpected {kind.name} frame in handshake ({self._state.value})"
                )
            return step(self, body)
        except BaseException:
            self._state = _State.FAILED
            raise


class DialerHandshake(_Handshake):
    """The handshake of the side that opened the connection (a peer node or a client).

    Call `start()` and send what it returns, then feed every received frame to `receive()` and
    send what it returns, until `established` is true.
    """

    def __init__(
        self,
        *,
        role: str,
        node_id: str | None,
        target_id: str | None,
        secret: bytes | None,
        member_ids: Iterable[str] = (),
        consensus: str = DEFAULT_CONSENSUS,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`node_id` is ours (None for a client); `target_id` the id we mean to reach (None: any,
        as clients know addresses only); `secret` the one of our role (the member secret for a
        peer, the client secret for a client); `member_ids` is accepted for compatibility and not
        sent (a dialer has nothing to tell a listener it has not yet verified); `consensus` the
        protocol this node runs (ignored for a client).
        """
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        if role == ROLE_PEER and (node_id is None or target_id is None):
            raise ValueError("a peer dialer needs its own node_id and the target_id it dials")
        del member_ids
        self._role = role
        self._node_id = node_id
        self._target_id = target_id
        secret = _check_secret(secret)
        self._key = None if secret is None else role_key(secret, role)
        self._consensus = consensus if role == ROLE_PEER else None
        self._urandom = urandom
        self._state = _State.START
        self._hello: dict[str, object] | None = None
        self._listener_nonce: bytes | None = None
        self.peer_id: str | None = None
        """The listener's node id: proven if there is a secret, as claimed otherwise."""
        self.peer_member_ids: tuple[str, ...] = ()
        """The listener's member ids as it sent them."""
        self.peer_consensus: str | None = None
        """The listener's consensus protocol as it sent it (proven if there is a secret)."""

    def start(self) -> Outgoing:
        """Return the HELLO frame to send first."""
        if self._state is not _State.START:
            raise RuntimeError("start() called twice")
        self._hello = {
            "role": self._role,
            "node_id": self._node_id,
            "target": self._target_id,
            "nonce": None if self._key is None else self._urandom(NONCE_BYTES),
            "consensus": self._consensus,
        }
        self._state = _State.WAIT_ANSWER
        return [(FrameKind.HELLO, self._hello)]

    def _learn_listener(self, answer: dict[str, object]) -> None:
        listener_id = _check_id(answer["node_id"], "node id", optional=False)
        self.peer_member_ids = tuple(_check_members(answer["members"], "member ids"))
        self.peer_consensus = _check_consensus(answer.get("consensus")) or DEFAULT_CONSENSUS
        if self._target_id is not None and listener_id != self._target_id:
            raise AuthenticationError(
                f"dialed node {self._target_id!r} but the other side is {listener_id!r}"
            )
        self.peer_id = listener_id
        # Peers only: a client serves whatever protocol the cluster runs.
        ours, theirs = self._consensus, self.peer_consensus
        if ours is not None and theirs != ours:
            raise _mismatch(ours, theirs, f"node {listener_id!r}", "this node")

    def _on_hello_ack(self, body: object) -> Outgoing:
        ack = _check_body(body, ("node_id", "members"), "HELLO_ACK")
        if self._key is not None:
            raise AuthenticationError("the node has no secret; we require one")
        if ack.get("nonce") is not None:
            raise RemoteProtocolError("a HELLO_ACK carries no nonce")
        self._learn_listener(ack)
        self._state = _State.DONE
        return []

    def _on_challenge(self, body: object) -> Outgoing:
        challenge = _check_body(body, ("nonce",), "CHALLENGE")
        listener_nonce = _check_nonce(challenge["nonce"], "nonce")
        key, hello = self._key, self._hello
        if key is None:
            raise AuthenticationError("the node requires a secret; we have none")
        if listener_nonce is None or hello is None:
            raise RemoteProtocolError("a CHALLENGE must carry a nonce")
        self._listener_nonce = listener_nonce
        self._state = _State.WAIT_AUTH_OK
        return [(FrameKind.AUTH, {"proof": _dialer_proof(key, hello, listener_nonce)})]

    def _on_auth_ok(self, body: object) -> Outgoing:
        auth_ok = _check_body(body, ("proof", "node_id", "members"), "AUTH_OK")
        key, hello, listener_nonce = self._key, self._hello, self._listener_nonce
        if key is None or hello is None or listener_nonce is None:
            raise RuntimeError("AUTH_OK before CHALLENGE")
        # Shape first (the proof's transcript must be what msgpack would pack), then the proof,
        # then what it says.
        _check_id(auth_ok["node_id"], "node id", optional=False)
        _check_members(auth_ok["members"], "member ids")
        _check_consensus(auth_ok.get("consensus"))
        if not _check_proof(auth_ok["proof"], _listener_proof(key, hello, listener_nonce, auth_ok)):
            raise AuthenticationError(
                f"the node at this address failed to prove the {self._role} secret"
            )
        self._learn_listener(auth_ok)
        to_listener, to_dialer = _frame_keys(key, hello, listener_nonce, auth_ok)
        self._authenticator = FrameAuthenticator(send_key=to_listener, receive_key=to_dialer)
        self._state = _State.DONE
        return []

    _steps = {
        (_State.WAIT_ANSWER, FrameKind.HELLO_ACK): _on_hello_ack,
        (_State.WAIT_ANSWER, FrameKind.CHALLENGE): _on_challenge,
        (_State.WAIT_AUTH_OK, FrameKind.AUTH_OK): _on_auth_ok,
    }


class ListenerHandshake(_Handshake):
    """The handshake of the side that accepted the connection (always a node).

    Feed every received frame to `receive()` and send what it returns until `established`.
    """

    def __init__(
        self,
        *,
        node_id: str,
        secret: bytes | None,
        member_ids: Iterable[str],
        is_member: Callable[[str], bool],
        consensus: str = DEFAULT_CONSENSUS,
        client_secret: bytes | None = None,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`secret` is the member secret (peers prove it); `client_secret` the one clients
        prove (None: clients prove `secret` too; it needs a `secret`). `member_ids` is our
        current view of the cluster; `is_member(id)` says whether a peer dialer claiming `id`
        may connect; `consensus` is the protocol this node runs."""
        self._node_id = node_id
        self._consensus = consensus
        secret = _check_secret(secret)
        client_secret = _check_secret(client_secret, "client_secret")
        if client_secret is not None and secret is None:
            raise ValueError("a client secret needs a member secret")
        self._keys: dict[str, bytes] | None = None
        if secret is not None:
            self._keys = {
                ROLE_PEER: role_key(secret, ROLE_PEER),
                ROLE_CLIENT: role_key(client_secret or secret, ROLE_CLIENT),
            }
        self._members = sorted(member_ids)
        self._is_member = is_member
        self._urandom = urandom
        self._state = _State.WAIT_HELLO
        self._hello: dict[str, object] | None = None
        self._nonce: bytes | None = None
        self.role: str | None = None
        """`ROLE_PEER` or `ROLE_CLIENT` as the HELLO claims it; fixed once `established`."""
        self.peer_id: str | None = None
        """A peer dialer's node id (proven if there is a secret); None for clients."""
        self.peer_consensus: str | None = None
        """A peer dialer's consensus protocol as it sent it; None for clients."""

    def _on_hello(self, body: object) -> Outgoing:
        # Only the shape is checked here: what the ids mean waits for the proof.
        hello = _check_body(body, ("role", "node_id", "target", "nonce"), "HELLO")
        role = hello["role"]
        if role not in _ROLES:
            raise RemoteProtocolError(f"unknown role in HELLO: {str(role)[:40]!r}")
        dialer_id = _check_id(hello["node_id"], "node id", optional=True)
        _check_id(hello["target"], "target id", optional=True)
        nonce = _check_nonce(hello["nonce"], "nonce")
        consensus = _check_consensus(hello.get("consensus"))
        if role == ROLE_PEER and dialer_id is None:
            raise RemoteProtocolError("a peer HELLO must carry its node id")
        self.role = str(role)
        self.peer_consensus = (consensus or DEFAULT_CONSENSUS) if role == ROLE_PEER else None
        if self._keys is None:
            if nonce is not None:
                raise AuthenticationError("the dialer offers a secret; this node has none")
            self._check_dialer(hello)
            self._state = _State.DONE
            return [(FrameKind.HELLO_ACK, self._describe_self())]
        if nonce is None:
            raise AuthenticationError("this node requires a secret")
        self._hello = hello
        self._nonce = self._urandom(NONCE_BYTES)
        self._state = _State.WAIT_AUTH
        return [(FrameKind.CHALLENGE, {"nonce": self._nonce})]

    def _describe_self(self) -> dict[str, object]:
        return {"node_id": self._node_id, "members": self._members, "consensus": self._consensus}

    def _check_dialer(self, hello: dict[str, object]) -> None:
        """What the dialer claims, checked against our view (after its proof, with a secret)."""
        target, dialer_id = hello["target"], hello["node_id"]
        if target is not None and target != self._node_id:
            raise AuthenticationError(
                f"the dialer wants node {target!r}; this is {self._node_id!r}"
            )
        if self.role != ROLE_PEER:
            return
        if not isinstance(dialer_id, str):  # checked at HELLO; kept for the type
            raise RemoteProtocolError("a peer HELLO must carry its node id")
        if dialer_id == self._node_id:
            raise AuthenticationError(f"peer claims our own id {dialer_id!r}")
        if not self._is_member(dialer_id):
            raise AuthenticationError(f"peer {dialer_id!r} is not a member of this cluster")
        theirs = self.peer_consensus
        if theirs is not None and theirs != self._consensus:
            raise _mismatch(
                self._consensus, theirs, f"peer {dialer_id!r}", f"this node ({self._node_id!r})"
            )
        self.peer_id = dialer_id

    def _on_auth(self, body: object) -> Outgoing:
        auth = _check_body(body, ("proof",), "AUTH")
        hello, nonce, keys, role = self._hello, self._nonce, self._keys, self.role
        if hello is None or nonce is None or keys is None or role is None:
            raise RuntimeError("AUTH before HELLO")
        key = keys[role]
        if not _check_proof(auth["proof"], _dialer_proof(key, hello, nonce)):
            raise AuthenticationError(NOT_PROVEN)
        self._check_dialer(hello)
        auth_ok = self._describe_self()
        auth_ok["proof"] = _listener_proof(key, hello, nonce, auth_ok)
        to_listener, to_dialer = _frame_keys(key, hello, nonce, auth_ok)
        self._authenticator = FrameAuthenticator(send_key=to_dialer, receive_key=to_listener)
        self._state = _State.DONE
        return [(FrameKind.AUTH_OK, auth_ok)]

    _steps = {
        (_State.WAIT_HELLO, FrameKind.HELLO): _on_hello,
        (_State.WAIT_AUTH, FrameKind.AUTH): _on_auth,
    }


def refusal_body(reason: str) -> dict[str, str]:
    """The ERROR body either side sends before closing a connection whose handshake it refused."""
    return {"code": ERROR_UNAUTHENTICATED, "message": reason}


def _refusal(body: object) -> Exception:
    """The exception for an ERROR frame received during the handshake."""
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message)[:200] if message is not None else "no reason given"
    if code == ERROR_UNAUTHENTICATED:
        if text.startswith(CONSENSUS_MISMATCH):
            return ConsensusMismatchError(f"refused by the other side: {text}")
        return AuthenticationError(f"refused by the other side: {text}")
    return ConnectionRefusedError(f"the other side ended the handshake ({str(code)[:40]}): {text}")
