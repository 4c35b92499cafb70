"""The `kvstore` command (also `python -m kvstore`): serve a node, talk to a cluster, run the demo.

Keys and values on the command line are UTF-8 text; they are stored as its bytes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.errors import KVStoreError
from kvstore.options import CONSISTENCY_LEVELS, Options

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 2

_DEFAULT_OPTIONS = Options()


def parse_peers(text: str) -> dict[str, str]:
    """Parse `n1=127.0.0.1:7001,n2=...` into {node_id: address}."""
    peers: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        if not sep or not node_id or not address:
            raise argparse.ArgumentTypeError(f"peer {item!r} is not of the form id=host:port")
        if node_id in peers:
            raise argparse.ArgumentTypeError(f"peer id {node_id!r} is given twice")
        peers[node_id] = address
    if not peers:
        raise argparse.ArgumentTypeError("--peers names no member")
    return peers


def parse_endpoints(text: str) -> list[str]:
    """Parse `127.0.0.1:7001,127.0.0.1:7002` into a list of addresses."""
    endpoints = [item.strip() for item in text.split(",") if item.strip()]
    if not endpoints:
        raise argparse.ArgumentTypeError("--endpoints names no address")
    return endpoints


def read_secret_file(path: str | None) -> bytes | None:
    """The secret is the file's raw bytes; one trailing newline is ignored."""
    if path is None:
        return None
    data = Path(path).read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise KVStoreError(f"secret file {path} is empty")
    return data


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _add_consistency_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consistency", default="linearizable", choices=CONSISTENCY_LEVELS)


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints",
        type=parse_endpoints,
        default=["127.0.0.1:7001"],
        help="comma-separated host:port of members (default 127.0.0.1:7001)",
    )
    parser.add_argument(
        "--secret-file",
        help="file holding the client secret (the cluster secret if the members have no "
        "separate --client-secret-file)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")


def _add_consensus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consensus",
        choices=CONSENSUS_KINDS,
        default=_DEFAULT_OPTIONS.consensus,
        help=f"the protocol of the local cluster (default {_DEFAULT_OPTIONS.consensus})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (each has --help)."""
    parser = argparse.ArgumentParser(
        prog="kvstore", description="An embedded, Raft-replicated key-value store."
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING...)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one member of a cluster until SIGTERM")
    serve.add_argument("--id", required=True, help="this member's node id")
    serve.add_argument("--data-dir", required=True, help="directory for the log and the state")
    serve.add_argument(
        "--peers",
        required=True,
        type=parse_peers,
        help="id=host:port of every voting member, this one included",
    )
    serve.add_argument("--secret-file", help="file holding the cluster secret")
    serve.add_argument(
        "--client-secret-file",
        help="file holding the secret clients prove (default: the cluster secret); a holder of "
        "only this one can never connect as a member",
    )
    serve.add_argument(
        "--join",
        action="store_true",
        help="join an existing cluster (then run `kvstore member add` against it)",
    )
    serve.add_argument(
        "--consensus",
        choices=CONSENSUS_KINDS,
        default=_DEFAULT_OPTIONS.consensus,
        help="the protocol the cluster runs; every member must run the same one "
        f"(default {_DEFAULT_OPTIONS.consensus}; paxos runs a fixed configuration)",
    )
    serve.add_argument(
        "--checkpoint-entries",
        type=_positive_int,
        default=_DEFAULT_OPTIONS.checkpoint_entries,
        metavar="N",
        help="applied entries between LMDB checkpoints, after which the redo log is compacted "
        f"(default {_DEFAULT_OPTIONS.checkpoint_entries}; small values are for tests)",
    )

    put = commands.add_parser("put", help="write a key")
    put.add_argument("key")
    put.add_argument("value")
    _add_client_arguments(put)

    get = commands.add_parser("get", help="read a key (exit 1 if absent)")
    get.add_argument("key")
    _add_consistency_argument(get)
    _add_client_arguments(get)

    delete = commands.add_parser("delete", help="delete a key (exit 1 if it was absent)")
    delete.add_argument("key")
    _add_client_arguments(delete)

    cas = commands.add_parser("cas", help="compare-and-swap (exit 1 if the comparison failed)")
    cas.add_argument("key")
    expected = cas.add_mutually_exclusive_group(required=True)
    expected.add_argument("--expected", help="the value the key must hold")
    expected.add_argument("--absent", action="store_true", help="the key must be absent")
    new = cas.add_mutually_exclusive_group(required=True)
    new.add_argument("--new", help="the value to store")
    new.add_argument("--delete", action="store_true", help="delete the key instead")
    _add_client_arguments(cas)

    scan = commands.add_parser("scan", help="list keys with a prefix, sorted")
    scan.add_argument("prefix", nargs="?", default="")
    scan.add_argument("--limit", type=int, default=None)
    _add_consistency_argument(scan)
    _add_client_arguments(scan)

    status = commands.add_parser("status", help="show each member's role, term and indices")
    _add_client_arguments(status)

    member = commands.add_parser("member", help="change the membership")
    member_commands = member.add_subparsers(dest="member_command", required=True)
    add = member_commands.add_parser("add", help="add a member (learner, then voter)")
    add.add_argument("node_id")
    add.add_argument("address", help="host:port the new member listens on")
    _add_client_arguments(add)
    remove = member_commands.add_parser("remove", help="remove a member")
    remove.add_argument("node_id")
    _add_client_arguments(remove)

    transfer = commands.add_parser("transfer-leader", help="hand leadership to a member")
    transfer.add_argument("node_id")
    _add_client_arguments(transfer)

    demo = commands.add_parser("demo", help="3 local nodes: write, kill the leader, prove no loss")
    demo.add_argument("--keys", type=int, default=3000, help="keys to write (default 3000)")
    _add_consensus_argument(demo)

    bench = commands.add_parser("bench", help="throughput and latency of a local 3-node cluster")
    bench.add_argument("--ops", type=int, default=5000, help="operations per workload")
    bench.add_argument("--concurrency", type=int, default=256, help="operations in flight")
    bench.add_argument("--json", help="also write the results to this JSON file")
    _add_consensus_argument(bench)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from kvstore.node import Node

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("kvstore.serve").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node = Node(
        args.id,
        args.data_dir,
        args.peers,
        options=Options(checkpoint_entries=args.checkpoint_entries, consensus=args.consensus),
        secret=read_secret_file(args.secret_file),
        join=args.join,
        client_secret=read_secret_file(args.client_secret_file),
    )
    node.start()
    print(f"kvstore serve: {args.id} listening on {node.address}", flush=True)
    try:
        stop.wait()
    finally:
        node.stop()
    return EXIT_OK


def _client_command(args: argparse.Namespace) -> int:
    from kvstore.client.client import Client

    with Client(
        args.endpoints, secret=read_secret_file(args.secret_file), timeout_s=args.timeout
    ) as client:
        command = args.command
        if command == "put":
            client.put(args.key.encode(), args.value.encode(), timeout_s=args.timeout)
            return EXIT_OK
        if command == "get":
            value = client.get(
                args.key.encode(), consistency=args.consistency, timeout_s=args.timeout
            )
            if value is None:
                print("not found", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(value.decode(errors="backslashreplace"))
            return EXIT_OK
        if command == "delete":
            return EXIT_OK if client.delete(args.key.encode(), timeout_s=args.timeout) else 1
        if command == "cas":
            expected = None if args.absent else args.expected.encode()
            new = None if args.delete else args.new.encode()
            swapped = client.cas(args.key.encode(), expected, new, timeout_s=args.timeout)
            print("swapped" if swapped else "not swapped")
            return EXIT_OK if swapped else EXIT_NOT_FOUND
        if command == "scan":
            for key, value in client.scan(
                args.prefix.encode(), limit=args.limit, consistency=args.consistency
            ):
                print(
                    f"{key.decode(errors='backslashreplace')}\t"
                    f"{value.decode(errors='backslashreplace')}"
                )
            return EXIT_OK
        if command == "status":
            return _print_status(client, args.endpoints)
        if command == "member":
            if args.member_command == "add":
                client.add_member(args.node_id, args.address)
            else:
                client.remove_member(args.node_id)
            return EXIT_OK
        if command == "transfer-leader":
            client.transfer_leadership(args.node_id)
            return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")


def _print_status(client: object, endpoints: Sequence[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table("address", "node", "role", "term", "leader", "commit", "applied")
    failures = 0
    for address in endpoints:
        try:
            status = client.status(address)  # type: ignore[attr-defined]
        except KVStoreError as error:
            table.add_row(address, "-", f"[red]{error}[/red]", "", "", "", "")
            failures += 1
            continue
        table.add_row(
            address,
            status.node_id,
            status.role,
            str(status.term),
            status.leader_id or "-",
            str(status.commit_index),
            str(status.applied_index),
        )
    Console().print(table)
    return EXIT_ERROR if failures == len(endpoints) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kvstore` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"serve": _serve}
    try:
        if args.command == "demo":
            from kvstore.demo import run_demo

            return run_demo(keys=args.keys, consensus=args.consensus)
        if args.command == "bench":
            from kvstore.bench import run_bench

            return run_bench(
                ops=args.ops,
                concurrency=args.concurrency,
                json_path=args.json,
                consensus=args.consensus,
            )
        handler = handlers.get(args.command, _client_command)
        return handler(args)
    except (KVStoreError, OSError) as error:
        # The class name tells an operator what kind of failure it is (CorruptionError...).
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
