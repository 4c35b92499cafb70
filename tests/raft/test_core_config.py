"""`Config.validate()`: every bad setting is refused with a message naming it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvstore.consensus.config import Config, apply_conf_change
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState
from kvstore.errors import InvalidArgumentError
from kvstore.raft.core import RaftCore


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"node_id": ""}, "node_id"),
        ({"initial_voters": ("a", "a")}, "duplicates"),
        ({"initial_voters": ("b", "c")}, "must include this node"),
        ({"initial_voters": ("a", "")}, "initial_voters"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"election_ticks": 3, "heartbeat_ticks": 3}, "election_ticks (3) must be greater"),
        ({"lease_ticks": 10}, "lease_ticks (10)"),
        ({"lease_ticks": 0}, "lease_ticks (0)"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_inflight_bytes": -1}, "max_inflight_bytes"),
        ({"max_append_bytes": 0}, "max_append_bytes"),
        ({"max_uncommitted_bytes": 0}, "max_uncommitted_bytes"),
        ({"max_committed_bytes_per_ready": 0}, "max_committed_bytes_per_ready"),
        ({"max_pending_reads": 0}, "max_pending_reads"),
        ({"max_pending_reads": True}, "max_pending_reads"),
        ({"applied": -1}, "applied"),
    ],
)
def test_validate_names_the_bad_setting(options: dict[str, Any], message: str) -> None:
    """Each out-of-range setting raises InvalidArgumentError whose message names it."""
    options.setdefault("node_id", "a")
    config = Config(**options)
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.validate()


def test_defaults_are_valid_and_lease_is_shorter_than_election() -> None:
    """The defaults pass; the default lease is election_ticks - 2, and 0 without check-quorum."""
    config = Config("a", ("a", "b", "c"))
    config.validate()
    assert config.effective_lease_ticks == config.election_ticks - 2
    assert Config("a", check_quorum=False).effective_lease_ticks == 0


def test_core_refuses_an_invalid_config() -> None:
    """The core validates its config before anything else."""
    with pytest.raises(InvalidArgumentError):
        RaftCore(Config("a", election_ticks=1), MemoryLogView(), random.Random(0))


def test_apply_conf_change_is_pure_and_sorted() -> None:
    """Thesis §4.1: single-server changes, computed the same way on every member."""
    conf = ConfState(("a", "b"), ())
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    assert conf == ConfState(("a", "b"), ("d",))
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_VOTER, "d"))
    assert conf == ConfState(("a", "b", "d"), ())
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_LEARNER, "a"))
    assert conf == ConfState(("b", "d"), ("a",))
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.REMOVE, "a"))
    assert conf == ConfState(("b", "d"), ())
    assert apply_conf_change(conf, ConfChange(ConfChangeType.REMOVE, "zz")) == conf
