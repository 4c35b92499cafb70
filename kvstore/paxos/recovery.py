"""What a new leader proposes after phase 1: the merge of a quorum's promises.

"Paxos Made Simple" §2.2 (P2c) and §3: a proposer that has promises from a majority for ballot
`b` must propose, for every slot, the value of the highest-numbered proposal any of those
acceptors accepted there, and may propose anything (here: a no-op) where none accepted one.

Each promise here also says how far its acceptor knows the chosen prefix to reach (its commit
index). A value known chosen is final whatever ballot it carries, so slots up to the highest
commit in the quorum are learned, not re-proposed; only the slots after it go through the
highest-ballot rule, and every one of them up to the last slot any promise reports is proposed
again in ballot `b` (gaps as no-ops). No value can have been chosen after that last slot: a
majority that accepted it would overlap the quorum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvstore.consensus.types import Entry, EntryType
from kvstore.errors import invariant


class Promise(NamedTuple):
    """One acceptor's promise as the proposer uses it."""

    commit: int
    """The acceptor's chosen prefix: its entries at or below this index are chosen values."""
    entries: Sequence[Entry]
    """Entries it holds after the proposer's commit: chosen ones (index <= `commit`, possibly
    only a prefix of them) and, in full, every value it accepted after `commit`, each with the
    ballot it accepted it in (`term`)."""


class Recovery(NamedTuple):
    """The outcome of merging a quorum's promises."""

    learned: list[Entry]
    """Chosen values the proposer did not know, contiguous from its commit + 1."""
    complete: bool
    """Whether `learned` reaches `chosen_through`; if not, the proposer cannot lead yet."""
    chosen_through: int
    """The highest commit index among the proposer and the quorum."""
    proposals: list[Entry]
    """Slots `(chosen_through, end]`, each with the highest-ballot value or a no-op, stamped
    with the new ballot (empty when not `complete`)."""
    end: int
    """The last slot that may hold a value chosen in an earlier ballot (the recovery end)."""


def recover(ballot: int, commit: int, promises: Sequence[Promise]) -> Recovery:
    """Merge `promises` (the proposer's own included) for a proposer at `ballot` whose chosen
    prefix ends at `commit`. Pure: the same promises always give the same result."""
    chosen_through = max([commit, *(p.commit for p in promises)])
    chosen: dict[int, Entry] = {}
    best: dict[int, Entry] = {}
    for promise in promises:
        for entry in promise.entries:
            slot = entry.index
            if slot <= commit:
                continue
            if slot <= promise.commit:
                chosen.setdefault(slot, entry)
            elif slot > chosen_through:
                held = best.get(slot)
                if held is None or entry.term > held.term:
                    best[slot] = entry
                elif entry.term == held.term:
                    # One ballot proposes one value per slot (§2.2): anything else is a bug.
                    invariant(
                        entry.data == held.data and entry.type == held.type,
                        f"two values accepted for slot {slot} in ballot {entry.term}",
                    )
            # A slot an acceptor holds unchosen but another knows chosen: the chosen one wins.
    learned: list[Entry] = []
    slot = commit + 1
    while slot <= chosen_through:
        known = chosen.get(slot)
        if known is None:
            return Recovery(learned, False, chosen_through, [], chosen_through)
        learned.append(known)
        slot += 1
    end = max(best) if best else chosen_through
    proposals: list[Entry] = []
    for slot in range(chosen_through + 1, end + 1):
        value = best.get(slot)
        if value is None:
            proposals.append(Entry(ballot, slot, EntryType.NORMAL, b""))
        else:
            proposals.append(Entry(ballot, slot, value.type, value.data))
    return Recovery(learned, True, chosen_through, proposals, end)
