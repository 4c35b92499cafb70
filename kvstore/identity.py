"""Who a member is, beyond its node id: the cluster it belongs to and its incarnation.

Node ids are names an operator picks, and the same names (n1, n2, n3) are used by every
cluster; nothing in an id says which cluster or which copy of the data stands behind it. So
each data directory holds a small file, `DATA_DIR/identity` (JSON, mode 0600, written to a
temporary file, fsynced and renamed into place), with:

- `node_id`: the member this directory belongs to. Starting it under another id is refused.
- `incarnation`: random, minted when the directory is created. A member whose data was wiped
  (or replaced) comes back under its old id with a new incarnation.
- `cluster_id`: minted once for the cluster, as etcd does with its initial cluster token: a
  hash of `Options.cluster_name` and the founding member ids, so every founder computes the
  same id on its own, without talking to anyone, and two clusters created under different
  names never mistake each other's members for their own. A member started with `join=True`
  knows no cluster yet: it adopts the id of the first member that authenticates to it (the
  leader that added it) and keeps it from then on.
- `peers`: the incarnation this member last saw for each peer id, and whether it saw it on a
  connection it dialed itself (to the address its configuration gives for that id: the
  authority) or only claimed by a process that dialed in. `remove_member` forgets it (every
  member forgets an id once the removal is applied), so remove, wipe and add again works.

After a peer connection is authenticated both sides exchange their cluster id and incarnation
(`kvstore.transport.identity`) and `check_peer` decides; a conflict raises
`IdentityConflictError`, whose message names it:

- another cluster: the cluster ids differ;
- a second process with a member's id: a process dials in claiming an id that is connected
  right now under another incarnation (the first process keeps its place: the newcomer can
  neither take over nor cause elections);
- a wiped member: it comes back with an incarnation other than the one remembered.

Only a claim made by dialing in can be refused as "already connected"; what this member finds
at the address it dials for an id is the authority. So a second process that reached a member
first (before that member had ever dialed the real one) cannot make it refuse the real one:
the dialed incarnation replaces a remembered claim, and connections claiming otherwise are
closed (`kvstore.transport.identity`). Every member dials every peer as soon as it starts, so
such first claims are rare.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from kvstore.errors import AuthenticationError, CorruptionError, InvalidArgumentError

log = logging.getLogger("kvstore.identity")

IDENTITY_FILE: Final = "identity"
"""The file's name inside the data directory."""

IDENTITY_CHARS_MAX: Final = 64
"""Longest cluster id or incarnation accepted from a peer."""

IDENTITY_CONFLICT: Final = "identity conflict"
"""How the message of every `IdentityConflictError` starts (also inside ERROR frames)."""

_FORMAT_VERSION: Final = 1


class IdentityConflictError(AuthenticationError):
    """A peer is authenticated but is not who this member takes it for: a member of another
    cluster, a second process under a member's id, or a member whose data was wiped. Raised on
    both sides of the identity exchange; the message names the conflict and the fix."""


def cluster_id_for(cluster_name: str, founders: Iterable[str]) -> str:
    """The id of a cluster created under `cluster_name` by the members `founders`: the same on
    every founder (order does not matter), different for another name or other founders."""
    material = json.dumps(["kvstore-cluster/1", cluster_name, sorted(founders)])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class IdentityStore:
    """This member's `DATA_DIR/identity`: read at start, rewritten (atomically, fsynced) when
    the cluster id is adopted or a peer's incarnation is first seen or changes.

    Used from one thread at a time (the node's loop thread once the node runs).
    """

    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        incarnation: str,
        cluster_id: str | None,
        peers: dict[str, tuple[str, bool]],
    ) -> None:
        self.path = path
        self.node_id = node_id
        self.incarnation = incarnation
        """Random, minted when this data directory was created."""
        self.cluster_id = cluster_id
        """The cluster this member belongs to; None until a joining member learns it."""
        self._peers = peers
        """peer id -> (incarnation last seen, whether seen on a connection we dialed)."""

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        node_id: str,
        cluster_id: str | None,
    ) -> IdentityStore:
        """Read the identity of `data_dir`, or create it (a new incarnation, `cluster_id`).

        Raises `InvalidArgumentError` if the directory belongs to another member id, and
        `CorruptionError` if the file cannot be parsed.
        """
        path = data_dir / IDENTITY_FILE
        store = cls.load(path)
        if store is None:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = cls(
                path,
                node_id=node_id,
                incarnation=secrets.token_hex(16),
                cluster_id=cluster_id,
                peers={},
            )
            store.save()
        elif store.node_id != node_id:
            raise InvalidArgumentError(
                f"data directory {data_dir} belongs to member {store.node_id!r}, not {node_id!r}"
            )
        return store

    @classmethod
    def load(cls, path: Path) -> IdentityStore | None:
        """The identity in `path`, or None if there is no such file."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            if data.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            node_id, incarnation = data["node_id"], data["incarnation"]
            cluster_id = data["cluster_id"]
            peers = {
                peer_id: (seen["incarnation"], seen["dialed"])
                for peer_id, seen in data["peers"].items()
            }
            if not (
                isinstance(node_id, str)
                and isinstance(incarnation, str)
                and (cluster_id is None or isinstance(cluster_id, str))
                and all(
                    isinstance(k, str) and isinstance(v, str) and isinstance(d, bool)
                    for k, (v, d) in peers.items()
                )
            ):
                raise ValueError("a field has the wrong type")
        except (ValueError, KeyError, AttributeError, TypeError) as error:
            raise CorruptionError(f"unreadable member identity: {error}", path=str(path)) from None
        return cls(
            path, node_id=node_id, incarnation=incarnation, cluster_id=cluster_id, peers=peers
        )

    def save(self) -> None:
        """Write the file atomically: a temporary file (0600), fsync, rename, fsync the folder."""
        data = {
            "version": _FORMAT_VERSION,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "incarnation": self.incarnation,
            "peers": {
                peer_id: {"incarnation": incarnation, "dialed": dialed}
                for peer_id, (incarnation, dialed) in sorted(self._peers.items())
            },
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def seen(self, peer_id: str) -> tuple[str, bool] | None:
        """(incarnation, dialed) last seen for `peer_id`, if any."""
        return self._peers.get(peer_id)

    def accept(
        self, peer_id: str, cluster_id: str | None, incarnation: str, *, dialed: bool
    ) -> None:
        """Record a peer that passed `check_peer`: remember its incarnation (a dialed one
        replaces a claimed one), and adopt its cluster id if this member has none yet. Saves
        only when something changed."""
        changed = False
        if self.cluster_id is None and cluster_id is not None:
            self.cluster_id = cluster_id
            changed = True
        seen = self._peers.get(peer_id)
        if seen is None or seen[0] != incarnation or (dialed and not seen[1]):
            self._peers[peer_id] = (incarnation, dialed or (seen is not None and seen[1]))
            changed = True
        if changed:
            self._save_or_warn()

    def _save_or_warn(self) -> None:
        # Remembered in memory either way; a disk that cannot take this small file fails the
        # redo log soon enough, which stops the node with the real cause.
        try:
            self.save()
        except OSError as error:
            log.warning("cannot save the member identity %s: %s", self.path, error)

    def forget_except(self, member_ids: Iterable[str]) -> None:
        """Forget the incarnations of peers that are no longer members (after a removal), so
        the id may come back with new data once it is added again."""
        keep = set(member_ids)
        gone = [peer_id for peer_id in self._peers if peer_id not in keep]
        if gone:
            for peer_id in gone:
                del self._peers[peer_id]
            self._save_or_warn()


def check_peer(
    *,
    node_id: str,
    cluster_id: str | None,
    peer_id: str,
    peer_cluster_id: str | None,
    peer_incarnation: str,
    remembered: tuple[str, bool] | None,
    dialed: bool,
    connected: Sequence[str] = (),
) -> None:
    """Raise `IdentityConflictError` if the authenticated peer `peer_id` is not who this member
    (`node_id` of `cluster_id`) takes it for. `dialed`: we dialed it (at the address our
    configuration gives), rather than it dialing in. `remembered` is (incarnation, dialed) last
    seen for `peer_id`; `connected` the incarnations of its connections open right now."""
    known = remembered[0] if remembered is not None else None
    # What we found by dialing is the authority over what a process dialing in once claimed.
    overrides_claim = dialed and remembered is not None and not remembered[1]
    wiped = known is not None and known != peer_incarnation and not overrides_claim
    if cluster_id is not None and peer_cluster_id is not None and cluster_id != peer_cluster_id:
        raise IdentityConflictError(
            f"{IDENTITY_CONFLICT}: {peer_id!r} is a member of another cluster (cluster id "
            f"{peer_cluster_id}, {node_id!r} belongs to {cluster_id})"
            + (
                f" and not the incarnation {node_id!r} knew: its data directory was replaced"
                if wiped
                else "; check its --peers and --cluster-name"
            )
        )
    others = [incarnation for incarnation in connected if incarnation != peer_incarnation]
    if others and not dialed:
        raise IdentityConflictError(
            f"{IDENTITY_CONFLICT}: member id {peer_id!r} is already connected to {node_id!r} as "
            f"incarnation {others[0]}; a second process (incarnation {peer_incarnation}) claims "
            "the same id: give every process its own --id and data directory"
        )
    if wiped:
        raise IdentityConflictError(
            f"{IDENTITY_CONFLICT}: member {peer_id!r} came back as incarnation "
            f"{peer_incarnation}, but {node_id!r} knew it as {known}: its data directory "
            f"was wiped or replaced; remove it from the cluster (kvstore member remove "
            f"{peer_id}) and add it again with an empty data directory (--join)"
        )


def check_wire_identity(body: object) -> tuple[str | None, str]:
    """(cluster_id, incarnation) of an IDENTITY frame body; `ValueError` if malformed."""
    if type(body) is not dict:
        raise ValueError("malformed IDENTITY frame")
    cluster_id, incarnation = body.get("cluster_id"), body.get("incarnation")
    if cluster_id is not None and (
        type(cluster_id) is not str or not 0 < len(cluster_id) <= IDENTITY_CHARS_MAX
    ):
        raise ValueError("bad cluster id in IDENTITY frame")
    if type(incarnation) is not str or not 0 < len(incarnation) <= IDENTITY_CHARS_MAX:
        raise ValueError("bad incarnation in IDENTITY frame")
    return cluster_id, incarnation


__all__ = [
    "IDENTITY_FILE",
    "IdentityConflictError",
    "IdentityStore",
    "check_peer",
    "check_wire_identity",
    "cluster_id_for",
]
