"""Shared pytest options.

`--rewrite` regenerates golden outputs (the datadriven interaction scripts) instead of comparing
against them: review the diff before committing it.
"""

from __future__ import annotations

import pytest


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
