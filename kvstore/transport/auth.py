"""The connection handshake, sans-I/O: who is on the other side, and do they know the secret.

Every connection starts with it; no other frame is accepted until it is complete.

    dialer                                                       listener
    HELLO {role, node_id, target, nonce, members, consensus}  ->
                                                  <- HELLO_ACK {node_id, nonce, members, consensus}
    AUTH {proof}                                              ->
                                                              <- AUTH_OK {proof}

Without a secret only HELLO and HELLO_ACK are exchanged (nonces and proofs are nil): the ids are
still checked, but nothing is proven. With a secret, each side proves it holds the secret with
HMAC-SHA256 over a transcript of the whole exchange: a label for the direction (so a proof cannot
be reflected back), the role, both node ids, the id the dialer meant to reach, both sides' fresh
32-byte nonces and both sides' sorted member ids (so a proof is bound to this cluster, this
connection and this direction, and a recorded one is useless anywhere else), and both sides'
consensus protocols. Proofs are compared with `hmac.compare_digest`.

The dialer proves first. The listener is the node we protect: it checks the dialer before it
gives out any proof of its own, so it sees (and logs) every wrong secret itself, and an
unauthenticated dialer never gets a MAC computed with the secret. The dialer then checks the
listener's proof in AUTH_OK, so a node without the secret cannot pose as a member.

Members know each other by id, not by address: a peer dialer names the id it meant to reach
(`target`), and checks that the listener proves exactly that id. The listener checks that a peer
dialer's claimed id is a member (`is_member`, asked at handshake time as membership changes).
A side configured with a secret refuses one that is not, and the other way round.

Every member of a cluster runs the same consensus protocol ("raft" or "paxos",
`kvstore.consensus.CONSENSUS_KINDS`): a peer dialer names its protocol in HELLO, the listener
its own in HELLO_ACK, and each side refuses a peer running another one with
`ConsensusMismatchError`, whose message names both protocols. The check runs once the other side
is authenticated (at HELLO / HELLO_ACK without a secret, at AUTH / AUTH_OK with one), so an
unauthenticated stranger neither learns our protocol nor makes us blame a mismatch, and the
proofs cover both protocols, so nobody in the middle can rewrite them. A HELLO or HELLO_ACK
without the field comes from a build that only knew Raft. Clients do not name a protocol and are
never refused for it.

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

_CONSENSUS_CHARS_MAX: Final = 32


class ConsensusMismatchError(AuthenticationError):
    """A peer runs another consensus protocol than this node: the two cannot form a cluster.

    Raised by both sides of the handshake; the message names both protocols.
    """


_LABEL: Final = "kvstore-handshake/1"
_FROM_LISTENER: Final = "listener"
_FROM_DIALER: Final = "dialer"

Outgoing = list[tuple[FrameKind, object]]
"""Frames a handshake step asks the I/O layer to send, in order."""


class _State(enum.Enum):
    START = "start"
    WAIT_HELLO = "wait-hello"
    WAIT_HELLO_ACK = "wait-hello-ack"
    WAIT_AUTH = "wait-auth"
    WAIT_AUTH_OK = "wait-auth-ok"
    DONE = "done"
    FAILED = "failed"


def _proof(
    secret: bytes, direction: str, hello: dict[str, object], ack: dict[str, object]
) -> bytes:
    # msgpack gives every field a type and a length, so two different transcripts never
    # serialise to the same bytes.
    transcript = msgpack.packb(
        [
            _LABEL,
            direction,
            hello["role"],
            hello["node_id"],
            hello["target"],
            hello["nonce"],
            hello["members"],
            hello.get("consensus"),
            ack["node_id"],
            ack["nonce"],
            ack["members"],
            ack.get("consensus"),
        ],
        use_bin_type=True,
    )
    return hmac.new(secret, transcript, hashlib.sha256).digest()


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


def _mismatch(ours: str, theirs: str, who: str, us: str) -> ConsensusMismatchError:
    return ConsensusMismatchError(
        f"{CONSENSUS_MISMATCH}: {who} runs {theirs}, {us} runs {ours}; every member of a "
        f"cluster must run the same protocol (--consensus)"
    )


def _check_body(body: object, keys: tuple[str, ...], frame: str) -> dict[str, object]:
    if type(body) is not dict or any(key not in body for key in keys):
        raise RemoteProtocolError(f"malformed {frame} frame")
    return body


def _check_secret(secret: bytes | None) -> bytes | None:
    if secret is not None and (not isinstance(secret, bytes) or not secret):
        raise ValueError("secret must be non-empty bytes or None")
    return secret


class _Handshake:
    """What both sides share: the state, and `receive()` that feeds a frame to the step the
    current state expects (`_steps`) and fails the handshake for good if that step raises."""

    _state: _State
    _steps: ClassVar[dict[tuple[_State, FrameKind], Callable[[Any, object], Outgoing]]]

    @property
    def established(self) -> bool:
        """True once both sides have accepted each other."""
        return self._state is _State.DONE

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
        as clients know addresses only); `member_ids` our view of the cluster (empty for a client);
        `consensus` the protocol this node runs (ignored for a client).
        """
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        if role == ROLE_PEER and (node_id is None or target_id is None):
            raise ValueError("a peer dialer needs its own node_id and the target_id it dials")
        self._role = role
        self._node_id = node_id
        self._target_id = target_id
        self._secret = _check_secret(secret)
        self._members = sorted(member_ids)
        self._consensus = consensus if role == ROLE_PEER else None
        self._urandom = urandom
        self._state = _State.START
        self._hello: dict[str, object] | None = None
        self._ack: dict[str, object] | None = None
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
            "nonce": None if self._secret is None else self._urandom(NONCE_BYTES),
            "members": self._members,
            "consensus": self._consensus,
        }
        self._state = _State.WAIT_HELLO_ACK
        return [(FrameKind.HELLO, self._hello)]

    def _on_hello_ack(self, body: object) -> Outgoing:
        ack = _check_body(body, ("node_id", "nonce", "members"), "HELLO_ACK")
        listener_id = _check_id(ack["node_id"], "node id", optional=False)
        _check_nonce(ack["nonce"], "nonce")
        self.peer_member_ids = tuple(_check_members(ack["members"], "member ids"))
        self.peer_consensus = _check_consensus(ack.get("consensus")) or DEFAULT_CONSENSUS
        if self._target_id is not None and listener_id != self._target_id:
            raise AuthenticationError(
                f"dialed node {self._target_id!r} but the other side is {listener_id!r}"
            )
        self.peer_id = listener_id
        if self._secret is None:
            if ack["nonce"] is not None:
                raise AuthenticationError(f"node {listener_id!r} requires a secret; we have none")
            self._check_peer_consensus()
            self._state = _State.DONE
            return []
        if ack["nonce"] is None:
            raise AuthenticationError(f"node {listener_id!r} has no secret; we require one")
        hello = self._hello
        if hello is None:
            raise RuntimeError("receive() before start()")
        self._ack = ack
        self._state = _State.WAIT_AUTH_OK
        return [(FrameKind.AUTH, {"proof": _proof(self._secret, _FROM_DIALER, hello, ack)})]

    def _on_auth_ok(self, body: object) -> Outgoing:
        auth_ok = _check_body(body, ("proof",), "AUTH_OK")
        hello, ack, secret = self._hello, self._ack, self._secret
        if hello is None or ack is None or secret is None:
            raise RuntimeError("AUTH_OK before HELLO_ACK")
        proof = auth_ok["proof"]
        expected = _proof(secret, _FROM_LISTENER, hello, ack)
        if type(proof) is not bytes or not hmac.compare_digest(proof, expected):
            raise AuthenticationError(f"node {self.peer_id!r} failed to prove the cluster secret")
        self._check_peer_consensus()
        self._state = _State.DONE
        return []

    def _check_peer_consensus(self) -> None:
        # Peers only: a client serves whatever protocol the cluster runs.
        ours, theirs = self._consensus, self.peer_consensus
        if ours is not None and theirs is not None and theirs != ours:
            raise _mismatch(ours, theirs, f"node {self.peer_id!r}", "this node")

    _steps = {
        (_State.WAIT_HELLO_ACK, FrameKind.HELLO_ACK): _on_hello_ack,
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
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`member_ids` is our current view of the cluster; `is_member(id)` says whether a peer
        dialer claiming `id` may connect; `consensus` is the protocol this node runs."""
        self._node_id = node_id
        self._consensus = consensus
        self._secret = _check_secret(secret)
        self._members = sorted(member_ids)
        self._is_member = is_member
        self._urandom = urandom
        self._state = _State.WAIT_HELLO
        self._hello: dict[str, object] | None = None
        self._ack: dict[str, object] | None = None
        self._dialer_id: str | None = None
        self.role: str | None = None
        """`ROLE_PEER` or `ROLE_CLIENT`, once HELLO arrived."""
        self.peer_id: str | None = None
        """A peer dialer's node id (proven if there is a secret); None for clients."""
        self.peer_consensus: str | None = None
        """A peer dialer's consensus protocol as it sent it; None for clients."""

    def _on_hello(self, body: object) -> Outgoing:
        hello = _check_body(body, ("role", "node_id", "target", "nonce", "members"), "HELLO")
        role = hello["role"]
        if role not in _ROLES:
            raise RemoteProtocolError(f"unknown role in HELLO: {str(role)[:40]!r}")
        dialer_id = _check_id(hello["node_id"], "node id", optional=True)
        target = _check_id(hello["target"], "target id", optional=True)
        nonce = _check_nonce(hello["nonce"], "nonce")
        _check_members(hello["members"], "member ids")
        consensus = _check_consensus(hello.get("consensus"))
        self.role = str(role)
        if target is not None and target != self._node_id:
            raise AuthenticationError(
                f"the dialer wants node {target!r}; this is {self._node_id!r}"
            )
        if role == ROLE_PEER:
            if dialer_id is None:
                raise RemoteProtocolError("a peer HELLO must carry its node id")
            if dialer_id == self._node_id:
                raise AuthenticationError(f"peer claims our own id {dialer_id!r}")
            if not self._is_member(dialer_id):
                raise AuthenticationError(f"peer {dialer_id!r} is not a member of this cluster")
            self.peer_consensus = consensus or DEFAULT_CONSENSUS
        if self._secret is None:
            if nonce is not None:
                raise AuthenticationError("the dialer offers a secret; this node has none")
            self._check_peer_consensus(dialer_id)
            self.peer_id = dialer_id if role == ROLE_PEER else None
            self._state = _State.DONE
            return [(FrameKind.HELLO_ACK, self._make_ack(with_nonce=False))]
        if nonce is None:
            raise AuthenticationError("this node requires the cluster secret")
        self._hello = hello
        self._dialer_id = dialer_id
        self._ack = self._make_ack(with_nonce=True)
        self._state = _State.WAIT_AUTH
        return [(FrameKind.HELLO_ACK, self._ack)]

    def _make_ack(self, *, with_nonce: bool) -> dict[str, object]:
        return {
            "node_id": self._node_id,
            "nonce": self._urandom(NONCE_BYTES) if with_nonce else None,
            "members": self._members,
            "consensus": self._consensus,
        }

    def _check_peer_consensus(self, dialer_id: str | None) -> None:
        theirs = self.peer_consensus
        if self.role == ROLE_PEER and theirs is not None and theirs != self._consensus:
            raise _mismatch(
                self._consensus, theirs, f"peer {dialer_id!r}", f"this node ({self._node_id!r})"
            )

    def _on_auth(self, body: object) -> Outgoing:
        auth = _check_body(body, ("proof",), "AUTH")
        hello, ack, secret = self._hello, self._ack, self._secret
        if hello is None or ack is None or secret is None:
            raise RuntimeError("AUTH before HELLO")
        proof = auth["proof"]
        expected = _proof(secret, _FROM_DIALER, hello, ack)
        if type(proof) is not bytes or not hmac.compare_digest(proof, expected):
            raise AuthenticationError("the dialer failed to prove the cluster secret")
        self._check_peer_consensus(self._dialer_id)
        self.peer_id = self._dialer_id if self.role == ROLE_PEER else None
        self._state = _State.DONE
        return [(FrameKind.AUTH_OK, {"proof": _proof(secret, _FROM_LISTENER, hello, ack)})]

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
