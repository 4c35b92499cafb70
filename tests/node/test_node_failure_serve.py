"""A lingering `serve` is no more: a real `kvstore serve` process whose redo log fails (a full
disk at fsync, EMFILE while writing) exits non-zero within a few seconds, with the cause on
stderr in words ("ENOSPC 28 (No space left on device)"), instead of closing its listener and
living on.

The fault is armed through the log's own failure injection (`FaultSpec`), inside the child:
a small wrapper runs the real `kvstore.cli.main` with a log that fails at the first batch
holding a chosen key, so the member is healthy (elected, serving) until the client writes it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import kvstore
from kvstore.testing.local_cluster import free_ports, wait_until

EXIT_S = 5.0
"""A failed member must exit within this (it looks every 0.1 s; the rest is its shutdown)."""

START_S = 30.0

TRIGGER = b"fail-the-log-here"

WRAPPER = """
import errno, sys
from kvstore.node import runtime as node
from kvstore.cli import main
from kvstore.storage.wal import FaultSpec, WriteAheadLog

KIND, CODE = sys.argv[1], getattr(errno, sys.argv[2])

class FailingLog(WriteAheadLog):
    def append(self, entries, hard_state=None):
        if any(TRIGGER in entry.data for entry in entries):
            self.inject_fault(FaultSpec(KIND, error=CODE))
        return super().append(entries, hard_state)

node.WriteAheadLog = FailingLog
sys.exit(main(sys.argv[3:]))
""".replace("TRIGGER", repr(TRIGGER))


def _serve(tmp_path: Path, kind: str, code: str) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    command = [sys.executable, "-c", WRAPPER, kind, code, "serve", "--id", "n1"]
    command += ["--data-dir", str(tmp_path / "n1"), "--peers", f"n1={address}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once it listens (or EOF if it died)
    assert b"listening" in line, process.communicate(timeout=START_S)
    return process, address


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("sync", "ENOSPC", "ENOSPC 28 (No space left on device)"),
        ("write", "EMFILE", "EMFILE 24 (Too many open files)"),
    ],
)
def test_serve_exits_non_zero_with_the_cause_after_a_log_failure(
    tmp_path: Path, kind: str, code: str, reason: str
) -> None:
    process, address = _serve(tmp_path, kind, code)
    try:
        with kvstore.Client([address], timeout_s=10) as client:
            client.put(b"healthy", b"1", timeout_s=10)
            assert client.get(b"healthy") == b"1"
            with pytest.raises(kvstore.KVStoreError):
                client.put(TRIGGER, b"1", timeout_s=3)
        failed_at = time.monotonic()
        wait_until(lambda: process.poll() is not None, timeout_s=EXIT_S, what="serve to exit")
        exit_s = time.monotonic() - failed_at
        _, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = stderr.decode(errors="replace")
    assert process.returncode == 3, text  # EXIT_NODE_FAILED
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: NodeFailedError: node n1 failed and stopped serving"), text
    assert reason in last
    assert "Traceback" not in text
    print(f"serve exited {exit_s:.2f} s after the failed write")
