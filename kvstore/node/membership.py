"""Membership changes: add a member (as a learner, promoted once caught up), remove one,
transfer leadership; and the address checks they and `Node.__init__` share.

The changes run on the loop thread (THREADS.md), against a `MembershipHost` (the node's
runtime): they propose configuration changes to the core and wait, with one deadline per call,
for them to be applied or for the leader to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from kvstore.consensus import ConsensusCore
from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState, DropReason
from kvstore.deadline import Deadline
from kvstore.errors import (
    InvalidArgumentError,
    OperationTimeoutError,
    ProposalDroppedError,
    UnavailableError,
)

PROMOTION_LAG_ENTRIES = 64
"""A learner is promoted to voter once it is at most this far behind the leader's commit."""


class MembershipHost(Protocol):
    """What a membership change needs of the node (all on the loop thread)."""

    @property
    def leader_id(self) -> str | None:
        """The leader this node knows of, or None."""
        ...

    @property
    def is_leader(self) -> bool:
        """Whether this node leads."""
        ...

    @property
    def members(self) -> Mapping[str, str]:
        """Member id -> address, as this node knows them."""
        ...

    @property
    def tick_s(self) -> float:
        """The node's tick: how often a waiting change looks again."""
        ...

    def require_leader(self) -> ConsensusCore:
        """The core if this node leads, else raise `NotLeaderError`."""
        ...

    def conf_state(self) -> ConfState:
        """The core's configuration now."""
        ...

    def kick(self) -> None:
        """Wake the Ready task."""
        ...

    async def wait_applied(self, index: int, deadline: Deadline) -> None:
        """Return once this node applied through `index`."""
        ...

    async def wait_leader_change(self, timeout_s: float) -> None:
        """Return at the next change of leader, or after `timeout_s`."""
        ...


async def add_member(host: MembershipHost, node_id: str, address: str, timeout_s: float) -> None:
    """Add `node_id` as a learner, wait until it has nearly caught up, then promote it to
    voter. Adding a voter again does nothing."""
    deadline = Deadline(timeout_s)
    host.require_leader()
    conf = host.conf_state()
    if node_id in conf.voters:
        return
    check_address_free(host.members, node_id, address)
    if node_id not in conf.learners:
        await _propose_conf_change(
            host, ConfChange(ConfChangeType.ADD_LEARNER, node_id, address.encode()), deadline
        )
    # Promote only once the learner is nearly caught up, so the quorum never waits on it.
    while True:
        core = host.require_leader()
        status = core.status()
        if node_id not in status.conf_state.learners:
            if node_id in status.conf_state.voters:
                return  # promoted meanwhile (a retry of this call on another path)
            raise UnavailableError(f"{node_id} was removed while it was being added")
        progress = status.progress.get(node_id)
        if progress is not None and progress.match + PROMOTION_LAG_ENTRIES >= status.commit:
            break
        if deadline.expired():
            raise OperationTimeoutError(f"{node_id} did not catch up within {timeout_s:.1f}s")
        await asyncio.sleep(host.tick_s)
    await _propose_conf_change(
        host, ConfChange(ConfChangeType.ADD_VOTER, node_id, address.encode()), deadline
    )


async def remove_member(host: MembershipHost, node_id: str, timeout_s: float) -> None:
    """Remove a voter or learner (the leader itself included)."""
    deadline = Deadline(timeout_s)
    host.require_leader()
    conf = host.conf_state()
    if node_id not in conf.voters and node_id not in conf.learners:
        raise InvalidArgumentError(f"{node_id} is not a member")
    await _propose_conf_change(host, ConfChange(ConfChangeType.REMOVE, node_id), deadline)


async def transfer_leadership(host: MembershipHost, node_id: str, timeout_s: float) -> None:
    """Hand leadership to `node_id`; return once it leads."""
    deadline = Deadline(timeout_s)
    if host.leader_id == node_id and host.is_leader:
        return
    core = host.require_leader()
    if node_id not in core.conf_state.voters:
        raise InvalidArgumentError(f"{node_id} is not a voting member")
    core.transfer_leadership(node_id)
    host.kick()
    while host.leader_id != node_id:
        remaining = deadline.remaining_s()
        if remaining <= 0:
            raise OperationTimeoutError(f"{node_id} did not take over within {timeout_s:.1f}s")
        await host.wait_leader_change(remaining)


async def _propose_conf_change(
    host: MembershipHost, change: ConfChange, deadline: Deadline
) -> None:
    core = host.require_leader()
    try:
        index = core.propose_conf_change(change)
    except ProposalDroppedError as error:
        if error.reason == DropReason.MEMBERSHIP_FIXED:  # retrying cannot help
            raise InvalidArgumentError(error.reason) from None
        raise UnavailableError(f"membership change refused: {error.reason}") from None
    host.kick()
    await host.wait_applied(index, deadline)
    # Applied through its index does not mean applied: a leader change may have replaced
    # the entry with another one. The configuration says whether it took effect.
    if not conf_reflects(host.conf_state(), change):
        raise UnavailableError(
            f"the membership change {change.type.name} {change.node_id} was lost in a "
            "leader change; try again"
        )


def conf_reflects(conf: ConfState, change: ConfChange) -> bool:
    """Whether `conf` is what `change` asked for (it may also hold later changes)."""
    node = change.node_id
    if change.type == ConfChangeType.REMOVE:
        return node not in conf.voters and node not in conf.learners
    if change.type == ConfChangeType.ADD_VOTER:
        return node in conf.voters
    return node in conf.learners or node in conf.voters


def check_distinct_addresses(peers: Mapping[str, str]) -> None:
    """Two member ids on one address cannot both listen there: refuse the map at once rather
    than run with one member unreachable (and refusals logged forever)."""
    owners: dict[str, str] = {}
    for peer_id, address in peers.items():
        if address.rpartition(":")[2] == "0":
            continue  # port 0: the kernel picks a distinct port for each
        other = owners.setdefault(address, peer_id)
        if other != peer_id:
            raise InvalidArgumentError(
                f"peers {other!r} and {peer_id!r} have the same address {address}; "
                "every member needs its own host:port"
            )


def check_address_free(peers: Mapping[str, str], node_id: str, address: str) -> None:
    """Refuse to add `node_id` at an address another member already listens on."""
    for other, known in peers.items():
        if other != node_id and known == address and not address.endswith(":0"):
            raise InvalidArgumentError(
                f"member {other!r} already has the address {address}; {node_id!r} needs its own"
            )


def check_address(address: object) -> str:
    """`address` if it is "host:port" with a port in range, else `InvalidArgumentError`."""
    if not isinstance(address, str):
        raise InvalidArgumentError(f"address must be 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"address must be 'host:port', got {address!r}")
    return address


__all__ = [
    "PROMOTION_LAG_ENTRIES",
    "MembershipHost",
    "add_member",
    "check_address",
    "check_address_free",
    "check_distinct_addresses",
    "conf_reflects",
    "remove_member",
    "transfer_leadership",
]
