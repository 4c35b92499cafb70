"""The checkers catch each kind of violation they exist for (and accept legal histories)."""

from __future__ import annotations

import pytest

from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import Entry, EntryType
from tests.paxos.helpers import paxos_peer
from tests.sim.checkers import PaxosSafetyChecker, SafetyChecker, SafetyViolation, make_checker


def test_two_leaders_in_one_term() -> None:
    c = SafetyChecker()
    c.on_leader("a", 3)
    c.on_leader("a", 3)
    c.on_leader("b", 4)
    with pytest.raises(SafetyViolation, match="two leaders in term 3"):
        c.on_leader("b", 3)


def test_log_matching_same_index_term_different_data() -> None:
    c = SafetyChecker()
    c.on_entries_written("a", [Entry(1, 1, data=b"x"), Entry(1, 2, data=b"y")], 0)
    c.on_entries_written("b", [Entry(1, 1, data=b"x")], 0)  # agrees
    with pytest.raises(SafetyViolation, match="log matching"):
        c.on_entries_written("b", [Entry(1, 2, data=b"z")], 1)


def test_log_matching_same_entry_after_different_terms() -> None:
    c = SafetyChecker()
    c.on_entries_written("a", [Entry(1, 1), Entry(3, 2, data=b"q")], 0)
    c.on_entries_written("b", [Entry(2, 1)], 0)
    with pytest.raises(SafetyViolation, match="after term"):
        c.on_entries_written("b", [Entry(3, 2, data=b"q")], 2)


def test_commit_of_different_terms_at_one_index() -> None:
    c = SafetyChecker()
    c.on_commit("a", 2, {1: 1, 2: 2})
    c.on_commit("b", 3, {1: 1})
    with pytest.raises(SafetyViolation, match="committed before with term 2"):
        c.on_commit("c", 4, {2: 3})


def test_leader_completeness() -> None:
    c = SafetyChecker()
    c.on_commit("a", 2, {1: 1, 2: 2})
    assert c.indices_for_leader(3, 1) == [1, 2]
    assert c.indices_for_leader(2, 1) == []  # committed in term 2: not required of term 2
    c.check_leader_log("b", 3, {1: 1, 2: 2})
    assert c.leader_checked("b", 3)
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.check_leader_log("c", 4, {1: 1, 2: None})


def test_state_machine_safety() -> None:
    c = SafetyChecker()
    h1 = c.on_apply("a", Entry(1, 1, data=b"x"), 0)
    h2 = c.on_apply("a", Entry(1, 2, data=b"y"), h1)
    assert c.on_apply("b", Entry(1, 1, data=b"x"), 0) == h1
    with pytest.raises(SafetyViolation, match="state machine safety"):
        c.on_apply("b", Entry(2, 2, data=b"other"), h1)
    with pytest.raises(SafetyViolation, match="gap"):
        c.on_apply("b", Entry(1, 4, data=b"z"), h2)
    c.on_snapshot_restored("c", 2, h2)
    with pytest.raises(SafetyViolation, match="snapshot"):
        c.on_snapshot_restored("c", 1, h2)


def test_stale_read_detected() -> None:
    c = SafetyChecker()
    c.on_ack(b"p1", b"k", 5, b"k=p1")
    c.on_read_request(b"r1", b"k")
    c.on_read_request(b"r2", b"other")
    c.on_read_answer("a", b"r2", 0)  # nothing acknowledged on that key: any answer is fine
    with pytest.raises(SafetyViolation, match="stale read"):
        c.on_read_answer("a", b"r1", 4)
    c.on_read_request(b"r3", b"k")
    c.on_read_answer("a", b"r3", 5)
    assert c.reads_checked == 3


def test_acknowledged_write_lost() -> None:
    c = SafetyChecker()
    h = c.on_apply("a", Entry(1, 1, data=b"k=p1"), 0)
    c.on_ack(b"p1", b"k", 1, b"k=p1")
    c.on_ack(b"p2", b"k", 2, b"k=p2")
    c.on_apply("a", Entry(1, 2, data=b"k=p2"), h)
    c.check_acked_present()
    c.on_ack(b"p3", b"k", 3, b"k=p3")  # acknowledged, yet applied nowhere
    with pytest.raises(SafetyViolation, match="p3"):
        c.check_acked_present()


# --- the Paxos checker: value-based ---------------------------------------------------------


def test_make_checker_picks_the_protocols_checker() -> None:
    assert type(make_checker("raft")) is SafetyChecker
    assert type(make_checker("paxos")) is PaxosSafetyChecker
    with pytest.raises(ValueError, match="consensus"):
        make_checker("zab")


def test_paxos_one_value_per_slot_and_ballot() -> None:
    c = PaxosSafetyChecker()
    c.on_entries_written("n1", [Entry(5, 1, EntryType.NORMAL, b"x")], None)
    c.on_entries_written("n2", [Entry(7, 1, EntryType.NORMAL, b"x")], None)  # re-proposed: ok
    c.on_entries_written("n3", [Entry(3, 2, EntryType.NORMAL, b"y"), Entry(2, 3)], 7)  # no order
    with pytest.raises(SafetyViolation, match="slot 1 ballot 5"):
        c.on_entries_written("n3", [Entry(5, 1, EntryType.NORMAL, b"y")], None)


def test_paxos_state_machine_safety_is_by_value_not_ballot() -> None:
    c = PaxosSafetyChecker()
    h = c.on_apply("n1", Entry(5, 1, EntryType.NORMAL, b"x"), 0)
    assert c.on_apply("n2", Entry(7, 1, EntryType.NORMAL, b"x"), 0) == h  # another ballot
    with pytest.raises(SafetyViolation, match="state machine safety"):
        c.on_apply("n3", Entry(5, 1, EntryType.NORMAL, b"y"), 0)
    with pytest.raises(SafetyViolation, match="state machine safety"):
        c.on_apply("n3", Entry(5, 1, EntryType.CONF_CHANGE, b"x"), 0)  # same bytes, other type
    with pytest.raises(SafetyViolation, match="gap"):
        c.on_apply("n3", Entry(5, 3, EntryType.NORMAL, b"z"), h)


def test_paxos_leader_completeness_by_value() -> None:
    c = PaxosSafetyChecker()
    c.on_apply("n3", Entry(2, 1, EntryType.NORMAL, b"chosen"), 0)
    # A leader whose log holds another value where one was applied.
    other = paxos_peer("n1", storage=MemoryLogView(entries=[Entry(9, 1, EntryType.NORMAL, b"x")]))
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.check_leader("n1", 9, MemoryLogView(), other.core)
    # A leader whose log ends before an applied slot.
    short = paxos_peer("n2", storage=MemoryLogView())
    with pytest.raises(SafetyViolation, match="ends at slot 0"):
        c.check_leader("n2", 11, MemoryLogView(), short.core)
    # The same value in another ballot is complete; each leadership is checked once.
    same = paxos_peer(
        "n3", storage=MemoryLogView(entries=[Entry(4, 1, EntryType.NORMAL, b"chosen")])
    )
    c.check_leader("n3", 13, MemoryLogView(), same.core)
    assert c.leader_checked("n3", 13) and c.leaders_checked == 1
