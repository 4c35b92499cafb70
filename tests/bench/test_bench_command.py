"""`kvstore bench` as a user runs it: kvstore only, its figures as JSON, the comparison named.

The command measures a local 3-member cluster through the client and through an embedded
`kvstore.Node`, then a kill -9 failover; etcd and PySyncObj are the business of
`benchmarks/compare.py` in the source checkout, which the command points at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.bench.recorder import FAILOVER, WORKLOADS
from kvstore.bench.workloads import KVSTORE, KVSTORE_EMBEDDED

RUN_TIMEOUT_S = 180.0
"""8 s here at 20 operations per workload; the limit is for a loaded machine."""


@pytest.mark.slow
def test_bench_measures_kvstore_only_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = ["bench", "--ops", "20", "--concurrency", "4", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "kvstore", *command],
        cwd=tmp_path,  # outside the checkout: nothing of benchmarks/ can be found
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "python -m benchmarks.compare" in done.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["ops"] == 20
    results = report["results"]
    assert {r["system"] for r in results} == {KVSTORE, KVSTORE_EMBEDDED}
    client = {r["workload"]: r for r in results if r["system"] == KVSTORE}
    embedded = {r["workload"]: r for r in results if r["system"] == KVSTORE_EMBEDDED}
    assert list(client) == list(WORKLOADS)
    assert list(embedded) == [w for w in WORKLOADS if w != FAILOVER]
    for result in [*client.values(), *embedded.values()]:
        assert result["ops"] > 0 and result["errors"] == 0, result
