"""Torture schedules: a workload against a real cluster while the nemesis injects faults.

Each schedule starts a fresh cluster of `kvstore serve` processes, runs concurrent clients that
record a history, injects one family of faults for `fault_s` seconds (fault, hold, heal, quiet,
and again), heals everything, reads every key back, and then checks:

- the history, final reads included, is linearizable (so no acknowledged write was lost);
- after every heal the cluster served a write and a linearizable read again within
  `RECOVERY_LIMIT_S` (each recovery time is measured and reported);
- what the schedule itself promises (a torn tail is cut and the member rejoins; a corrupted
  member refuses to start with `CorruptionError` naming file and offset, the others keep
  serving, and wiping its data directory lets it rejoin).

A run prints one verdict line per schedule. Failing runs keep their history, the nemesis's log
and the members' logs in `failures_dir/<schedule>[-paxos]-<seed>/`.

Every schedule runs on either protocol (`consensus="raft"` or `"paxos"`, passed to every
member's `serve --consensus`), except those that change the membership (`Schedule.membership`):
Paxos runs a fixed configuration and refuses membership changes, so they are skipped there.

The long soak (`make torture SEED=... MINUTES=...`):

    python -m kvstore.testing.torture --seed N --minutes M [--failures-dir DIR] [--consensus paxos]
        [--tls]

With `--tls` every cluster serves mutual TLS (certificates made by `LocalCluster(tls=True)`),
and the workload's clients connect with a client certificate.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.errors import KVStoreError
from kvstore.options import Consistency, Status
from kvstore.testing.history import HistoryWriter, write_history
from kvstore.testing.linearizability import CheckResult, check_history
from kvstore.testing.local_cluster import LocalCluster, wait_until
from kvstore.testing.nemesis import (
    DiskFault,
    Nemesis,
    flip_middle_byte,
    installed_snapshot,
    tear_tail,
    wait_serving,
    wipe_data_dir,
    zero_tail_sector,
)
from kvstore.testing.netns import NetnsLab, probe, probe_netem
from kvstore.testing.proxy import PeerMesh, ProxyNetwork, delay
from kvstore.testing.workload import Workload, WorkloadConfig, final_reads

RECOVERY_LIMIT_S = 30.0
"""After a heal, the cluster must serve a write and a linearizable read within this."""
CATCH_UP_LIMIT_S = 60.0
"""A restarted or re-created member must apply what the leader committed within this."""
CALL_TIMEOUT_S = 1.0
"""Per-call timeout of the workload and the probes."""
WARM_UP_S = 0.5
TAIL_S = 1.0
"""The workload keeps running this long after the last heal."""
FIXED_CONFIGURATION = frozenset({"paxos"})
"""Protocols that refuse membership changes: schedules that need them are skipped there."""


class SkipSchedule(Exception):
    """The schedule cannot run on this machine (e.g. no network namespaces); says why."""


@dataclass
class Context:
    """What a schedule's fault function works with."""

    cluster: LocalCluster
    nemesis: Nemesis
    rng: random.Random
    deadline: float
    probe: Callable[[], object]
    client: object
    """The probe `kvstore.Client` (status queries)."""
    recovery_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Broken promises found during the faults (besides the history check)."""
    notes: list[str] = field(default_factory=list)

    def time_left(self) -> float:
        """Seconds until the fault phase ends."""
        return self.deadline - time.monotonic()

    def hold(self, low_s: float = 0.5, high_s: float = 2.0) -> None:
        """Let a fault (or a quiet period) last a random while, never past the deadline."""
        duration_s = self.rng.uniform(low_s, high_s)
        time.sleep(max(0.0, min(duration_s, self.time_left())))  # pacing, not synchronisation

    def leader(self) -> str | None:
        """The member that says it is leader (paused and killed members are not asked)."""
        skip = self.nemesis.paused | self.nemesis.killed
        for member in self.cluster:
            if member.node_id in skip or not member.running:
                continue
            try:
                status = self.client.status(member.address, timeout_s=0.5)  # type: ignore[attr-defined]
            except (KVStoreError, OSError):
                continue
            if status.role == "leader":
                return str(status.node_id)
        return None

    def status(self, node_id: str, timeout_s: float = 0.5) -> Status | None:
        """That member's status, or None if it does not answer."""
        member = self.cluster.members[node_id]
        try:
            status: Status = self.client.status(member.address, timeout_s=timeout_s)  # type: ignore[attr-defined]
        except (KVStoreError, OSError):
            return None
        return status

    def heal(self) -> None:
        """Heal everything, then measure how long until the cluster serves again."""
        self.nemesis.heal_all()
        try:
            self.recovery_s.append(wait_serving(self.probe, timeout_s=RECOVERY_LIMIT_S))
        except TimeoutError as exc:
            self.problems.append(f"not serving {RECOVERY_LIMIT_S:.0f}s after a heal: {exc}")
            raise

    def cycles(
        self, inject: Callable[[], None], *, hold_s: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        """Repeat fault, hold, heal, quiet until the fault phase ends (at least once)."""
        while True:
            inject()
            self.hold(*hold_s)
            self.heal()
            if self.time_left() <= 0:
                return
            self.hold(0.3, 1.0)
            if self.time_left() <= 0:
                return

    def wait_caught_up(self, node_id: str) -> float:
        """Wait until `node_id` applied what the leader had committed; return the seconds."""
        started = time.monotonic()

        def target() -> int | None:
            leader = self.leader()
            status = self.status(leader) if leader else None
            return status.commit_index if status else None

        commit = wait_until(target, timeout_s=CATCH_UP_LIMIT_S, what="a leader's commit index")
        if commit is None:  # wait_until returns only a truthy value
            raise TimeoutError("no commit index")

        def caught_up() -> bool:
            status = self.status(node_id)
            return status is not None and status.applied_index >= commit

        try:
            wait_until(
                caught_up,
                timeout_s=CATCH_UP_LIMIT_S,
                interval_s=0.1,
                what=f"{node_id} to apply up to {commit}",
            )
        except TimeoutError as exc:
            statuses = {n: self.status(n) for n in self.cluster.members}
            shown = ", ".join(
                f"{n}: {s.role} term {s.term} commit {s.commit_index} applied {s.applied_index}"
                if s is not None
                else f"{n}: no answer"
                for n, s in statuses.items()
            )
            raise TimeoutError(f"{exc} ({shown})") from None
        return time.monotonic() - started


@dataclass(frozen=True)
class Schedule:
    """A family of faults and the cluster it runs on."""

    name: str
    inject: Callable[[Context], None]
    description: str
    nodes: int = 3
    network: str = "direct"
    """"direct" (members dial each other), "proxy" (through a PeerMesh) or "netns"."""
    consistency: Consistency = "linearizable"
    serve_args: tuple[str, ...] = ()
    """Extra `kvstore serve` arguments for every member."""
    membership: bool = False
    """Whether the schedule removes and adds members (not possible with a fixed configuration,
    so it is skipped on those protocols)."""

    def skip_reason(self, consensus: str) -> str | None:
        """Why this schedule cannot run on `consensus`, or None if it can."""
        if self.membership and consensus in FIXED_CONFIGURATION:
            return (
                f"consensus={consensus} runs a fixed configuration and refuses membership "
                f"changes, which this schedule's recovery needs (remove, wipe, add back)"
            )
        return None


# --- the schedules ------------------------------------------------------------------------------


def _kill_one(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.kill([ctx.rng.choice(ctx.nemesis.node_ids)]))


def _kill_leader(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.kill([ctx.nemesis.leader_or_any()]))


def _kill_majority(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.kill(ctx.nemesis.majority(ctx.leader())))


def _kill_all(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.kill(ctx.nemesis.node_ids))


def _pause_leader(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.pause([ctx.nemesis.leader_or_any()]))


def _pause_one(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.pause([ctx.rng.choice(ctx.nemesis.node_ids)]))


def _partition_minority(ctx: Context) -> None:
    def inject() -> None:
        nodes = ctx.nemesis.node_ids
        ctx.rng.shuffle(nodes)
        minority = nodes[: (len(nodes) - 1) // 2]
        ctx.nemesis.partition(minority, nodes[len(minority) :])

    ctx.cycles(inject)


def _isolate_leader(ctx: Context) -> None:
    ctx.cycles(lambda: ctx.nemesis.isolate(ctx.nemesis.leader_or_any()))


def _bridge(ctx: Context) -> None:
    ctx.cycles(ctx.nemesis.bridge)


def _one_way(ctx: Context) -> None:
    def inject() -> None:
        leader = ctx.nemesis.leader_or_any()
        others = [n for n in ctx.nemesis.node_ids if n != leader]
        if ctx.rng.random() < 0.5:
            ctx.nemesis.one_way(leader, others)  # the leader shouts into the void
        else:
            for other in others:  # the leader hears nobody
                ctx.nemesis.one_way(other, [leader])

    ctx.cycles(inject)


def _slow_network(ctx: Context) -> None:
    ctx.cycles(
        lambda: ctx.nemesis.slow_links(
            delay(ctx.rng.uniform(0.02, 0.2), jitter_s=ctx.rng.uniform(0.0, 0.1))
        )
    )


def _torn_tail(ctx: Context) -> None:
    def inject() -> None:
        node_id = ctx.rng.choice(ctx.nemesis.node_ids)
        ctx.nemesis.kill([node_id])
        fault = ctx.rng.choice([tear_tail, zero_tail_sector])
        damage = fault(ctx.cluster.members[node_id].data_dir, ctx.rng)
        ctx.nemesis.record(damage.kind, [node_id], f"{damage.path.name} at {damage.offset}")
        # heal() restarts it: it must cut the partial record, start, and catch up.
        ctx.heal()
        log = _read_log(ctx.cluster, node_id)
        if "torn tail" not in log:
            ctx.problems.append(f"{node_id} did not report cutting the torn tail ({damage})")
        ctx.notes.append(
            f"{node_id} caught up in {ctx.wait_caught_up(node_id):.1f}s after {damage.kind}"
        )

    while True:
        inject()
        if ctx.time_left() <= 0:
            return
        ctx.hold(0.3, 1.0)
        if ctx.time_left() <= 0:
            return


def _corrupt_middle(ctx: Context) -> None:
    """A flipped byte: the member refuses to start; the rest serve; the operator's recovery
    (README, "Operating: recovering a corrupted member") brings it back."""
    node_id = ctx.rng.choice(ctx.nemesis.node_ids)
    member = ctx.cluster.members[node_id]
    ctx.nemesis.kill([node_id])
    damage: DiskFault = flip_middle_byte(member.data_dir, ctx.rng)
    ctx.nemesis.record(damage.kind, [node_id], f"{damage.path.name} at {damage.offset}")
    try:
        ctx.cluster.restart(node_id)
    except KVStoreError:
        log = _read_log(ctx.cluster, node_id)
        # CorruptionError's message ends "(<file> at offset <n>)"; `kvstore serve` prints it.
        expected = f"({damage.path} at offset {damage.offset})"
        if expected not in log:
            ctx.problems.append(
                f"{node_id} refused to start but did not name {expected}: "
                f"{ctx.cluster.log_tail(node_id, 5)}"
            )
    else:
        ctx.problems.append(f"{node_id} started on a corrupted log ({damage})")
        ctx.nemesis.killed.discard(node_id)
        return
    ctx.nemesis.record("refused-to-start", [node_id], "corruption reported at that offset")
    # The others keep serving without it.
    try:
        ctx.recovery_s.append(wait_serving(ctx.probe, timeout_s=RECOVERY_LIMIT_S))
    except TimeoutError as exc:
        ctx.problems.append(f"the cluster stopped serving without the corrupted member: {exc}")
        raise
    ctx.hold(1.0, 2.0)
    # The operator's recovery: remove the member, wipe its data, start it empty in join mode,
    # add it back (as a learner that the leader brings up to date, then a voter). Raft forbids
    # a voter to forget what it acknowledged, so it must not come back under its old identity.
    client = ctx.client
    wait_serving(
        lambda: client.remove_member(node_id, timeout_s=CALL_TIMEOUT_S * 5),  # type: ignore[attr-defined]
        timeout_s=RECOVERY_LIMIT_S,
    )
    ctx.nemesis.record("remove-member", [node_id])
    wipe_data_dir(member.data_dir)
    member.extra_args.append("--join")
    try:
        ctx.cluster.restart(node_id)
    finally:
        member.extra_args.remove("--join")
    ctx.nemesis.killed.discard(node_id)
    ctx.nemesis.record("wipe-and-join", [node_id])
    wait_serving(
        lambda: client.add_member(node_id, member.address, timeout_s=CALL_TIMEOUT_S * 10),  # type: ignore[attr-defined]
        timeout_s=CATCH_UP_LIMIT_S,
    )
    ctx.nemesis.record("add-member", [node_id])
    ctx.notes.append(f"{node_id} rejoined and caught up in {ctx.wait_caught_up(node_id):.1f}s")
    # The members checkpoint and compact often here, so the leader had to send a snapshot.
    if installed_snapshot(member.data_dir):
        ctx.notes.append(f"{node_id} rejoined through a snapshot")
    else:
        ctx.problems.append(f"{node_id} rejoined without installing a snapshot")


def _mixed(ctx: Context) -> None:
    choices: list[Callable[[], None]] = [
        lambda: ctx.nemesis.kill([ctx.rng.choice(ctx.nemesis.node_ids)]),
        lambda: ctx.nemesis.kill([ctx.nemesis.leader_or_any()]),
        lambda: ctx.nemesis.kill(ctx.nemesis.majority()),
        lambda: ctx.nemesis.pause([ctx.nemesis.leader_or_any()]),
        lambda: ctx.nemesis.isolate(ctx.nemesis.leader_or_any()),
        lambda: ctx.nemesis.partition([ctx.rng.choice(ctx.nemesis.node_ids)]),
        lambda: ctx.nemesis.slow_links(delay(ctx.rng.uniform(0.01, 0.1), 0.05)),
    ]
    ctx.cycles(lambda: ctx.rng.choice(choices)())


def _netns_netem(ctx: Context) -> None:
    reason = probe_netem()
    if reason is not None:
        raise SkipSchedule(reason)

    def inject() -> None:
        for node_id in ctx.nemesis.node_ids:
            spec = (
                f"delay {ctx.rng.randrange(5, 80)}ms {ctx.rng.randrange(1, 30)}ms "
                f"loss {ctx.rng.uniform(0, 10):.1f}% reorder {ctx.rng.randrange(0, 25)}%"
            )
            ctx.nemesis.netem(node_id, spec)

    ctx.cycles(inject)


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in [
        Schedule("kill-one", _kill_one, "kill -9 a random member, restart it"),
        Schedule("kill-leader", _kill_leader, "kill -9 the leader, restart it"),
        Schedule("kill-majority", _kill_majority, "kill -9 a majority, restart them"),
        Schedule("kill-all", _kill_all, "kill -9 every member at once, restart all"),
        Schedule("pause-leader", _pause_leader, "SIGSTOP the leader, SIGCONT it"),
        Schedule("pause-one", _pause_one, "SIGSTOP a random member, SIGCONT it"),
        Schedule("partition-minority", _partition_minority, "majority | minority", network="proxy"),
        Schedule("isolate-leader", _isolate_leader, "cut the leader off", network="proxy"),
        Schedule("bridge", _bridge, "two halves joined by one member", nodes=5, network="proxy"),
        Schedule("one-way", _one_way, "the leader cannot send, or cannot hear", network="proxy"),
        Schedule("slow-network", _slow_network, "delay and jitter on every link", network="proxy"),
        Schedule("torn-tail", _torn_tail, "kill -9, tear the last write, restart"),
        Schedule(
            "corrupt-middle",
            _corrupt_middle,
            "flip a byte mid-log; refuse; remove, wipe, rejoin by snapshot",
            serve_args=("--checkpoint-entries", "200"),
            membership=True,
        ),
        Schedule(
            "lease-isolate-leader",
            _isolate_leader,
            "isolate the leader; reads by lease",
            network="proxy",
            consistency="lease",
        ),
        Schedule(
            "mixed",
            _mixed,
            "a random fault each cycle; frequent checkpoints",
            network="proxy",
            serve_args=("--checkpoint-entries", "300"),
        ),
        Schedule(
            "netns-isolate-leader",
            _isolate_leader,  # the same calls; the netns nemesis answers them with links down
            "own namespaces; the leader's link down",
            network="netns",
        ),
        Schedule(
            "netns-partition", _partition_minority, "own namespaces; bridges split", network="netns"
        ),
        Schedule(
            "netns-netem",
            _netns_netem,
            "own namespaces; netem delay, loss, reorder",
            network="netns",
        ),
    ]
}


# --- running one schedule -----------------------------------------------------------------------


@dataclass
class Verdict:
    """The outcome of one schedule run."""

    schedule: str
    seed: int
    passed: bool
    skipped: str | None = None
    consensus: str = "raft"
    workload: str = ""
    check: CheckResult | None = None
    recovery_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: str = ""
    elapsed_s: float = 0.0
    kept: Path | None = None
    """Where the failing run's history and logs were kept."""

    def line(self) -> str:
        """The one-line verdict."""
        head = f"{self.schedule:<22} {self.consensus:<5} seed={self.seed:<6}"
        if self.skipped is not None:
            return f"{head} SKIP  {self.skipped}"
        status = "PASS" if self.passed else "FAIL"
        recovery = (
            f"recovery max {max(self.recovery_s):.1f}s mean "
            f"{sum(self.recovery_s) / len(self.recovery_s):.1f}s (n={len(self.recovery_s)})"
            if self.recovery_s
            else "recovery n/a"
        )
        linear = (
            "linearizable"
            if self.check is not None and self.check.ok
            else "NOT linearizable"
            if self.check is not None and self.check.linearizable is False
            else "undecided"
            if self.check is not None
            else "unchecked"
        )
        line = f"{head} {status}  {self.workload}; {linear}; {recovery}; {self.elapsed_s:.0f}s"
        if self.kept is not None:
            line += f"; kept in {self.kept}"
        return line

    def report(self) -> str:
        """Everything: the line, problems, notes, the check's report, the nemesis's events."""
        parts = [self.line()]
        parts += [f"problem: {p}" for p in self.problems]
        parts += [f"note: {n}" for n in self.notes]
        if self.check is not None and not self.check.ok:
            parts.append(self.check.report())
        if self.events:
            parts.append("nemesis:\n" + self.events)
        return "\n".join(parts)


def run_schedule(
    schedule: Schedule,
    seed: int,
    *,
    fault_s: float = 8.0,
    clients: int = 4,
    keys: int = 6,
    failures_dir: str | Path | None = None,
    consensus: str = "raft",
    tls: bool = False,
) -> Verdict:
    """Run one schedule on a fresh cluster running `consensus` ("raft" or "paxos"), serving
    mutual TLS if `tls`; see the module docstring for what is checked."""
    if consensus not in CONSENSUS_KINDS:
        raise ValueError(f"consensus must be one of {CONSENSUS_KINDS}, got {consensus!r}")
    started = time.monotonic()
    label = schedule.name if consensus == "raft" else f"{schedule.name}-{consensus}"
    label += "-tls" if tls else ""
    work = Path(tempfile.mkdtemp(prefix=f"kvstore-torture-{label}-{seed}-"))
    verdict = Verdict(schedule.name, seed, passed=False, consensus=consensus)
    try:
        with contextlib.ExitStack() as stack:
            reason = schedule.skip_reason(consensus)
            if reason is not None:
                raise SkipSchedule(reason)
            lab: NetnsLab | None = None
            if schedule.network == "netns":
                reason = probe()
                if reason is not None:
                    raise SkipSchedule(f"network namespaces unavailable: {reason}")
                ids = [f"n{i}" for i in range(1, schedule.nodes + 1)]
                lab = stack.enter_context(NetnsLab(ids))
                body = lambda: _run_body(  # noqa: E731
                    schedule, seed, verdict, work, fault_s, clients, keys, lab, consensus, tls=tls
                )
                lab.in_client(body)
            else:
                _run_body(
                    schedule, seed, verdict, work, fault_s, clients, keys, None, consensus, tls=tls
                )
    except SkipSchedule as skip:
        verdict.skipped = str(skip)
        verdict.passed = True
    except Exception as exc:  # the run itself broke: a failed verdict, with the reason
        verdict.problems.append(f"{type(exc).__name__}: {exc}")
    verdict.elapsed_s = time.monotonic() - started
    if not verdict.passed and failures_dir is not None:
        kept = Path(failures_dir) / f"{label}-{seed}"
        if kept.exists():
            shutil.rmtree(kept)
        # Logs, history and small files; not the preallocated log segments and LMDB maps.
        shutil.copytree(work, kept, ignore=shutil.ignore_patterns("*.wal", "*.mdb"))
        (kept / "verdict.txt").write_text(verdict.report() + "\n")
        verdict.kept = kept
    shutil.rmtree(work, ignore_errors=True)
    return verdict


def _run_body(
    schedule: Schedule,
    seed: int,
    verdict: Verdict,
    work: Path,
    fault_s: float,
    clients: int,
    keys: int,
    lab: NetnsLab | None,
    consensus: str,
    *,
    tls: bool = False,
) -> None:
    from kvstore.client.client import Client

    rng = random.Random(f"{seed}:{schedule.name}")
    with contextlib.ExitStack() as stack:
        addresses = None
        if lab is not None:
            addresses = {node_id: lab.address(node_id) for node_id in lab.node_ids}
        cluster = LocalCluster(
            schedule.nodes,
            base_dir=work / "cluster",
            keep_data=True,
            addresses=addresses,
            consensus=consensus,
            tls=tls,
        )
        (work / "cluster").mkdir(exist_ok=True)
        stack.callback(cluster.close)
        mesh = None
        if schedule.network == "proxy":
            network = stack.enter_context(ProxyNetwork(seed=rng.getrandbits(32)))
            mesh = PeerMesh(network, {m.node_id: m.address for m in cluster})
            for member in cluster:
                member.peers = mesh.peers_for(member.node_id)
        if lab is not None:
            for member in cluster:
                member.command_prefix = lab.exec_prefix(member.node_id)
        for member in cluster:
            member.extra_args.extend(schedule.serve_args)
        phases = _Phases()
        cluster.start()
        phases.done("start")
        endpoints = cluster.addresses
        client_tls = cluster.client_tls
        client = stack.enter_context(
            Client(endpoints, balancer="random", timeout_s=CALL_TIMEOUT_S, tls=client_tls)
        )
        probe_key = b"probe/" + schedule.name.encode()
        probe_counter = iter(range(1 << 62))

        def probe_call() -> None:
            value = b"%d" % next(probe_counter)
            client.put(probe_key, value, timeout_s=CALL_TIMEOUT_S)
            if client.get(probe_key, timeout_s=CALL_TIMEOUT_S) != value:
                raise AssertionError("the probe read did not see the probe write")

        wait_serving(probe_call, timeout_s=RECOVERY_LIMIT_S)
        phases.done("first write")
        nemesis = Nemesis(cluster, rng, leader=lambda: None, mesh=mesh, lab=lab)
        ctx = Context(
            cluster,
            nemesis,
            rng,
            deadline=0.0,
            probe=probe_call,
            client=client,
            recovery_s=verdict.recovery_s,
            problems=verdict.problems,
            notes=verdict.notes,
        )
        nemesis.leader = ctx.leader
        config = WorkloadConfig(
            clients=clients, keys=keys, consistency=schedule.consistency, timeout_s=CALL_TIMEOUT_S
        )
        history = stack.enter_context(HistoryWriter(work / "history.jsonl"))

        def factory(number: int) -> Client:
            return Client(endpoints, balancer="random", timeout_s=CALL_TIMEOUT_S, tls=client_tls)

        workload = Workload(factory, config, history, seed=rng.getrandbits(32)).start()
        try:
            time.sleep(WARM_UP_S)  # pacing: let the workload get going before the first fault
            phases.done("warm-up")
            ctx.deadline = time.monotonic() + fault_s
            try:
                schedule.inject(ctx)
            except SkipSchedule:
                raise
            except Exception as exc:  # a broken promise: still heal, stop and check the history
                verdict.problems.append(f"{type(exc).__name__}: {exc}")
            finally:
                nemesis.heal_all()
                verdict.events = nemesis.describe()
                (work / "nemesis.txt").write_text(verdict.events + "\n")
                phases.done("faults")
            verdict.recovery_s.append(wait_serving(probe_call, timeout_s=RECOVERY_LIMIT_S))
            phases.done("last heal")
            time.sleep(TAIL_S)  # pacing: calls after the heal are part of the history too
        finally:
            workload.stop()
        phases.done("tail and stop")
        verdict.workload = workload.summary()
        final_reads(client, config, history, client_id=clients, timeout_s=CALL_TIMEOUT_S * 5)
        phases.done("final reads")
        verdict.check = check_history(history.operations)
        phases.done("check")
        verdict.notes.append(phases.describe())
        if not verdict.check.ok:
            write_history(work / "history-checked.jsonl", history.operations)
        verdict.passed = (
            verdict.check.ok
            and not verdict.problems
            and all(r <= RECOVERY_LIMIT_S for r in verdict.recovery_s)
        )


class _Phases:
    """How long each phase of a run took (reported, to see where time goes)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._spans: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self._spans.append((name, now - self._last))
        self._last = now

    def describe(self) -> str:
        return "phases: " + ", ".join(f"{name} {span:.1f}s" for name, span in self._spans)


def _read_log(cluster: LocalCluster, node_id: str) -> str:
    path = cluster.members[node_id].log_path
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


# --- the soak -----------------------------------------------------------------------------------


def soak(
    seed: int,
    minutes: float,
    *,
    failures_dir: Path,
    names: Sequence[str] | None = None,
    fault_s: float = 30.0,
    out: Callable[[str], None] = print,
    consensus: str = "raft",
    tls: bool = False,
) -> list[Verdict]:
    """Run schedules round-robin (each with its own seed) until `minutes` have passed, on
    clusters running `consensus`."""
    chosen = list(names) if names else list(SCHEDULES)
    deadline = time.monotonic() + minutes * 60
    rng = random.Random(seed)
    verdicts: list[Verdict] = []
    while True:
        order = chosen[:]
        rng.shuffle(order)
        for name in order:
            left_s = deadline - time.monotonic()
            if left_s <= 0 or (verdicts and left_s < 10):
                return verdicts
            run_seed = seed * 1000 + len(verdicts)
            verdict = run_schedule(
                SCHEDULES[name],
                run_seed,
                fault_s=min(fault_s, max(5.0, left_s - 10)),
                clients=8,
                keys=10,
                failures_dir=failures_dir,
                consensus=consensus,
                tls=tls,
            )
            verdicts.append(verdict)
            out(verdict.line())
            if not verdict.passed:
                out("\n".join("    " + line for line in verdict.report().splitlines()[1:40]))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvstore.testing.torture`: the soak; exit status 1 if any schedule failed."""
    parser = argparse.ArgumentParser(
        prog="python -m kvstore.testing.torture",
        description="Run torture schedules against local kvstore clusters until time is up.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--failures-dir", default="torture-failures")
    parser.add_argument("--schedules", help="comma-separated names (default: all)")
    parser.add_argument("--fault-seconds", type=float, default=30.0, help="per schedule run")
    parser.add_argument("--list", action="store_true", help="list the schedules and exit")
    parser.add_argument(
        "--consensus", choices=CONSENSUS_KINDS, default="raft", help="the clusters' protocol"
    )
    parser.add_argument(
        "--tls", action="store_true", help="every cluster serves mutual TLS (kvstore certs)"
    )
    args = parser.parse_args(argv)
    if args.list:
        for schedule in SCHEDULES.values():
            print(f"{schedule.name:<22} {schedule.network:<7} {schedule.description}")
        return 0
    names = [n.strip() for n in args.schedules.split(",")] if args.schedules else None
    unknown = [n for n in names or [] if n not in SCHEDULES]
    if unknown:
        parser.error(f"unknown schedules: {', '.join(unknown)} (see --list)")
    failures_dir = Path(args.failures_dir)
    print(
        f"torture: seed {args.seed}, {args.minutes:g} minutes, consensus {args.consensus}, "
        f"{'mutual TLS' if args.tls else 'plaintext'}, "
        f"failing runs kept in {failures_dir}",
        flush=True,
    )
    verdicts = soak(
        args.seed,
        args.minutes,
        failures_dir=failures_dir,
        names=names,
        fault_s=args.fault_seconds,
        out=lambda line: print(line, flush=True),
        consensus=args.consensus,
        tls=args.tls,
    )
    failed = [v for v in verdicts if not v.passed]
    skipped = [v for v in verdicts if v.skipped is not None]
    print(
        f"torture: {len(verdicts)} runs, {len(failed)} failed, {len(skipped)} skipped",
        file=sys.stderr if failed else sys.stdout,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
