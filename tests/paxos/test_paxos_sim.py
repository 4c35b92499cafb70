"""The deterministic simulator (tests/sim) driving `PaxosCore`s: the same faults, the same
safety checks where they are protocol-neutral, and value-based versions where they are not.

`SimCluster` builds `RaftCore`s itself and has no core factory yet, so this module swaps the
name `RaftCore` in `tests.sim.cluster` for `PaxosCore` (pytest's monkeypatch, undone after each
test). The simulator's checkers compare entries by (index, term); a Paxos leader re-proposes,
in its own ballot, values that may already be chosen, so the same value may carry different
ballots on different members. `PaxosSafetyChecker` keeps every check that still means something
and replaces the term-based ones by value-based ones:

- election safety: one leader per ballot (unchanged);
- one value per (slot, ballot) (log matching without the "same previous term" half, which needs
  Raft's non-decreasing terms);
- leader completeness by value: a leader, once phase 1 is done, holds at every slot the value
  every member applied there (Paxos Made Simple §2.2, P2c);
- state machine safety: every member applies one sequence of values (hash chain over type and
  data, not term);
- acknowledged writes are never lost, reads are linearizable (unchanged).

Seeds: 0 .. KVSTORE_PAXOS_SIM_SEEDS-1 (default 60); `KVSTORE_SIM_SEED=N` replays one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import tests.sim.cluster as sim_cluster
from kvstore.paxos.core import PaxosCore
from kvstore.raft.memory import MemoryLogView
from kvstore.raft.types import Entry, EntryType, Role
from tests.paxos.helpers import paxos_peer
from tests.sim.checkers import SafetyChecker, SafetyViolation, SimFailure
from tests.sim.cluster import SimCluster, SimOptions
from tests.sim.network import NetworkOptions
from tests.sim.scenarios import FaultOptions, run_scenario


def value_hash(prev: int, entry: Entry) -> int:
    """The next link of the hash chain over applied values (type and data, not ballot)."""
    return hash((prev, int(entry.type), entry.data))


class PaxosSafetyChecker(SafetyChecker):
    """`SafetyChecker` with value-based log checks (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.leaders_checked = 0

    def on_entries_written(self, node: str, entries: list[Entry], prev_term: int | None) -> None:
        """One ballot proposes one value per slot: (slot, ballot) always holds the same value."""
        values = self._values
        for e in entries:
            fact = (e.data, int(e.type))
            old = values.setdefault((e.index, e.term), fact)
            if old != fact:
                raise SafetyViolation(
                    f"{node} holds {fact[0]!r} at slot {e.index} ballot {e.term}, "
                    f"another member {old[0]!r}"
                )

    def on_commit(self, node: str, term: int, term_of: dict[int, int]) -> None:
        """Terms of chosen slots may differ between members: checked by value at apply time."""

    def check_leader_log(self, node: str, term: int, term_at: dict[int, int | None]) -> None:
        """Term-based: replaced by `check_paxos_leader`."""

    def on_apply(self, node: str, entry: Entry, prev_hash: int) -> int:
        """`node` applied `entry`: the value must be the one every member applies there."""
        h = value_hash(prev_hash, entry)
        applied = self.applied
        if entry.index == len(applied):
            if applied[-1][2] != prev_hash:
                raise SafetyViolation(
                    f"state machine safety: {node} applied slot {entry.index} on a state that "
                    f"differs from the common sequence before it"
                )
            applied.append((entry.term, entry.data, h))
        elif entry.index < len(applied):
            if applied[entry.index][2] != h:
                raise SafetyViolation(
                    f"state machine safety: {node} applied {entry.data!r} at slot {entry.index}, "
                    f"where others applied {applied[entry.index][1]!r}"
                )
        else:
            raise SafetyViolation(
                f"{node} applied slot {entry.index} but the common sequence ends at "
                f"{len(applied) - 1}: a gap nobody filled"
            )
        return h

    def check_paxos_leader(self, node: str, ballot: int, core: PaxosCore) -> None:
        """Leader completeness by value, once per leadership."""
        if self._checked_leaders.get(node) == ballot:
            return
        log = core._log  # the leader's whole log, persisted or not: what it will propose
        lo = log.first_index()
        hi = min(len(self.applied) - 1, log.last_index())
        if hi >= lo:
            held = log.entries(lo, hi + 1)
            for e in held:
                want = self.applied[e.index][1]
                if e.data != want:
                    raise SafetyViolation(
                        f"leader completeness: {node}, leader of ballot {ballot}, holds "
                        f"{e.data!r} at slot {e.index} where {want!r} was applied"
                    )
        if log.last_index() < len(self.applied) - 1:
            raise SafetyViolation(
                f"leader completeness: {node}, leader of ballot {ballot}, ends at slot "
                f"{log.last_index()}, but slot {len(self.applied) - 1} was applied"
            )
        self._checked_leaders[node] = ballot
        self.leaders_checked += 1


_original_check = SimCluster._check


def _paxos_check(self: SimCluster) -> None:
    _original_check(self)
    checker = self.checker
    assert isinstance(checker, PaxosSafetyChecker)
    for node in self.nodes.values():
        if node.alive and node.core.role == Role.LEADER:
            checker.check_paxos_leader(node.id, node.core.term, node.core)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def paxos_sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the simulator on `PaxosCore`s with the Paxos checker, for one test."""
    monkeypatch.setattr(sim_cluster, "RaftCore", PaxosCore)
    monkeypatch.setattr(sim_cluster, "SafetyChecker", PaxosSafetyChecker)
    monkeypatch.setattr(SimCluster, "_check", _paxos_check)
    yield


def _seeds() -> list[int]:
    one = os.environ.get("KVSTORE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("KVSTORE_PAXOS_SIM_SEEDS", "60"))))


@pytest.mark.parametrize("seed", _seeds())
def test_random_scenario(seed: int) -> None:
    """The randomized fault sweep of tests/sim, on Paxos, with liveness after healing."""
    try:
        run_scenario(seed)
    except SimFailure as e:
        pytest.fail(f"paxos simulation failed, seed {seed}:\n{e}", pytrace=False)


def test_the_simulator_really_runs_paxos() -> None:
    """The swap is in effect: the cluster's cores are `PaxosCore`s, the Paxos checker runs and
    checks leaders, and a write goes through."""
    c = SimCluster(5, options=SimOptions(network=NetworkOptions(delay_mean_steps=1.0)))
    assert all(isinstance(n.core, PaxosCore) for n in c.nodes.values())
    assert isinstance(c.checker, PaxosSafetyChecker)
    assert c.run(2000, until=lambda: c.leader() is not None)
    leader = c.leader()
    assert leader is not None
    ids = c.propose(leader.id, 3)
    assert c.run(2000, until=lambda: all(p in c.checker.acked for p in ids))
    assert c.checker.leaders_checked >= 1
    assert c.run(200, until=lambda: len({n.sm.applied for n in c.nodes.values()}) == 1)


def test_paxos_checker_catches_what_it_claims_to() -> None:
    """Each value-based check fires on a broken history (else the sweep could be vacuous)."""
    checker = PaxosSafetyChecker()
    checker.on_entries_written("n1", [Entry(5, 1, EntryType.NORMAL, b"x")], None)
    checker.on_entries_written("n2", [Entry(7, 1, EntryType.NORMAL, b"x")], None)  # restamped: ok
    with pytest.raises(SafetyViolation, match="slot 1 ballot 5"):
        checker.on_entries_written("n3", [Entry(5, 1, EntryType.NORMAL, b"y")], None)
    h = checker.on_apply("n1", Entry(5, 1, EntryType.NORMAL, b"x"), 0)
    assert checker.on_apply("n2", Entry(7, 1, EntryType.NORMAL, b"x"), 0) == h
    with pytest.raises(SafetyViolation, match="state machine safety"):
        checker.on_apply("n3", Entry(5, 1, EntryType.NORMAL, b"y"), 0)
    with pytest.raises(SafetyViolation, match="gap"):
        checker.on_apply("n3", Entry(5, 3, EntryType.NORMAL, b"z"), h)
    # A leader whose log holds another value where one was applied.
    storage = MemoryLogView(entries=[Entry(9, 1, EntryType.NORMAL, b"other")])
    peer = paxos_peer("n1", storage=storage)
    with pytest.raises(SafetyViolation, match="leader completeness"):
        checker.check_paxos_leader("n1", 9, peer.core)  # type: ignore[arg-type]
    short = paxos_peer("n2", storage=MemoryLogView())
    with pytest.raises(SafetyViolation, match="ends at slot 0"):
        checker.check_paxos_leader("n2", 11, short.core)  # type: ignore[arg-type]


def test_fault_coverage() -> None:
    """With faults turned up, the Paxos sweep exercises what it claims to: crashes, snapshots,
    lost and duplicated messages, refused proposals, checked reads, many ballots."""
    faults = FaultOptions(
        fault_steps=1500,
        crash_probability=0.01,
        membership_probability=0.01,
        partition_probability=0.01,
        transfer_probability=0.005,
    )
    totals: dict[str, int] = {}
    for seed in range(1000, 1010):
        try:
            result = run_scenario(seed, faults)
        except SimFailure as e:
            pytest.fail(f"paxos simulation failed, seed {seed}:\n{e}", pytrace=False)
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
    for key in (
        "acked",
        "reads_checked",
        "crashes",
        "snapshots_installed",
        "net_dropped",
        "net_duplicated",
        "dropped_proposals",
    ):
        assert totals.get(key, 0) > 0, f"no {key} in 10 seeds: {totals}"
    assert totals["conf_changes"] == 0  # every membership change was refused
    assert totals["terms"] > 10  # leadership moved, not just the first election
