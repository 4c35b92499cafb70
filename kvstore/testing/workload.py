"""The workload runner: concurrent clients doing a random mix of put/get/cas/delete.

Each logical client is a thread with its own connection (its own `kvstore.Client`, so its own
sessions), issuing one call at a time over a small key space so that calls collide. Every call is
recorded with its invocation and completion times and its result in a `HistoryWriter`, ready for
the linearizability checker.

Every written value is unique (client number and sequence number), which makes histories easy to
check and failures easy to read. A cas expects the value its client last saw for that key.

Outcomes (see `kvstore.testing.history`): a call that returned is "ok"; one that raised
`UnavailableError` (which promises nothing was done) is "fail"; any other kvstore or socket error
(a timeout, a redirect it could not follow...) leaves the outcome "unknown".

Run it as a command (one process, e.g. inside a network namespace):

    python -m kvstore.testing.workload --endpoints H:P,H:P --seconds 10 --history out.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.errors import KVStoreError, UnavailableError
from kvstore.options import Consistency
from kvstore.testing.history import HistoryWriter, Operation, Result

JOIN_GRACE_S = 10.0
"""How long past its own timeout a client thread may take to notice a stop."""


class KVClient(Protocol):
    """What the workload needs of a client (`kvstore.Client` has it)."""

    def put(self, key: bytes, value: bytes, *, timeout_s: float = ...) -> None: ...

    def get(
        self, key: bytes, *, consistency: Consistency = ..., timeout_s: float = ...
    ) -> bytes | None: ...

    def delete(self, key: bytes, *, timeout_s: float = ...) -> bool: ...

    def cas(
        self, key: bytes, expected: bytes | None, new: bytes | None, *, timeout_s: float = ...
    ) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """How many clients, over which keys, doing what."""

    clients: int = 5
    keys: int = 8
    key_prefix: bytes = b"torture/"
    mix: Mapping[str, float] = field(
        default_factory=lambda: {"put": 0.3, "get": 0.4, "cas": 0.2, "delete": 0.1}
    )
    """Relative weights of the operation kinds."""
    consistency: Consistency = "linearizable"
    """Read level of every get: "linearizable" or "lease" (stale reads are not checkable)."""
    timeout_s: float = 1.0
    """Per-call timeout; a call that runs out has an unknown outcome."""
    think_s: float = 0.0
    """Pause between one client's calls (pacing, not synchronisation)."""
    ops_max: int = 1_000_000
    """Calls in all, across clients, after which the clients stop by themselves."""

    def key_names(self) -> list[bytes]:
        """The key space."""
        return [self.key_prefix + b"k%03d" % number for number in range(self.keys)]


class Workload:
    """Runs `config.clients` client threads until `stop()`; records into `history`.

    `client_factory(number)` makes the client for logical client `number` (it is closed when
    that thread ends). Use as a context manager, or `start()` / `stop()`.
    """

    def __init__(
        self,
        client_factory: Callable[[int], KVClient],
        config: WorkloadConfig,
        history: HistoryWriter,
        *,
        seed: int,
    ) -> None:
        if config.clients < 1 or config.keys < 1:
            raise ValueError("a workload needs at least one client and one key")
        if config.consistency not in ("linearizable", "lease"):
            raise ValueError("only linearizable and lease reads can be checked")
        self.config = config
        self.history = history
        self.seed = seed
        self._factory = client_factory
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._op_ids = itertools.count()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """"<kind> <outcome>" -> how many calls ended so."""
        self.errors: list[BaseException] = []
        """Unexpected exceptions (bugs in the workload or the client), re-raised by stop()."""

    def start(self) -> Workload:
        """Start the client threads."""
        for number in range(self.config.clients):
            thread = threading.Thread(
                target=self._run_client, args=(number,), name=f"workload-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every client after its current call and wait for them; re-raise a bug."""
        self._stop.set()
        deadline = time.monotonic() + self.config.timeout_s + JOIN_GRACE_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"workload clients did not stop: {', '.join(alive)}")
        if self.errors:
            raise RuntimeError(f"workload client failed: {self.errors[0]!r}") from self.errors[0]

    def run_for(self, seconds: float) -> None:
        """Let the clients run for `seconds` (less if they reach `ops_max`), then stop them."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop()

    @property
    def running(self) -> bool:
        """True while some client thread runs."""
        return any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def summary(self) -> str:
        """e.g. "1234 calls: 900 ok, 20 failed, 14 unknown"."""
        outcomes: Counter[str] = Counter()
        for label, count in self.counts.items():
            outcomes[label.split()[1]] += count
        total = sum(outcomes.values())
        return (
            f"{total} calls: {outcomes['ok']} ok, {outcomes['fail']} failed, "
            f"{outcomes['unknown']} unknown"
        )

    # --- one client ---------------------------------------------------------------------------

    def _run_client(self, number: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + number)
        keys = self.config.key_names()
        kinds = list(self.config.mix)
        weights = [self.config.mix[kind] for kind in kinds]
        last_seen: dict[bytes, bytes | None] = {}
        client: KVClient | None = None
        try:
            client = self._factory(number)
            for sequence in itertools.count():
                if self._stop.is_set():
                    break
                op_id = next(self._op_ids)
                if op_id >= self.config.ops_max:
                    break
                key = rng.choice(keys)
                kind = rng.choices(kinds, weights)[0]
                value = b"c%d-%d" % (number, sequence)
                self._call(client, number, op_id, kind, key, value, rng, last_seen)
                if self.config.think_s:
                    self._stop.wait(self.config.think_s)
        except BaseException as exc:  # a bug: keep it for stop() to re-raise
            with self._lock:
                self.errors.append(exc)
        finally:
            if client is not None:
                try:
                    client.close()
                except (KVStoreError, OSError):
                    pass

    def _call(
        self,
        client: KVClient,
        number: int,
        op_id: int,
        kind: str,
        key: bytes,
        value: bytes,
        rng: random.Random,
        last_seen: dict[bytes, bytes | None],
    ) -> None:
        timeout_s = self.config.timeout_s
        consistency = self.config.consistency if kind == "get" else None
        written: bytes | None = None
        expected: bytes | None = None
        if kind == "put":
            written = value
        elif kind == "cas":
            expected = last_seen.get(key)
            written = None if rng.random() < 0.15 else value  # sometimes a cas that deletes
        result: Result = None
        error: str | None = None
        invoke_ns = time.monotonic_ns()
        try:
            if kind == "put":
                client.put(key, value, timeout_s=timeout_s)
                last_seen[key] = value
            elif kind == "get":
                result = client.get(key, consistency=self.config.consistency, timeout_s=timeout_s)
                last_seen[key] = result
            elif kind == "delete":
                result = client.delete(key, timeout_s=timeout_s)
                last_seen[key] = None
            else:
                result = client.cas(key, expected, written, timeout_s=timeout_s)
                if result:
                    last_seen[key] = written
            outcome = "ok"
        except UnavailableError as exc:
            outcome, error = "fail", type(exc).__name__
        except (KVStoreError, OSError) as exc:
            outcome, error = "unknown", type(exc).__name__
        complete_ns = time.monotonic_ns() if outcome != "unknown" else None
        self.history.record(
            Operation(
                op_id=op_id,
                client_id=number,
                kind=kind,
                key=key,
                value=written,
                expected=expected,
                invoke_ns=invoke_ns,
                complete_ns=complete_ns,
                outcome=outcome,
                result=result if outcome == "ok" else None,
                error=error,
                consistency=consistency,
            )
        )
        with self._lock:
            self.counts[f"{kind} {outcome}"] += 1


def final_reads(
    client: KVClient,
    config: WorkloadConfig,
    history: HistoryWriter,
    *,
    client_id: int,
    timeout_s: float = 5.0,
    attempts: int = 20,
) -> dict[bytes, bytes | None]:
    """Read every key linearizably, after the workload stopped, into the history.

    These reads come after every other call, so the checker proves with them that no
    acknowledged write was lost. A read is retried (each try is recorded) until it answers.
    """
    values: dict[bytes, bytes | None] = {}
    op_ids = itertools.count(max((op.op_id for op in history.operations), default=-1) + 1)

    def record(
        key: bytes,
        invoke_ns: int,
        complete_ns: int | None,
        value: bytes | None = None,
        error: BaseException | None = None,
    ) -> None:
        history.record(
            Operation(
                op_id=next(op_ids),
                client_id=client_id,
                kind="get",
                key=key,
                invoke_ns=invoke_ns,
                complete_ns=complete_ns,
                outcome="ok" if error is None else "unknown",
                result=value,
                error=None if error is None else type(error).__name__,
                consistency="linearizable",
            )
        )

    for key in config.key_names():
        for attempt in range(attempts):
            invoke_ns = time.monotonic_ns()
            try:
                value = client.get(key, consistency="linearizable", timeout_s=timeout_s)
            except (KVStoreError, OSError) as exc:
                record(key, invoke_ns, None, error=exc)
                if attempt == attempts - 1:
                    raise
                continue
            record(key, invoke_ns, time.monotonic_ns(), value)
            values[key] = value
            break
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvstore.testing.workload`: run a workload against a cluster for a while."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--endpoints", required=True, help="host:port,host:port,...")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--history", required=True, help="JSON-lines file to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--consistency", default="linearizable", choices=("linearizable", "lease"))
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    from kvstore.client.client import Client

    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    config = WorkloadConfig(
        clients=args.clients,
        keys=args.keys,
        consistency=args.consistency,
        timeout_s=args.timeout,
    )

    def factory(number: int) -> KVClient:
        return Client(endpoints, balancer="random", timeout_s=args.timeout)

    with HistoryWriter(args.history) as history:
        workload = Workload(factory, config, history, seed=args.seed).start()
        workload.run_for(args.seconds)
        print(workload.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
