"""Datadriven interaction scripts: `testdata/*.txt`, one Raft scenario per file.

If a script fails, rerun with `pytest --rewrite tests/raft/interaction` and read the diff:
commit the new golden output only if you understand what changed and it is right by the paper.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.raft.interaction.datadriven import run_file
from tests.raft.interaction.env import InteractionEnv

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_interaction(path: Path, rewrite: bool) -> None:
    env = InteractionEnv()
    run_file(path, env.handle, rewrite=rewrite)
