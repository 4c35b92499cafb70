"""PySyncObj as a peer: three processes, each a `SyncObj` holding a `ReplDict`, on loopback ports.

PySyncObj is an embedded library with no client protocol, so the workload runs inside one of the
member processes: the one that is leader, as kvstore's embedded benchmark drives its leader.
The driver (`run`, in the benchmark process) starts the members as
`python -m benchmarks.peers.pysyncobj_peer --self ADDR --partners ADDR,ADDR --journal FILE` and
talks to each over its stdin/stdout, one JSON object per line:

    {"cmd": "status"}                      -> {"self": ADDR, "leader": ADDR | null, "ready": bool}
    {"cmd": "run", "workload": NAME, ...}  -> {"progress": N} lines, then {"result": {...}}
    {"cmd": "quit"}                        -> exits

Sequential sets call `ReplDict.set(..., sync=True)`; concurrent sets keep `concurrency` calls in
flight with `callback=` and issue the next one from each callback.

Durability: PySyncObj 0.3 has no fsync. With `journalFile` its log lives in a memory-mapped
file that is never flushed on commit, so its figures carry no fsync cost at all, unlike etcd's
and kvstore's. The table reports them as measured, and this handicap is in kvstore's disfavour.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from kvstore.bench.recorder import (
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchError,
    BenchSettings,
    OperationError,
    Progress,
    Recorder,
    WorkloadResult,
    bench_keys,
    bench_value,
    run_sequential,
)
from kvstore.testing.local_cluster import free_ports

CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout, where the member processes run."""
PYSYNCOBJ = "pysyncobj"
"""This peer's system id in the results."""
START_S_MAX = 30.0
"""How long the members may take to start, connect and agree on a leader."""
REPLY_S_MAX = 10.0
"""How long a member may take to answer a status command."""
STOP_S_MAX = 10.0
SEQUENTIAL_OPS_MAX = 200
"""A `sync=True` set waits for PySyncObj's next 100 ms heartbeat: 200 of them take ~20 s."""
PROGRESS_S = 0.1
"""How often a member running a workload reports its progress."""


def _pysyncobj() -> Any:
    # Imported by name at run time: pysyncobj is an optional bench-only extra without type hints.
    return importlib.import_module("pysyncobj")


def available() -> str | None:
    """None when pysyncobj can be imported here, else why not."""
    try:
        _pysyncobj()
    except ImportError:
        return (
            "pysyncobj is not installed (pip install pysyncobj, or pip install -e '.[bench]', "
            "or run benchmarks/install_peers.sh)"
        )
    return None


# --- the member process -------------------------------------------------------------------------


class _Member:
    """One SyncObj with a ReplDict, answering commands from stdin on stdout."""

    def __init__(self, self_address: str, partners: list[str], journal: str) -> None:
        pysyncobj = _pysyncobj()
        batteries = importlib.import_module("pysyncobj.batteries")
        self.fail_success = pysyncobj.FAIL_REASON.SUCCESS
        self.sync_error: type[Exception] = pysyncobj.SyncObjException
        self.store = batteries.ReplDict()
        self.sync_obj = pysyncobj.SyncObj(
            self_address,
            partners,
            conf=pysyncobj.SyncObjConf(journalFile=journal, fullDumpFile=journal + ".dump"),
            consumers=[self.store],
        )
        self.self_address = self_address
        self._out_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"
        with self._out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def status(self) -> dict[str, Any]:
        leader = self.sync_obj._getLeader()  # the last leader this member heard from
        return {
            "self": self.self_address,
            "leader": None if leader is None else str(leader.address),
            "ready": bool(self.sync_obj.isReady()),
        }

    def run_workload(self, request: dict[str, Any]) -> None:
        recorder = Recorder(
            ops_max=int(request["ops"]),
            errors_max=int(request["errors_max"]),
            duration_s_max=float(request["duration_s_max"]),
        )
        value = bench_value(int(request["value_bytes"]))
        keys = bench_keys(recorder.ops_max)
        timeout_s = float(request["timeout_s"])
        workload = str(request["workload"])
        concurrency = int(request["concurrency"])
        done = threading.Event()

        def report_progress() -> None:
            while not done.wait(PROGRESS_S):
                self.send({"progress": recorder.completed})

        reporter = threading.Thread(target=report_progress, daemon=True)
        reporter.start()
        try:
            if workload == PUT_SEQUENTIAL:

                def set_one(number: int) -> None:
                    try:
                        self.store.set(keys[number], value, sync=True, timeout=timeout_s)
                    except self.sync_error as error:
                        raise OperationError(f"SyncObjException: {error}") from error

                run_sequential(set_one, recorder)
            elif workload == PUT_CONCURRENT:
                self._run_callbacks(recorder, keys, value, concurrency=concurrency)
            else:
                raise BenchError(f"unknown workload {workload!r}")
        finally:
            done.set()
            reporter.join()
        result = recorder.result(PYSYNCOBJ, workload, concurrency=concurrency)
        self.send({"result": result.to_json()})

    def _run_callbacks(
        self, recorder: Recorder, keys: list[bytes], value: bytes, *, concurrency: int
    ) -> None:
        """Keep `concurrency` sets in flight; each completion callback issues the next set."""
        numbers = itertools.count()
        clock = time.perf_counter_ns
        lock = threading.Lock()
        in_flight = min(concurrency, recorder.ops_max)
        finished = threading.Event()

        def issue() -> None:
            nonlocal in_flight
            number = next(numbers)
            if number >= recorder.ops_max or recorder.should_stop():
                with lock:
                    in_flight -= 1
                    if in_flight == 0:
                        finished.set()
                return
            started = clock()

            def on_done(_result: object, error: int) -> None:
                # Runs on SyncObj's own thread once the set is applied here (or fails).
                if error == self.fail_success:
                    recorder.record(clock() - started)
                else:
                    recorder.record_error(OperationError(f"FAIL_REASON {error}"))
                issue()

            self.store.set(keys[number], value, callback=on_done)

        recorder.start()
        try:
            for _ in range(in_flight):
                issue()
            # A callback that never comes would hang the run: bound the wait by the time limit.
            finished.wait(recorder.duration_s_max + 10.0)
        finally:
            recorder.stop()

    def serve(self) -> None:
        self.send({"started": self.self_address})
        for line in sys.stdin:
            request = json.loads(line)
            command = request.get("cmd")
            if command == "status":
                self.send(self.status())
            elif command == "run":
                self.run_workload(request)
            elif command == "quit":
                break
            else:
                self.send({"error": f"unknown command {command!r}"})
        self.sync_obj.destroy()


def main(argv: list[str] | None = None) -> int:
    """Entry point of one member process."""
    parser = argparse.ArgumentParser(description="one PySyncObj member for kvstore's benchmark")
    parser.add_argument("--self", dest="self_address", required=True)
    parser.add_argument("--partners", required=True, help="comma-separated host:port")
    parser.add_argument("--journal", required=True, help="journal file path")
    args = parser.parse_args(argv)
    member = _Member(args.self_address, args.partners.split(","), args.journal)
    member.serve()
    return 0


# --- the driver ---------------------------------------------------------------------------------


class _RemoteProgress:
    """Stands in for a member's recorder in the progress bar."""

    def __init__(self, ops_max: int) -> None:
        self.ops_max = ops_max
        self.completed = 0


class _Process:
    """One member process and its line-oriented stdin/stdout."""

    def __init__(self, address: str, command: list[str], log: IO[bytes]) -> None:
        self.address = address
        # `python -m benchmarks...` finds the module from its working directory: the checkout.
        self.popen = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=CHECKOUT
        )
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.popen.stdin
        if stdin is None:
            raise BenchError("member has no stdin")
        stdin.write((json.dumps(message) + "\n").encode())
        stdin.flush()

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """The next line as JSON; BenchError if none comes within `timeout_s`."""
        stdout = self.popen.stdout
        if stdout is None:
            raise BenchError("member has no stdout")
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"pysyncobj member {self.address} did not answer in time")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                chunk = os.read(stdout.fileno(), 1 << 16)
                if not chunk:
                    raise BenchError(
                        f"pysyncobj member {self.address} exited ({self.popen.poll()})"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def stop(self) -> None:
        """Ask it to quit; kill it (by its PID) if it does not within STOP_S_MAX."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError, BenchError):
                self.send({"cmd": "quit"})
            try:
                self.popen.wait(timeout=STOP_S_MAX)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class PySyncObjCluster:
    """Three member processes with their journals in a temporary folder. A context manager."""

    def __init__(self, size: int = 3) -> None:
        self._tempdir = tempfile.TemporaryDirectory(prefix="kvstore-bench-pysyncobj-")
        self.base_dir = Path(self._tempdir.name)
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.processes: list[_Process] = []

    def start(self) -> PySyncObjCluster:
        """Start the members and wait until all are ready and agree on one leader."""
        try:
            for number, address in enumerate(self.addresses, start=1):
                partners = [a for a in self.addresses if a != address]
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.peers.pysyncobj_peer",
                    "--self",
                    address,
                    "--partners",
                    ",".join(partners),
                    "--journal",
                    str(self.base_dir / f"p{number}.journal"),
                ]
                with open(self.base_dir / f"p{number}.log", "ab") as log:
                    process = _Process(address, command, log)
                self.processes.append(process)
            for process in self.processes:
                process.receive(START_S_MAX)  # {"started": ...}
            self.wait_for_leader()
        except BaseException:
            self.close()
            raise
        return self

    def statuses(self) -> list[dict[str, Any]]:
        """Each member's status."""
        answers = []
        for process in self.processes:
            process.send({"cmd": "status"})
            answers.append(process.receive(REPLY_S_MAX))
        return answers

    def wait_for_leader(self) -> _Process:
        """The leader's process once every member is ready and names the same leader."""
        deadline = time.monotonic() + START_S_MAX
        while True:
            statuses = self.statuses()
            leaders = {status["leader"] for status in statuses}
            if all(status["ready"] for status in statuses) and len(leaders) == 1:
                (leader,) = leaders
                for process in self.processes:
                    if process.address == leader:
                        return process
            if time.monotonic() > deadline:
                raise BenchError(f"pysyncobj members did not agree on a leader: {statuses}")
            time.sleep(0.05)

    def run_workload(
        self,
        workload: str,
        settings: BenchSettings,
        progress: Progress,
        *,
        concurrency: int,
    ) -> WorkloadResult:
        """Run `workload` in the leader's process and return its figures."""
        leader = self.wait_for_leader()
        tracked = _RemoteProgress(settings.ops)
        leader.send(
            {
                "cmd": "run",
                "workload": workload,
                "ops": settings.ops,
                "concurrency": concurrency,
                "errors_max": settings.errors_max,
                "duration_s_max": settings.duration_s_max,
                "timeout_s": settings.timeout_s,
                "value_bytes": settings.value_bytes,
            }
        )
        reply_s_max = settings.duration_s_max + settings.timeout_s + 30.0
        with progress.track(f"{PYSYNCOBJ} {workload}", tracked):
            while True:
                message = leader.receive(reply_s_max)
                if "progress" in message:
                    tracked.completed = int(message["progress"])
                    continue
                if "result" not in message:
                    raise BenchError(f"pysyncobj member answered {message}")
                return WorkloadResult(**message["result"])

    def close(self) -> None:
        """Stop every member this cluster started; remove the journals."""
        for process in self.processes:
            process.stop()
        self.processes.clear()
        self._tempdir.cleanup()

    def __enter__(self) -> PySyncObjCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run(settings: BenchSettings, progress: Progress) -> list[WorkloadResult]:
    """Start three PySyncObj members, run sequential and callback-based concurrent sets, stop."""
    with PySyncObjCluster(3) as cluster:
        leader = cluster.wait_for_leader()
        progress.note(f"pysyncobj: 3 member processes, leader at {leader.address} (no fsync)")
        sequential = dataclasses.replace(settings, ops=min(settings.ops, SEQUENTIAL_OPS_MAX))
        return [
            cluster.run_workload(PUT_SEQUENTIAL, sequential, progress, concurrency=1),
            cluster.run_workload(
                PUT_CONCURRENT,
                dataclasses.replace(settings, ops=settings.concurrent_ops),
                progress,
                concurrency=settings.concurrency,
            ),
        ]


if __name__ == "__main__":
    sys.exit(main())
