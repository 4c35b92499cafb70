"""Power-loss images: a checkpointed state survives a power cut, or the member refuses to open.

A one-member node puts keys one after another, checkpointing every 40 entries and compacting
its log (64 KiB segments), under a shim that records every file operation (shim.c). From that
recording, crash images keep what was synced before a crash point plus none, all or a random
subset of the later page writes and names (image.py). Each image is reopened with the node's
open path and must either hold every acknowledged write (LMDB plus the log's replay) or raise
`CorruptionError`; an empty or older store beside a compacted log, an LMDB error, a crash or a
gap found at replay are failures. With LMDB at `sync=False` (before this design) images open
as an empty store while the log starts at 41 or later.

POWERLOSS_SEEDS=N runs N more seeds (each with its own crash points); failures print the seed.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry
from kvstore.errors import CorruptionError
from kvstore.storage.state_machine import CHECKPOINT_FILE, StateMachine
from tests.powerloss import harness, workload
from tests.powerloss.image import CHOICES, Recording

BASE_SEEDS = [11, 22, 33]
POINTS_PER_SEED = 10
WRITES = 300


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    library = harness.compile_shim(tmp_path_factory.mktemp("shim"))
    if library is None:
        pytest.skip("power-loss images need gcc to build the recording shim (tests/powerloss)")
    return library


@pytest.fixture(scope="module")
def recording(shim: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    work = tmp_path_factory.mktemp("powerloss")
    yield harness.record(shim, work / "root", work / "ops.log", WRITES)


def _seeds() -> list[int]:
    extra = int(os.environ.get("POWERLOSS_SEEDS", "0"))
    return BASE_SEEDS + [random.randrange(1 << 30) for _ in range(extra)]


@pytest.mark.slow
def test_images_hold_every_acknowledged_write_or_refuse(
    recording: Recording, tmp_path: Path
) -> None:
    seeds = _seeds()
    outcomes = harness.check_images(recording, seeds, POINTS_PER_SEED, tmp_path)
    violations = [o for o in outcomes if o.outcome == "violation"]
    assert not violations, f"{len(violations)} of {len(outcomes)} images (seeds {seeds}):\n" + (
        "\n".join(
            f"seed {o.seed} crash at record {o.crash_at} ({o.choice}): {o.detail}"
            for o in violations[:10]
        )
    )
    counts = Counter(o.outcome for o in outcomes)
    # The design keeps every image openable: a refusal here would be a needless outage.
    refused = [o for o in outcomes if o.outcome != "ok"]
    assert not refused, f"seeds {seeds}: {counts}:\n" + "\n".join(
        f"seed {o.seed} crash at record {o.crash_at} ({o.choice}): {o.detail}" for o in refused[:5]
    )
    # The workload must have compacted the log, or the images prove nothing.
    starts = [int(m.group(1)) for o in outcomes if (m := re.search(r"log (\d+)\.\.", o.detail))]
    assert max(starts) > 2 * workload.OPTIONS.checkpoint_entries, starts


def _run_under_shim(shim: Path, root: Path, log: Path, code: str) -> Recording:
    """Run a small Python program under the shim, in `root`."""
    import subprocess
    import sys

    root.mkdir()
    env = {**os.environ, "LD_PRELOAD": str(shim), "POWERLOSS_DIR": str(root.resolve())}
    env["POWERLOSS_LOG"] = str(log)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=60)
    return Recording(log, root.resolve())


def test_image_model_keeps_synced_data_and_any_mix_of_unsynced_pages(
    shim: Path, tmp_path: Path
) -> None:
    """The model itself: fsynced pages and names stay, later ones may or may not."""
    code = """
import os
fd = os.open("a", os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"1" * 4096 * 4)
os.fsync(fd)
d = os.open(".", os.O_RDONLY); os.fsync(d)
os.pwrite(fd, b"2" * 4096 * 2, 4096)       # pages 1 and 2, never synced
os.close(fd)
fd = os.open("b", os.O_RDWR | os.O_CREAT, 0o600)  # name never synced
os.write(fd, b"b"); os.fsync(fd); os.close(fd)
"""
    recording = _run_under_shim(shim, tmp_path / "root", tmp_path / "ops.log", code)
    end = len(recording.records)
    rng = random.Random(5)
    none, everything = tmp_path / "none", tmp_path / "all"
    recording.image(end, "none", rng, none)
    recording.image(end, "all", rng, everything)
    assert (none / "a").read_bytes() == b"1" * 4096 * 4
    assert not (none / "b").exists()
    assert (everything / "a").read_bytes() == b"1" * 4096 + b"2" * 8192 + b"1" * 4096
    assert (everything / "b").read_bytes() == b"b"
    mixes = set()
    for k in range(20):
        image = tmp_path / f"random{k}"
        recording.image(end, "random", rng, image)
        content = (image / "a").read_bytes()
        assert content[:4096] == b"1" * 4096 and content[3 * 4096 :] == b"1" * 4096
        mixes.add((content[4096], content[2 * 4096]))
    assert mixes == {
        (ord("1"), ord("1")),
        (ord("1"), ord("2")),
        (ord("2"), ord("1")),
        (ord("2"), ord("2")),
    }, mixes
    # Just before the fsync of "a" ended, none of its data was durable yet.
    before = next(r.seq for r in recording.records if r.op == 12)  # the first SYNC_END
    early = tmp_path / "early"
    recording.image(before, "none", rng, early)
    assert not (early / "a").exists() or (early / "a").read_bytes() == b""
    assert set(CHOICES) == {"none", "all", "random"}


def _entries(first: int, last: int) -> list[Entry]:
    """A session registered at `first` (its id), then puts under it through `last`."""
    from kvstore.storage.commands import encode_put, encode_register

    return [Entry(1, first, data=encode_register(1))] + [
        Entry(1, i, data=encode_put(first, i - first, b"k%d" % i, b"v%d" % i))
        for i in range(first + 1, last + 1)
    ]


def test_state_older_than_its_checkpoint_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateMachine(state) as sm:
        sm.apply(_entries(1, 50))
        assert sm.checkpoint() == 50
    # The data file's contents were lost, the sidecar survived (what a power cut did before).
    (state / "data.mdb").unlink()
    with pytest.raises(CorruptionError, match=r"checkpoint at applied index 50"):
        StateMachine(state)
    assert (state / CHECKPOINT_FILE).exists()


def test_new_state_opens_empty_and_records_a_checkpoint(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "state") as sm:
        assert sm.applied_index() == 0
    assert (tmp_path / "state" / CHECKPOINT_FILE).exists()
    with StateMachine(tmp_path / "state") as sm:  # and reopens
        assert sm.applied_index() == 0


def test_node_refuses_a_state_older_than_its_compacted_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "n1"
    with workload.open_node(data_dir) as node:
        for number in range(130):
            node.put(workload.key(number), workload.value(number))

        def compacted() -> bool:
            return node._runtime._wal is not None and node._runtime._wal.first_index() > 1

        from kvstore.testing.local_cluster import wait_until

        wait_until(compacted, timeout_s=15.0, what="a compacted log")
    # The whole state directory is gone (e.g. its name was never made durable).
    for path in sorted((data_dir / "state").iterdir()):
        path.unlink()
    (data_dir / "state").rmdir()
    with pytest.raises(
        CorruptionError,
        match=r"state at applied index 0 is older than the "
        r"log, which starts at \d+: the state was lost",
    ):
        workload.open_node(data_dir).start()
