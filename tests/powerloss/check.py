"""Reopen crash images with the product's open path; one JSON line per image on stdout.

Run as `python -m tests.powerloss.check JOBS.json`, JOBS being a list of
`{"image": dir, "acked": [write numbers]}`. For each image: open it as `Node._open_storage` does
at start (the redo log, LMDB, and the checks between them), replay the log above the applied
index into LMDB as the restarted node would, then read every acknowledged key. Outcomes:

- `ok`: it opened and every acknowledged write is there;
- `refused`: the open raised `CorruptionError` (allowed: the member must be restored);
- `violation`: anything else (another error, during open or replay, or a lost write).

A crash of this process (LMDB reading garbage can crash it) is seen by the caller as a missing
line and is a violation too.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from kvstore.errors import CorruptionError
from tests.powerloss.workload import key, open_node, value


def check(image: Path, acked: list[int]) -> dict[str, object]:
    """The outcome of reopening one image."""
    node = open_node(image / "n1")
    try:
        try:
            node._runtime.open_storage()
        except CorruptionError as error:
            return {"outcome": "refused", "detail": str(error)}
        sm, wal = node._runtime._sm, node._runtime._wal
        assert sm is not None and wal is not None
        applied, first, last = sm.applied_index(), wal.first_index(), wal.last_index()
        where = f"applied {applied}, log {first}..{last}"
        try:
            if applied < last:
                sm.apply(wal.entries(applied + 1, last + 1))
        except Exception as error:  # a gap or a damaged state found only now
            return {"outcome": "violation", "detail": f"{where}: {type(error).__name__}: {error}"}
        for number in acked:
            if sm.get(key(number)) != value(number):
                return {
                    "outcome": "violation",
                    "detail": f"acknowledged write {number} is lost ({where})",
                }
        return {"outcome": "ok", "detail": where}
    except Exception as error:  # anything but a refusal at open breaks the rule
        return {
            "outcome": "violation",
            "detail": f"{type(error).__name__}: {error}",
            "trace": traceback.format_exc(limit=4),
        }
    finally:
        if node._runtime._wal is not None:
            node._runtime._wal.close()
        if node._runtime._sm is not None:
            node._runtime._sm.close()


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for job in jobs:
        print(json.dumps({"image": job["image"], **check(Path(job["image"]), job["acked"])}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
