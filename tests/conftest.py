"""Shared pytest options.

`--rewrite` regenerates golden outputs (the datadriven interaction scripts) instead of comparing
against them: review the diff before committing it.
"""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite golden test outputs (datadriven scripts) instead of comparing",
    )


@pytest.fixture
def rewrite(request: pytest.FixtureRequest) -> bool:
    """Whether `--rewrite` was given."""
    return bool(request.config.getoption("--rewrite"))


# --- seeds: every test that draws randomness takes its seed from here ---------------------------
#
# A test that draws randomness asks for the `seed` fixture (or calls `seed_for()` when it needs
# one outside a fixture) and builds its own `random.Random(seed)`. The seed is fixed by default
# (derived from the test's id, so each test and each parametrisation has its own, and a run
# replays exactly); KVSTORE_TEST_SEED=N runs every test with N instead, to replay a failure or
# to explore new seeds. A failing test that took a seed says which in its report.

SEED_ENV = "KVSTORE_TEST_SEED"
_SEED_KEY = pytest.StashKey[int]()


def seed_for(nodeid: str) -> int:
    """The seed of the test `nodeid`: KVSTORE_TEST_SEED if set, else fixed per test."""
    value = os.environ.get(SEED_ENV)
    if value:
        return int(value)
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed (see `seed_for`); reported with the failure if the test fails."""
    value = seed_for(request.node.nodeid)
    request.node.stash[_SEED_KEY] = value
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    value = item.stash.get(_SEED_KEY, None)
    if value is not None and report.failed:
        report.sections.append(
            (
                "seed",
                f"this test drew its randomness from seed {value}: replay it with "
                f"{SEED_ENV}={value} pytest '{item.nodeid}'",
            )
        )
    return report


# Hypothesis draws its own examples: derandomised, so that a run replays exactly like the seeded
# tests (its examples come from each test's own code, not from a fresh seed per run), and a
# failure prints the `@reproduce_failure` blob that replays it.
settings.register_profile("kvstore", derandomize=True, print_blob=True)
settings.load_profile("kvstore")
