"""The `store` fixture the coordination tests run against."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.coordination.fake_store import FakeStore


@pytest.fixture(params=["fake"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A store with the §2b coordination methods: the in-memory fake (a started single-member
    `kvstore.Node`, or a `kvstore.Client` to one, is one more parameter here)."""
    if request.param == "fake":
        yield FakeStore()
